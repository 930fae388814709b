"""Parity with transformers in the default suite (no torch): committed checkpoints + reference outputs.

``tests/io/fixtures/<case>/`` was written by transformers' ``save_pretrained`` on random weights,
with transformers' logits on a padded batch and its greedy continuations (see make_hf_fixtures.py).
tokjax must load each one, reproduce the logits within 1e-4 and the greedy tokens exactly (up to a
near tie), and write a checkpoint whose tensors and config are the ones transformers wrote.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import logits as L
from tokjax.io import load_hf, read_safetensors, save_hf
from tokjax.model import forward

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").exists())
TOL = 1e-4
NEAR_TIE = 1e-4


def load_reference(case: str) -> dict:
    with np.load(FIXTURES / case / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def test_fixtures_exist():
    assert set(CASES) >= {"gpt2", "llama_gqa_untied", "qwen2_mqa_tied"}


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case):
    model, _ = load_hf(FIXTURES / case)
    ref = load_reference(case)
    got = np.asarray(jax.jit(forward, static_argnums=1)(model.params, model.cfg, jnp.asarray(ref["ids"], jnp.int32)).logits)
    mask = ref["mask"]
    assert np.abs(ref["logits"][mask]).max() > 1.0  # not vacuous
    assert float(np.abs(got - ref["logits"])[mask].max()) <= TOL


@pytest.mark.parametrize("case", CASES)
def test_greedy_generate_matches_transformers(case):
    model, _ = load_hf(FIXTURES / case)
    ref = load_reference(case)
    prompts = [ref["prompts"][b, :n].tolist() for b, n in enumerate(ref["prompt_lengths"])]
    n_new = ref["greedy"].shape[1]
    out = tokjax.generate(model, prompts, max_new_tokens=n_new, logits=L.greedy())
    compared = 0
    for b, got in enumerate(out.completions()):
        ties = np.flatnonzero(ref["greedy_gaps"][b] < NEAR_TIE)
        upto = int(ties[0]) if ties.size else n_new
        np.testing.assert_array_equal(got[:upto], ref["greedy"][b, :upto], err_msg=f"{case} row {b}")
        compared += upto
    assert compared >= n_new  # at least one full row compared


@pytest.mark.parametrize("case", CASES)
def test_saved_checkpoint_equals_what_transformers_wrote(tmp_path, case):
    model, _ = load_hf(FIXTURES / case)
    save_hf(model, tmp_path)
    want = read_safetensors(FIXTURES / case / "model.safetensors")
    got = read_safetensors(tmp_path / "model.safetensors")
    # transformers omits a tied head from the file; tokjax must too, and nothing else may differ
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ref_cfg = json.loads((FIXTURES / case / "config.json").read_text())
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("model_type", "architectures", "vocab_size", "tie_word_embeddings", "rope_theta",
                "num_key_value_heads", "hidden_size", "n_embd", "intermediate_size", "n_inner"):
        if key in ref_cfg:
            assert cfg.get(key) == ref_cfg[key], key
