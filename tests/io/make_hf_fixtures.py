"""Writes tests/io/fixtures/<case>/: tiny random-weight transformers checkpoints with reference outputs.

The default test suite has no torch, so these committed fixtures are what lets it check parity
with transformers on every run: each directory is exactly what ``save_pretrained`` wrote, plus
``reference.npz`` holding a right-padded batch, transformers' float32 logits on it and the
tokens of transformers' greedy ``generate`` for a few prompts. Regenerate (needs the hf extra)::

    .venv/bin/python tests/io/make_hf_fixtures.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import transformers

FIXTURES = Path(__file__).resolve().parent / "fixtures"
N_NEW = 12

# Small enough to commit (tens of KB each), odd sizes so layout mistakes show.
CASES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=61, n_embd=24, n_layer=2, n_head=3, n_inner=40, n_positions=48)),
    "llama_gqa_untied": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(vocab_size=59, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=44, rope_theta=5e5, max_position_embeddings=48, tie_word_embeddings=False),
    ),
    "qwen2_mqa_tied": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(vocab_size=53, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
             intermediate_size=40, rope_theta=1e6, max_position_embeddings=48, tie_word_embeddings=True),
    ),
}


def random_hf_model(conf_cls: str, model_cls: str, kw: dict, seed: int = 0, dtype=None):
    """Returns a transformers ``model_cls`` with every parameter random (norm weights near 1), eval mode.

    Shared by the fixtures and the torch parity tests, so both build models the same way.
    """
    conf = getattr(transformers, conf_cls)(**kw, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = getattr(transformers, model_cls)(conf).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = name.endswith("norm.weight") or (".ln_" in name and name.endswith(".weight"))
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if is_norm else 0.3 * torch.randn(p.shape, generator=g))
    return model.to(dtype) if dtype is not None else model


def reference(model, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Returns the padded batch, transformers' logits on it, and greedy continuations of 3 prompts."""
    rng = np.random.default_rng(seed)
    lens = np.array([11, 7, 2])
    mask = np.arange(11)[None, :] < lens[:, None]
    ids = np.where(mask, rng.integers(0, vocab, (3, 11)), 0)
    with torch.no_grad():
        logits = model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.float().numpy()
    prompt_lens = np.array([6, 13, 1])
    prompts = np.zeros((3, prompt_lens.max()), np.int64)
    greedy = np.zeros((3, N_NEW), np.int64)
    gaps = np.zeros((3, N_NEW), np.float32)
    for b, n in enumerate(prompt_lens):
        prompts[b, :n] = rng.integers(1, vocab, n)
        x = torch.tensor(prompts[b:b + 1, :n])
        with torch.no_grad():
            out = model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                output_scores=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None,
            )
        greedy[b] = out.sequences[0, n:].numpy()
        top2 = torch.stack(out.scores)[:, 0].float().topk(2, dim=-1).values
        gaps[b] = (top2[:, 0] - top2[:, 1]).numpy()
    return dict(ids=ids, mask=mask, logits=logits, prompts=prompts, prompt_lengths=prompt_lens,
                greedy=greedy, greedy_gaps=gaps)


def main() -> None:
    torch.set_num_threads(1)
    for case in CASES:
        out = FIXTURES / case
        shutil.rmtree(out, ignore_errors=True)
        model = random_hf_model(*CASES[case])
        model.save_pretrained(out)
        np.savez_compressed(out / "reference.npz", **reference(model, model.config.vocab_size),
                            transformers_version=np.array(transformers.__version__))
        print(case, sum(f.stat().st_size for f in out.iterdir()), "bytes")


if __name__ == "__main__":
    main()
