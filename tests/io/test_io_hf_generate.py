"""Greedy generation parity: tokjax.generate (batched, ragged prompts) equals transformers' greedy generate.

transformers runs each prompt alone (no padding subtleties on its side); tokjax runs them as one
ragged batch, so this also checks tokjax's per-row cache offsets. Needs the hf extra.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests need the hf extra: pip install -e '.[hf]'")
transformers = pytest.importorskip("transformers", reason="HF parity tests need the hf extra: pip install -e '.[hf]'")

import tokjax  # noqa: E402
from tokjax import logits as L  # noqa: E402
from tokjax.io import load_hf  # noqa: E402

from tests.io.make_hf_fixtures import random_hf_model  # noqa: E402

torch.set_num_threads(1)

# A top-2 logit gap below this is a near tie: float rounding may legitimately pick either token,
# and the continuations diverge from there, so tokens are compared up to the first near tie.
NEAR_TIE = 1e-4

CASES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=101, n_embd=36, n_layer=2, n_head=3, n_positions=64)),
    "llama": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
             intermediate_size=100, rope_theta=5e5, max_position_embeddings=64, tie_word_embeddings=False),
    ),
    "qwen2": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=1,
             intermediate_size=100, max_position_embeddings=64, tie_word_embeddings=True),
    ),
}


def hf_model(case: str, seed: int = 0):
    return random_hf_model(*CASES[case], seed=seed)


def hf_greedy(model, prompt, n):
    """Returns (tokens [n], top-2 logit gap per step [n]) of transformers' greedy generate."""
    ids = torch.tensor(np.asarray(prompt))[None]
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            output_scores=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None,
        )
    scores = torch.stack(out.scores)[:, 0].float()
    top2 = scores.topk(2, dim=-1).values
    return out.sequences[0, ids.shape[1]:].numpy(), (top2[:, 0] - top2[:, 1]).numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_generate_matches_transformers(tmp_path, case):
    ref = hf_model(case)
    ref.save_pretrained(tmp_path)
    model, _ = load_hf(tmp_path)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(1, model.cfg.vocab_size, n).tolist() for n in (6, 13, 1, 9)]
    n_new = 16
    out = tokjax.generate(model, prompts, max_new_tokens=n_new, logits=L.greedy())
    compared = 0
    for b, prompt in enumerate(prompts):
        want, gaps = hf_greedy(ref, prompt, n_new)
        got = out.completions()[b]
        assert len(got) == n_new
        ties = np.flatnonzero(gaps < NEAR_TIE)
        upto = int(ties[0]) if ties.size else n_new
        np.testing.assert_array_equal(got[:upto], want[:upto], err_msg=f"row {b}, prompt {prompt}")
        compared += upto
    assert compared >= 0.75 * n_new * len(prompts), "too many near ties: pick another seed"
