"""Writes tests/logits/fixtures/hf_sampling.json: transformers' logits processors on a few rows, for many settings.

The default test suite has no torch, so this committed fixture is what lets it check that
``tokjax.logits.hf_sampling`` keeps the same tokens, with the same logits, as transformers'
``generate``. The processors are built by transformers' own ``_get_logits_processor`` (on a
tiny random model, which only supplies the config it reads) from a ``GenerationConfig``
holding the setting, so order, defaults and "disabled" values are transformers'. Each input
case is B rows of V logits plus the sequences ``input_ids`` the processors read; the outputs are
the processed scores, stored as each row's kept ids and their values. Regenerate (needs the hf
extra)::

    .venv/bin/python tests/logits/make_hf_sampling_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

OUT = Path(__file__).resolve().parent / "fixtures" / "hf_sampling.json"
B, V, S = 4, 64, 12

# transformers GenerationConfig keywords; tests map epsilon_cutoff -> epsilon, eta_cutoff -> eta.
SETTINGS = [
    dict(do_sample=True),  # transformers' defaults: only top_k=50 acts
    dict(do_sample=True, temperature=0.7, top_p=0.9),
    dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0),
    dict(do_sample=True, top_k=5),
    dict(do_sample=True, top_k=1),
    dict(do_sample=True, top_k=100),  # larger than V: clamped
    dict(do_sample=True, top_k=0, top_p=0.5),
    dict(do_sample=True, top_k=0, top_p=0.0),  # edge: keeps min_tokens_to_keep
    dict(do_sample=True, top_k=0, top_p=0.999),
    dict(do_sample=True, top_k=0, min_p=0.1),
    dict(do_sample=True, min_p=0.0),
    dict(do_sample=True, top_k=0, min_p=1.0),
    dict(do_sample=True, top_k=0, typical_p=0.9),
    dict(do_sample=True, top_k=0, typical_p=0.2),
    dict(do_sample=True, top_k=0, epsilon_cutoff=3e-3),
    dict(do_sample=True, top_k=0, epsilon_cutoff=0.2),  # usually empties a row but for the top token
    dict(do_sample=True, top_k=0, eta_cutoff=2e-3),
    dict(do_sample=True, top_k=0, eta_cutoff=0.1),
    dict(do_sample=True, top_k=0, repetition_penalty=1.3),
    dict(do_sample=True, top_k=0, repetition_penalty=0.8),
    dict(do_sample=True, top_k=0, no_repeat_ngram_size=1),
    dict(do_sample=True, top_k=0, no_repeat_ngram_size=2),
    dict(do_sample=True, top_k=0, no_repeat_ngram_size=3),
    dict(do_sample=True, temperature=0.5, top_k=10, top_p=0.8, min_p=0.05),
    dict(do_sample=True, temperature=2.0, top_k=0, typical_p=0.5, eta_cutoff=5e-3),
    dict(do_sample=True, temperature=1.3, top_k=20, top_p=0.95, min_p=0.02, typical_p=0.95, epsilon_cutoff=1e-3,
         eta_cutoff=1e-3, repetition_penalty=1.2, no_repeat_ngram_size=2),
    dict(do_sample=False),
    dict(do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=2),
]


def input_cases(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Returns named float32 [B, V] logit rows with int [B, S] sequences: plain, tied, peaked with -inf entries."""
    rng = np.random.default_rng(seed)

    def ids():
        # small alphabets in two rows so n-grams repeat; the full vocabulary in the others
        rows = [rng.integers(0, 6, S), rng.integers(0, 10, S), rng.integers(0, V, S), rng.integers(0, V, S)]
        rows[0][-2:] = rows[0][:2]  # the row ends with its opening bigram: n=3 bans its third token
        return np.stack(rows).astype(np.int64)

    plain = (rng.standard_normal((B, V)) * 3).astype(np.float32)
    tied = np.round(rng.standard_normal((B, V)) * 2).astype(np.float32)
    peaked = rng.standard_normal((B, V)).astype(np.float32)
    peaked[np.arange(B), rng.integers(0, V, B)] += 12.0
    peaked[:, rng.choice(V, 5, replace=False)] = -np.inf
    return {name: dict(logits=x, input_ids=ids()) for name, x in (("plain", plain), ("tied", tied), ("peaked", peaked))}


_MODEL = None


def _model():
    """Returns a tiny random causal LM: ``_get_logits_processor`` is a method and reads its config."""
    global _MODEL
    if _MODEL is None:
        conf = transformers.LlamaConfig(vocab_size=V, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
        _MODEL = transformers.LlamaForCausalLM(conf).eval()
    return _MODEL


def hf_processors(setting: dict, seq_len: int) -> transformers.LogitsProcessorList:
    """Returns the LogitsProcessorList transformers' ``generate`` builds for ``setting`` (defaults filled as generate does)."""
    cfg = transformers.GenerationConfig(**setting)
    cfg.update(**transformers.GenerationConfig._get_default_generation_params(), defaults_only=True)
    return _model()._get_logits_processor(cfg, input_ids_seq_length=seq_len, device="cpu")


def hf_process(setting: dict, logits: np.ndarray, input_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Returns (transformers' processed float32 scores [B, V] with -inf for removed tokens, processor class names)."""
    procs = hf_processors(setting, input_ids.shape[1])
    with torch.no_grad():
        out = procs(torch.tensor(input_ids), torch.tensor(logits).clone())
    return out.float().numpy(), [type(p).__name__ for p in procs]


def main() -> None:
    torch.set_num_threads(1)
    cases = input_cases()
    records = []
    for setting in SETTINGS:
        for name, case in cases.items():
            scores, names = hf_process(setting, case["logits"], case["input_ids"])
            kept = [np.flatnonzero(np.isfinite(row)).tolist() for row in scores]
            values = [[float(f"{v:.9g}") for v in row[np.isfinite(row)]] for row in scores]
            records.append(dict(setting=setting, case=name, processors=names, kept=kept, values=values,
                                argmax=scores.argmax(-1).tolist()))
    data = dict(
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        cases={n: dict(logits=[[None if not np.isfinite(v) else float(f"{v:.9g}") for v in row] for row in c["logits"]],
                       input_ids=c["input_ids"].tolist()) for n, c in cases.items()},
        records=records,
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(OUT, OUT.stat().st_size, "bytes,", len(records), "records")


if __name__ == "__main__":
    main()
