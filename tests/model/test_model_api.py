"""Model's argument order (params, then cfg, then key), its swapped-argument errors, and the package surface."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax

CFG = tokjax.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_len=8)


def test_model_takes_params_then_cfg_and_init_takes_cfg_then_key():
    m = tokjax.Model.init(CFG, jax.random.key(0))
    same = tokjax.Model(m.params, CFG)  # positional: params, then cfg
    assert same.cfg is CFG and same.num_params() == m.num_params()
    np.testing.assert_array_equal(same(jnp.zeros((1, 3), jnp.int32)).logits, m(jnp.zeros((1, 3), jnp.int32)).logits)
    # jax rebuilds a Model when it unflattens one (jit, tree.map): the checks must let that through
    assert jax.tree.map(lambda x: None, m).cfg is CFG
    assert float(jax.jit(lambda mm: mm.params["embed"].sum())(m)) == pytest.approx(float(m.params["embed"].sum()))


@pytest.mark.parametrize("call, msg", [
    (lambda p: tokjax.Model(CFG, p), "got a ModelConfig as params: the arguments are swapped"),
    (lambda p: tokjax.Model(params=p, cfg=None), "needs a ModelConfig as cfg, got NoneType"),
    (lambda p: tokjax.Model.init(jax.random.key(0), CFG), "needs a ModelConfig first.*swapped"),
    (lambda p: tokjax.Model.init(jax.random.PRNGKey(0), CFG), "needs a ModelConfig first.*swapped"),
    (lambda p: tokjax.Model.init({"vocab_size": 11}, jax.random.key(0)), "needs a ModelConfig first, got dict"),
])
def test_swapped_or_wrong_arguments_raise_value_error(call, msg):
    params = tokjax.Model.init(CFG, jax.random.key(0)).params
    with pytest.raises(ValueError, match=msg) as info:
        call(params)
    assert "params, then cfg, then key" in str(info.value)


def test_import_tokjax_exposes_the_subpackages():
    # A fresh interpreter: `import tokjax` alone must make these attributes work (train is lazy).
    code = ("import tokjax\n"
            "for name in ('io', 'losses', 'decoding', 'train', 'logits', 'metrics'):\n"
            "    mod = getattr(tokjax, name)\n"
            "    assert mod.__name__ == 'tokjax.' + name, (name, mod)\n"
            "    assert name in dir(tokjax) and name in tokjax.__all__, name\n"
            "assert callable(tokjax.train.train) and callable(tokjax.losses.token_stats)\n"
            "assert callable(tokjax.io.load_hf)\n"
            "try:\n    tokjax.not_a_module\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no error')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
