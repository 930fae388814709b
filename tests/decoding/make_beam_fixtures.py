"""Writes tests/decoding/fixtures/beam_<case>.json: transformers' beam search on the committed tiny checkpoints.

The default suite has no torch, so tokjax's beam search (``tokjax.decoding.beam``) is checked
against these committed outputs: for each checkpoint of ``tests/io/fixtures`` (GPT-2, Llama GQA,
Qwen2 MQA) and each setting in ``SETTINGS`` (num_beams 2-4, length_penalty -0.5 / 0.5 / 1 / 2,
early_stopping False / True / "never", num_return_sequences 1-4, with and without eos, with a
repetition penalty, with min_new_tokens), transformers' ``generate(num_beams=...)`` output on two
prompts of different lengths: every returned hypothesis (generated tokens only, cut after its
eos) and its ``sequences_scores``.

Each prompt is run on its own (batch 1, no padding): transformers' beam search treats the rows of a
batch independently, and a left-padded batch would let the repetition penalty see the pad ids.
The script checks that a padded batch gives the same beams for the settings without a penalty.

The eos id of each checkpoint is chosen so finished hypotheses matter: among the ids that do not
occur in the prompts, the one for which the 4-beam, 4-returned setting ends the most evenly mixed
set of hypotheses (some at eos, some at the length limit). Regenerate (needs torch + transformers)::

    .venv/bin/python tests/decoding/make_beam_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE.parent / "io" / "fixtures"
OUT = HERE / "fixtures"
CASES = ("gpt2", "llama_gqa_untied", "qwen2_mqa_tied")
PROMPT_LENGTHS = (9, 4)
MAX_NEW = 10

# One dict per generate call; "eos": whether the checkpoint's chosen eos id is passed.
SETTINGS = (
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=1, eos=True),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=4, eos=True),
    dict(num_beams=4, length_penalty=0.5, early_stopping=True, num_return_sequences=2, eos=True),
    dict(num_beams=4, length_penalty=2.0, early_stopping=False, num_return_sequences=3, eos=True),
    dict(num_beams=2, length_penalty=0.5, early_stopping=False, num_return_sequences=2, eos=True),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never", num_return_sequences=2, eos=True),
    dict(num_beams=4, length_penalty=-0.5, early_stopping="never", num_return_sequences=4, eos=True),
    dict(num_beams=2, length_penalty=1.0, early_stopping=True, num_return_sequences=2, eos=True),
    dict(num_beams=3, length_penalty=1.0, early_stopping=False, num_return_sequences=3, eos=False),
    dict(num_beams=3, length_penalty=1.0, early_stopping=False, num_return_sequences=2, eos=True,
         repetition_penalty=1.5),
    dict(num_beams=3, length_penalty=1.0, early_stopping=False, num_return_sequences=3, eos=True, min_new_tokens=3),
)


def prompts_for(case: str, vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(sum(map(ord, case)))
    return [rng.integers(0, vocab, n).tolist() for n in PROMPT_LENGTHS]


def hf_beam(model, prompt: list[int], setting: dict, eos_id: int | None) -> tuple[list[list[int]], list[float]]:
    """Returns (generated tokens of each returned hypothesis, cut after eos; their sequences_scores)."""
    x = torch.tensor([prompt])
    eos = eos_id if setting["eos"] else None
    with torch.no_grad():
        out = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False,
            num_beams=setting["num_beams"], length_penalty=setting["length_penalty"],
            early_stopping=setting["early_stopping"], num_return_sequences=setting["num_return_sequences"],
            repetition_penalty=setting.get("repetition_penalty", 1.0), min_new_tokens=setting.get("min_new_tokens"),
            eos_token_id=eos,
            pad_token_id=0, output_scores=True, return_dict_in_generate=True,
        )
    seqs = []
    for row in out.sequences[:, len(prompt):].tolist():
        # every hypothesis ends at its first eos or at max_new_tokens: nothing else stops one
        cut = row.index(eos) + 1 if eos is not None and eos in row else MAX_NEW
        seqs.append(row[:cut])
    return seqs, out.sequences_scores.tolist()


def hf_beam_padded(model, prompts: list[list[int]], setting: dict, eos_id: int | None) -> list[list[int]]:
    """Returns the generated tokens of a left-padded batch run (for the independence check)."""
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    eos = eos_id if setting["eos"] else None
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, num_beams=setting["num_beams"],
            length_penalty=setting["length_penalty"], early_stopping=setting["early_stopping"],
            num_return_sequences=setting["num_return_sequences"], min_new_tokens=setting.get("min_new_tokens"),
            eos_token_id=eos, pad_token_id=0,
        )
    seqs = []
    for row in out[:, P:].tolist():
        cut = row.index(eos) + 1 if eos is not None and eos in row else MAX_NEW
        seqs.append(row[:cut])
    return seqs


def choose_eos(model, prompts: list[list[int]], vocab: int) -> int:
    """Returns the eos id (absent from the prompts) giving the most even mix of eos-ended and full-length hypotheses."""
    probe = SETTINGS[1]
    best, best_key = None, None
    for e in range(vocab):
        if any(e in p for p in prompts):
            continue
        per_prompt = [hf_beam(model, p, probe, e)[0] for p in prompts]
        ended = [[len(s) for s in seqs if s[-1] == e] for seqs in per_prompt]
        total = sum(map(len, per_prompt))
        n_ended = sum(map(len, ended))
        # both prompts need eos-ended hypotheses, of more than one length, and some full-length ones
        key = (min(map(len, ended)) > 0, len({n for lens in ended for n in lens}) > 1, -abs(n_ended - total / 2))
        if best_key is None or key > best_key:
            best, best_key = e, key
    return best


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    for case in CASES:
        model = transformers.AutoModelForCausalLM.from_pretrained(CHECKPOINTS / case, dtype=torch.float32).eval()
        vocab = model.config.vocab_size
        prompts = prompts_for(case, vocab)
        eos_id = choose_eos(model, prompts, vocab)
        runs = []
        for setting in SETTINGS:
            seqs, scores = [], []
            for p in prompts:
                s, sc = hf_beam(model, p, setting, eos_id)
                seqs += s
                scores += sc
            if "repetition_penalty" not in setting:
                padded = hf_beam_padded(model, prompts, setting, eos_id)
                if padded != seqs:
                    raise SystemExit(f"{case} {setting}: a left-padded batch gave other beams than single prompts")
            runs.append({**setting, "sequences": seqs, "scores": scores})
            n_eos = sum(setting["eos"] and s[-1] == eos_id for s in seqs)
            print(case, {k: v for k, v in setting.items() if k != "eos"}, f"eos-ended {n_eos}/{len(seqs)}",
                  "lengths", [len(s) for s in seqs])
        data = {
            "case": case, "transformers_version": transformers.__version__, "eos_id": eos_id,
            "max_new_tokens": MAX_NEW, "prompts": prompts, "runs": runs,
        }
        (OUT / f"beam_{case}.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
