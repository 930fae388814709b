"""Sharded-vs-single-device checks, run in a fresh process with 8 simulated CPU devices.

    python tests/parallel/_sharded_checks.py OUT.json

The device count is fixed when jax first initialises its backend, so these checks cannot run in
a pytest process where another test already used jax with one device: test_parallel_sharded.py
starts this script once and asserts on the JSON it writes. Each check records its own result
or traceback, so one failure does not hide the others.
"""

from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tokjax  # noqa: E402
from tokjax import parallel as par  # noqa: E402
from tokjax.decoding import drafts, speculative, verify  # noqa: E402
from tokjax.decoding.r2r import r2r  # noqa: E402
from tokjax.logits import greedy, temperature  # noqa: E402

MESHES = ((2, 4), (8, 1))
# init_scale 0.3 makes logits far from uniform, so greedy argmax ties (which rounding could flip) are improbable.
CFG = tokjax.ModelConfig.tiny(
    vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_len=32, init_scale=0.3
)
MODEL = tokjax.Model.init(CFG, jax.random.key(0))
TOKENS = np.asarray(jax.random.randint(jax.random.key(1), (8, 16), 0, CFG.vocab_size), np.int32)
PROMPT = TOKENS[:, :6]
NEW_TOKENS = 12
FWD = jax.jit(tokjax.forward, static_argnames=("cfg",))


def spec_list(sharding) -> list:
    """Returns the sharding's PartitionSpec as a JSON-able list."""
    return [list(p) if isinstance(p, tuple) else p for p in sharding.spec]


