"""Mesh construction, the ShardingRules table and the placements it derives, on this process's devices.

Spec logic is checked on ``AbstractMesh``es of any shape (no devices needed); the placement
tests that need 8 devices live in test_parallel_sharded.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

import tokjax
from tokjax import parallel as par
from tokjax.model.params import param_specs

CFG = tokjax.ModelConfig.tiny(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_len=32)
MESH_2x4 = AbstractMesh((2, 4), ("data", "model"))
MESH_8x1 = AbstractMesh((8, 1), ("data", "model"))


# ------------------------------------------------------------------------------ make_mesh
def test_make_mesh_defaults_to_all_devices_on_data():
    mesh = par.make_mesh()
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
    # Auto axes: jit propagates shardings; jax's default Explicit axes would not run forward unannotated.
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)


def test_make_mesh_with_explicit_devices():
    mesh = par.make_mesh(1, 1, devices=jax.devices()[:1])
    assert mesh.devices.shape == (1, 1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(data=jax.device_count() + 1), "devices"),
        (dict(model=jax.device_count() + 1), "does not divide"),
        (dict(data=2, model=jax.device_count()), "devices"),
        (dict(data=0), "data must be"),
        (dict(model=0), "model must be"),
        (dict(devices=[]), "at least one device"),
    ],
)
def test_make_mesh_bad_sizes_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        par.make_mesh(**kw)


# --------------------------------------------------------------------------- ShardingRules
def test_default_rules_table():
    r = par.ShardingRules()
    assert (r.batch, r.vocab, r.heads, r.kv_heads, r.mlp) == ("data", "model", "model", "model", "model")
    assert (r.seq, r.embed, r.head_dim, r.layers) == (None, None, None, None)
    assert par.DEFAULT_RULES == r
    assert hash(r) == hash(par.ShardingRules())  # hashable: usable as a static jit argument


def test_rules_spec_maps_logical_axes():
    r = par.ShardingRules()
    assert r.spec(("layers", "embed", "heads", "head_dim")) == P(None, None, "model", None)
    assert r.spec(("batch", None, "vocab")) == P("data", None, "model")


@pytest.mark.parametrize(
    "rules, axes",
    [
        (par.ShardingRules(embed="model"), ("layers", "embed", "mlp")),  # w_up: embed and mlp both on model
        (par.ShardingRules(batch=("data", "model")), ("batch", "seq", "vocab")),  # tuple rule overlaps vocab
        (par.ShardingRules(), ("heads", "kv_heads")),
    ],
)
def test_rules_collision_raises(rules, axes):
    with pytest.raises(ValueError, match="a mesh axis can split only one dimension"):
        rules.spec(axes)


def test_collision_raises_even_when_fallback_would_avoid_it():
    # The table is broken whatever the sizes; logical_spec must not hide that behind a replication.
    rules = par.ShardingRules(embed="model")
    with pytest.raises(ValueError, match="onto mesh axis 'model'"):
        par.logical_spec((2, 3, 5), ("layers", "embed", "mlp"), MESH_2x4, rules)


def test_param_shardings_with_colliding_rules_raise():
    with pytest.raises(ValueError, match="both 'vocab' and 'embed' onto mesh axis 'model'"):
        par.param_shardings(CFG, MESH_2x4, par.ShardingRules(embed="model"))


@pytest.mark.parametrize(
    "kw, match",
    [(dict(heads=3), "must be a mesh axis name"), (dict(heads=("model", "model")), "twice"), (dict(heads=()), "must be")],
)
def test_rules_bad_values_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        par.ShardingRules(**kw)


def test_rules_unknown_logical_axis_raises():
    with pytest.raises(ValueError, match="unknown logical axis 'hedas'"):
        par.ShardingRules().spec(("hedas",))
    with pytest.raises(ValueError, match="unknown logical axes"):
        par.ShardingRules().replace(hedas="model")


def test_rules_replace_and_replicated():
    r = par.ShardingRules().replace(mlp=None, embed="model")
    assert (r.mlp, r.embed, r.heads) == (None, "model", "model")
    assert all(getattr(par.ShardingRules.replicated(), a) is None for a in par.LOGICAL_AXES)


# ---------------------------------------------------------------------- logical_spec oracle
def spec_oracle(shape, axes, mesh_sizes, rules):
    """Returns the expected spec, one dimension at a time, written out independently of logical_spec."""
    out = []
    for dim, name in zip(shape, axes):
        m = rules.mesh_axes(name)
        names = [] if m is None else ([m] if isinstance(m, str) else list(m))
        names = [a for a in names if mesh_sizes[a] > 1]
        n = math.prod(mesh_sizes[a] for a in names)
        out.append(None if not names or dim % n else (names[0] if len(names) == 1 else tuple(names)))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


@given(
    data=st.sampled_from([1, 2, 4, 8]),
    model=st.sampled_from([1, 2, 3, 4, 8]),
    dims=st.lists(
        st.tuples(st.sampled_from(["layers", "embed", "heads", "head_dim", "vocab", "batch", "seq"]), st.integers(1, 24)),
        min_size=1, max_size=4, unique_by=lambda t: t[0],
    ),
    batch_on_both=st.booleans(),
)
def test_logical_spec_matches_oracle(data, model, dims, batch_on_both):
    rules = par.ShardingRules(batch=("data", "model") if batch_on_both else "data")
    axes = tuple(a for a, _ in dims)
    shape = tuple(n for _, n in dims)
    mesh = AbstractMesh((data, model), ("data", "model"))
    try:
        rules.spec(axes)
    except ValueError:
        with pytest.raises(ValueError):
            par.logical_spec(shape, axes, mesh, rules)
        return
    spec = par.logical_spec(shape, axes, mesh, rules)
    assert spec == spec_oracle(shape, axes, {"data": data, "model": model}, rules)
    used = [a for p in spec if p is not None for a in ((p,) if isinstance(p, str) else p)]
    assert len(used) == len(set(used))  # a mesh axis splits at most one dimension


def test_non_divisible_dimension_is_replicated():
    # kv_heads=2 cannot be split 4 ways: replicated, while heads=4 is split.
    assert par.logical_spec((2, 64, 2, 16), ("layers", "embed", "kv_heads", "head_dim"), MESH_2x4) == P()
    assert par.logical_spec((2, 64, 4, 16), ("layers", "embed", "heads", "head_dim"), MESH_2x4) == P(None, None, "model")
    assert par.logical_spec((2, 64, 2, 16), ("layers", "embed", "kv_heads", "head_dim"), AbstractMesh((4, 2), ("data", "model"))) == P(None, None, "model")


def test_logical_spec_errors():
    with pytest.raises(ValueError, match="2 dimensions but 1 logical axes"):
        par.logical_spec((2, 3), ("embed",), MESH_2x4)
    with pytest.raises(ValueError, match="lacks"):
        par.logical_spec((8, 3), ("batch", "embed"), AbstractMesh((8,), ("x",)))


# ------------------------------------------------------------------- params, batch, cache
def test_param_shardings_follow_rules_on_2x4():
    sh = par.param_shardings(CFG, MESH_2x4)
    specs = {k: v.spec for k, v in sh["layers"].items() if not isinstance(v, dict)}
    assert specs == {
        "wq": P(None, None, "model"),  # heads 4 / 4
        "wk": P(), "wv": P(),  # kv_heads 2 does not split 4 ways: replicated
        "wo": P(None, "model"),
        "w_up": P(None, None, "model"), "w_gate": P(None, None, "model"), "w_down": P(None, "model"),
    }
    assert sh["embed"].spec == P("model")  # vocab 64 / 4
    assert sh["final_norm"]["scale"].spec == P()
    assert sh["layers"]["attn_norm"]["scale"].spec == P()


def test_param_shardings_every_leaf_matches_oracle():
    for mesh in (MESH_2x4, MESH_8x1, AbstractMesh((1, 8), ("data", "model"))):
        sh = par.param_shardings(CFG, mesh)
        specs = param_specs(CFG)
        is_spec = lambda x: isinstance(x, tokjax.model.ParamSpec)  # noqa: E731
        for s, ps in zip(jax.tree.leaves(sh), jax.tree.leaves(specs, is_leaf=is_spec)):
            assert s.spec == spec_oracle(ps.shape, ps.axes, dict(mesh.shape), par.DEFAULT_RULES)


def test_batch_sharding_and_errors():
    mesh = AbstractMesh((4, 2), ("data", "model"))
    assert par.batch_sharding((8, 16), mesh).spec == P("data")
    assert par.batch_sharding((8,), MESH_2x4).spec == P("data")
    assert par.batch_sharding((8, 16), AbstractMesh((1, 8), ("data", "model"))).spec == P()
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the mesh's data axis \('data', size 4\)"):
        par.batch_sharding((6, 16), mesh)
    with pytest.raises(ValueError, match="scalar"):
        par.batch_sharding((), mesh)


def test_cache_shardings():
    cache = tokjax.KVCache.init(CFG, batch=4, capacity=8)
    sh = par.cache_shardings(cache, MESH_2x4)
    assert isinstance(sh, tokjax.KVCache)
    assert len(sh.k) == len(sh.v) == CFG.n_layers
    assert sh.k[0].spec == sh.v[-1].spec == P("data")  # kv_heads 2 on model 4: replicated
    assert sh.lengths.spec == P(None, "data")
    sh = par.cache_shardings(cache, AbstractMesh((4, 2), ("data", "model")))
    assert sh.k[0].spec == P("data", "model")
    sh = par.cache_shardings(tokjax.KVCache.init(CFG, batch=3, capacity=8), AbstractMesh((4, 2), ("data", "model")))
    assert sh.k[0].spec == P(None, "model")  # 3 rows on 4 replicas: replicated, not an error
    with pytest.raises(ValueError, match="expects a KVCache"):
        par.cache_shardings(cache.k, MESH_2x4)


def test_opt_state_shardings_mirror_params():
    opt = optax.adamw(1e-3)
    sh = par.opt_state_shardings(opt, CFG, MESH_2x4)
    adam = sh[0]
    assert adam.mu["layers"]["wq"].spec == P(None, None, "model")
    assert adam.nu["embed"].spec == P("model")
    assert adam.count.spec == P()


def test_train_state_shardings_find_param_shaped_subtrees():
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
    params = tokjax.model.param_shapes(CFG)
    state = jax.eval_shape(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt": opt.init(p)}, params)
    sh = par.train_state_shardings(state, CFG, MESH_2x4)
    expected = par.param_shardings(CFG, MESH_2x4)
    assert sh["params"] == expected
    adam = sh["opt"][1][0]
    assert adam.mu == expected and adam.nu == expected
    assert sh["step"].spec == P() and adam.count.spec == P()
    # The same result as asking optax where its params live.
    assert jax.tree.map(lambda s: s.spec, sh["opt"]) == jax.tree.map(
        lambda s: s.spec, par.opt_state_shardings(opt, CFG, MESH_2x4)
    )


def test_state_shardings():
    state = {"tokens": np.zeros((4, 10)), "cache": tokjax.KVCache.init(CFG, 4, 8), "step": np.zeros(()), "other": np.zeros(3)}
    sh = par.state_shardings(state, 4, MESH_2x4)
    assert sh["tokens"].spec == P("data") and sh["step"].spec == P() and sh["other"].spec == P()
    assert sh["cache"].k[0].spec == P("data")


# ------------------------------------------------------------------------ placement, 1 device
def test_shard_params_on_one_device_mesh_keeps_values_and_originals():
    model = tokjax.Model.init(CFG, jax.random.key(0))
    mesh = par.make_mesh(1, 1, devices=jax.devices()[:1])
    sharded = par.shard_model(model, mesh)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert par.same_shardings(sharded.params, jax.device_put(model.params, par.param_shardings(CFG, mesh)))
    # device_put alone would share the buffer; donating the sharded copy must leave the original alive.
    jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)(sharded.params)
    assert not any(x.is_deleted() for x in jax.tree.leaves(model.params))


def test_shard_params_rejects_wrong_params():
    params = tokjax.Model.init(CFG, jax.random.key(0)).params
    with pytest.raises(ValueError, match="params do not match config"):
        par.shard_params({"embed": params["embed"]}, CFG, par.make_mesh(1, 1, devices=jax.devices()[:1]))


def test_shard_batch_pytree():
    mesh = par.make_mesh(1, 1, devices=jax.devices()[:1])
    batch = {"tokens": jnp.ones((4, 8), jnp.int32), "mask": np.ones((4, 8), bool)}
    out = par.shard_batch(batch, mesh)
    assert set(out) == {"tokens", "mask"} and out["tokens"].sharding.mesh == mesh
    np.testing.assert_array_equal(np.asarray(out["mask"]), batch["mask"])


def test_axes_shardings_follow_the_declaration_not_shapes():
    # a [4, 3] table whose first dim equals the batch: declared replicated, so it stays replicated
    state = {"table": np.zeros((4, 3)), "rows": np.zeros((4, 2)), "cache": tokjax.KVCache.init(CFG, 4, 8),
             "sub": {"a": np.zeros(4), "b": np.zeros((4, 4))}}
    axes = {"table": None, "rows": ("batch", None), "cache": par.KV_CACHE, "sub": None}
    sh = par.axes_shardings(state, axes, MESH_2x4)
    assert sh["table"].spec == P() and sh["rows"].spec == P("data")
    assert sh["cache"].k[0].spec == P("data") and sh["sub"]["b"].spec == P()
    assert jax.tree.map(lambda s: s.spec, par.axes_shardings(state, None, MESH_2x4))["rows"] == P()
    with pytest.raises(ValueError, match="one name"):
        par.axes_shardings(state, {**axes, "rows": ("batch",)}, MESH_2x4)
    with pytest.raises(ValueError, match="KVCache"):
        par.axes_shardings(state, {**axes, "rows": par.KV_CACHE}, MESH_2x4)
    with pytest.raises(ValueError, match="structure"):
        par.axes_shardings(state, {"table": None}, MESH_2x4)