def close(a, b) -> dict:
    """Returns max |a - b| and the reference scale max |b| (tolerances are relative to that scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return {"max_diff": float(np.max(np.abs(a - b))), "scale": float(np.max(np.abs(b)))}


def tree_close(a, b) -> dict:
    """Returns the leaf of ``close`` over two pytrees with the largest diff / max(scale, 1)."""
    worst = {"max_diff": 0.0, "scale": 1.0}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        c = close(x, y)
        if c["max_diff"] / max(c["scale"], 1.0) > worst["max_diff"] / max(worst["scale"], 1.0):
            worst = c
    return worst


def loss_fn(params, tokens):
    logits = tokjax.forward(params, CFG, tokens[:, :-1]).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


LR = 1e-3
OPT = optax.adamw(LR, weight_decay=0.1)


def train_step(state, tokens):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss


# Plain jit, no in/out shardings: the test checks that propagation alone keeps the state's layout.
TRAIN_STEP = jax.jit(train_step, donate_argnums=0)


def _adam_mu(opt_state):
    return [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(x, optax.ScaleByAdamState)][0].mu


def compare_train(new_state, ref_state) -> dict:
    """Returns diffs of a train step's result against the reference, splitting params by conditioning.

    Adam's first update is lr * g / (|g| + eps), whose sensitivity to a gradient error dg is
    lr * dg / |g|. Sharding changes summation orders, so dg is a rounding-level difference
    (measured here from the two runs' first moments, mu = (1 - b1) g); where |g| is of that
    order the update is about lr with an arbitrary sign, on any two devices. So: params with
    |g| >= 100 max|dg| must agree to lr / 100 = 1e-5; the rest are bounded by 2.5 lr.
    """
    (p, o), (rp, ro) = new_state, ref_state
    g_new = [np.asarray(m) / 0.1 for m in jax.tree.leaves(_adam_mu(o))]  # b1 = 0.9
    g_ref = [np.asarray(m) / 0.1 for m in jax.tree.leaves(_adam_mu(ro))]
    dg = max(float(np.max(np.abs(a - b))) for a, b in zip(g_new, g_ref))
    good, floor, n_floor = 0.0, 0.0, 0
    for x, y, g in zip(jax.tree.leaves(p), jax.tree.leaves(rp), g_ref):
        d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
        ok = np.abs(g) >= 100 * dg
        good = max(good, float(d[ok].max(initial=0.0)))
        floor = max(floor, float(d[~ok].max(initial=0.0)))
        n_floor += int((~ok).sum())
    return {
        "params_well_conditioned": good, "params_at_grad_floor": floor, "n_at_grad_floor": n_floor,
        "grad_diff": dg, "n_params": int(sum(x.size for x in jax.tree.leaves(p))), "lr": LR,
        "opt_state": tree_close(o, ro),
    }


SPEC_LOGITS = {"draft_model": temperature(0.8), "recycling": greedy(), "lazy_routing": greedy()}


def speculative_strategies() -> dict:
    """Returns strategies whose state declares its sharding: a draft model (weights + KV cache) with rejection
    sampling, Token Recycling (a shared table plus per-row fields) with greedy verification, and two-model routing
    (P46 R2R, random router) whose large model catches up lazily under a batch-wide ``lax.cond``."""
    draft = tokjax.Model.init(CFG.replace(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2), jax.random.key(3))
    large = tokjax.Model.init(CFG, jax.random.key(4))
    return {
        "draft_model": speculative(drafts.model(draft, num_draft=3), verify.rejection()),
        "recycling": speculative(drafts.recycling(template="small"), verify.greedy()),
        "lazy_routing": r2r(large, None, theta=0.7, kind="random", top_k=8, catch_up=3),
    }


def references() -> dict:
    """Returns single-device results: params committed to one device, the same jitted functions."""
    dev = jax.devices()[0]
    params = jax.device_put(MODEL.params, dev)
    toks = jax.device_put(TOKENS, dev)
    ref = {"logits": FWD(params, CFG, toks).logits}
    model = MODEL.replace(params=params)
    ref["generate"] = tokjax.generate(model, PROMPT, max_new_tokens=NEW_TOKENS, logits=greedy()).tokens
    for name, strat in speculative_strategies().items():  # the same jitted driver, strategy state on one device
        out = tokjax.generate(model, PROMPT, key=jax.random.key(2), max_new_tokens=NEW_TOKENS, strategy=strat,
                              logits=SPEC_LOGITS[name])
        ref[f"spec_{name}"] = (out.tokens, out.stats["forward_calls"], out.stats.get("large_calls"))
    return ref


def optax_reference(ref: dict) -> tuple:
    """Returns (state, loss) of one single-device local optax step, computed once."""
    if "optax" not in ref:
        params = jax.device_put(MODEL.params, jax.devices()[0])
        # Copies: the step donates its state, and device_put shares MODEL's buffers.
        state = jax.tree.map(jnp.copy, (params, OPT.init(params)))
        ref["optax"] = TRAIN_STEP(state, jax.device_put(TOKENS, jax.devices()[0]))
    return ref["optax"]


def check_mesh(data: int, model: int, ref: dict) -> dict:
    """Returns every check's result (or traceback) on a (data, model) mesh."""
    mesh = par.make_mesh(data, model)
    res: dict = {"seconds": {}}
    sm = par.shard_model(MODEL, mesh)
    toks = par.shard_batch(TOKENS, mesh)

    def placement():
        p = sm.params
        return {
            "specs": {k: spec_list(v.sharding) for k, v in p["layers"].items() if not isinstance(v, dict)}
            | {"embed": spec_list(p["embed"].sharding), "final_norm.scale": spec_list(p["final_norm"]["scale"].sharding)},
            "shard_shapes": {
                "wq": list(p["layers"]["wq"].addressable_shards[0].data.shape),
                "wk": list(p["layers"]["wk"].addressable_shards[0].data.shape),
                "embed": list(p["embed"].addressable_shards[0].data.shape),
            },
            "tokens_spec": spec_list(toks.sharding),
            "tokens_shard_shape": list(toks.addressable_shards[0].data.shape),
            "original_alive": not any(x.is_deleted() for x in jax.tree.leaves(MODEL.params)),
        }

    def forward():
        out = FWD(sm.params, CFG, toks)
        return close(out.logits, ref["logits"]) | {"logits_spec": spec_list(out.logits.sharding)}

    def generate():
        r = {}
        if model > 1:  # unchanged tokjax.generate on tensor-parallel params
            plain = tokjax.generate(sm, PROMPT, max_new_tokens=NEW_TOKENS, logits=greedy()).tokens
            r["plain_equal"] = bool(np.array_equal(plain, ref["generate"]))
        out = tokjax.generate(sm, PROMPT, mesh=mesh, max_new_tokens=NEW_TOKENS, logits=greedy())
        r["sharded_equal"] = bool(np.array_equal(out.tokens, ref["generate"]))
        # Unsharded params too: generate shards them by the rules itself.
        out = tokjax.generate(MODEL, PROMPT, mesh=mesh, max_new_tokens=NEW_TOKENS, logits=greedy())
        r["sharded_unplaced_equal"] = bool(np.array_equal(out.tokens, ref["generate"]))
        return r

    def speculative_generate():
        r = {}
        for name, strat in speculative_strategies().items():
            out = tokjax.generate(sm, PROMPT, key=jax.random.key(2), mesh=mesh, max_new_tokens=NEW_TOKENS,
                                  strategy=strat, logits=SPEC_LOGITS[name])
            tokens, calls, large_calls = ref[f"spec_{name}"]
            r[name] = {"equal": bool(np.array_equal(out.tokens, tokens)), "calls_equal": out.stats["forward_calls"] == calls,
                       "multi_token_steps": out.stats["tokens_per_call"] > 1.0}
            if large_calls is not None:
                r[name] |= {"large_calls_equal": out.stats["large_calls"] == large_calls,
                            "lazy_skipped_steps": out.stats["large_calls"] < out.stats["forward_calls"]}
        # The strategy state was placed as declared: the draft cache's batch over "data", the table replicated.
        strat = speculative_strategies()["draft_model"]
        _, _, _, _, state, _ = tokjax.decoding.driver._setup(
            sm, PROMPT, key=jax.random.key(2), max_new_tokens=NEW_TOKENS, prompt_lengths=None, logits=temperature(0.8),
            strategy=strat, eos_id=None, pad_id=0, mesh=mesh)
        r["draft_cache_spec"] = spec_list(state.extra.cache.k[0].sharding)
        r["tokens_spec"] = spec_list(state.tokens.sharding)
        strat = speculative_strategies()["recycling"]
        _, _, _, _, state, _ = tokjax.decoding.driver._setup(
            sm, PROMPT, key=None, max_new_tokens=NEW_TOKENS, prompt_lengths=None, logits=greedy(),
            strategy=strat, eos_id=None, pad_id=0, mesh=mesh)
        r["table_spec"] = spec_list(state.extra.table.successors.sharding)
        r["pending_spec"] = spec_list(state.extra.pending.sharding)
        return r

    def train():
        params = par.shard_params(MODEL.params, CFG, mesh)
        init = jax.jit(OPT.init, out_shardings=par.opt_state_shardings(OPT, CFG, mesh))
        state = (params, init(params))
        before = par.tree_shardings(state)
        ref_state, ref_loss = optax_reference(ref)
        new_state, loss = TRAIN_STEP(state, toks)
        r = compare_train(new_state, ref_state) | {
            "loss": close(loss, ref_loss),
            "same_shardings": all(
                s.is_equivalent_to(x.sharding, x.ndim) for s, x in zip(jax.tree.leaves(before), jax.tree.leaves(new_state))
            ),
            "param_specs_after": {k: spec_list(v.sharding) for k, v in new_state[0]["layers"].items() if k in ("wq", "w_down")},
        }
        # A second step from the returned state must reuse the compiled step: the layout held.
        n = TRAIN_STEP._cache_size()
        TRAIN_STEP(new_state, toks)
        r["recompiled"] = TRAIN_STEP._cache_size() != n
        return r

    def train_module():
        try:
            from tokjax.train import TrainConfig, init_state, make_optimizer, make_train_step
        except ImportError as e:  # tokjax.train is optional for this check
            return {"skipped": f"tokjax.train not importable: {e}"}
        # No warmup: at step 0 a warmed-up schedule has lr 0 and the step would compare nothing.
        opt = make_optimizer(TrainConfig(lr=LR, warmup_steps=0, total_steps=10))
        step = make_train_step(CFG, opt)
        batch = {"tokens": TOKENS}
        if "train_module" not in ref:  # the single-device reference, computed once for both meshes
            dev = jax.devices()[0]
            ref_state = jax.device_put(init_state(CFG, opt, 0, params=jax.tree.map(jnp.copy, MODEL.params)), dev)
            ref["train_module"] = step(ref_state, jax.device_put(batch, dev))
        ref_new, ref_metrics = ref["train_module"]
        state = par.shard_train_state(init_state(CFG, opt, 0, params=MODEL.params), CFG, mesh)
        before = par.tree_shardings(state)
        new, metrics = step(state, par.shard_batch(batch, mesh))
        r = compare_train((new.params, new.opt_state), (ref_new.params, ref_new.opt_state)) | {
            "loss": close(metrics["loss"], ref_metrics["loss"]),
            "same_shardings": all(
                s.is_equivalent_to(x.sharding, x.ndim) for s, x in zip(jax.tree.leaves(before), jax.tree.leaves(new))
            ),
        }
        n = step._cache_size()
        step(new, par.shard_batch(batch, mesh))
        r["recompiled"] = step._cache_size() != n
        return r

    def run(name, fn):
        t = time.time()
        try:
            res[name] = fn()
        except Exception:  # recorded, so the pytest side reports this check's own traceback
            res[name] = {"error": traceback.format_exc()}
        res["seconds"][name] = round(time.time() - t, 2)

    for name, fn in [("placement", placement), ("forward", forward), ("generate", generate),
                     ("speculative_generate", speculative_generate), ("train_module", train_module)]:
        run(name, fn)
    # The brief's fallback: without tokjax.train, a local optax step (also covering opt_state_shardings).
    if "skipped" in res["train_module"] or os.environ.get("TOKJAX_CHECK_OPTAX_STEP"):
        run("train", train)
    return res


def main(path: str) -> None:
    t = time.time()
    results: dict = {"device_count": jax.device_count()}
    try:
        ref = references()
    except Exception:
        results["references"] = {"error": traceback.format_exc()}
    else:
        for d, m in MESHES:
            results[f"{d}x{m}"] = check_mesh(d, m, ref)
    results["seconds"] = round(time.time() - t, 2)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
