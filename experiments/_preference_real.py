"""The real preference task shared by the P17 / P48 / P51 / P60 experiments (issue 22, item 6).

SmolLM2-135M-Instruct answers ``tokjax.data.word_problems`` in the setting :data:`SETTING`, chosen by
measurement with ``experiments/word_problem_levels.py`` on its calibration seed (200 problems, never
an evaluation seed; table in docs/data.md): level 0 (one addition, answers 3-10) asked in the
"oneshot" style (one worked example ``4 + 3 = 7. Answer: 7`` in the chat, then "write the
calculation in one line, then 'Answer: N'"), 32 new tokens. Measured: greedy 0.830, T=1 0.280
(200 calibration problems, 48 tokens); the same T=1 samples cut at 32 tokens score the same (0.276
on 48 x 8 calibration samples) and 87.5 % of prompts get both a correct and an incorrect sample
out of 8. Why: it is the only measured setting inside the 20-70 % T=1 band (at 48 tokens, T=1:
level 0 "steps" 0.040, "short" 0.095, "direct" 0.065 -- the model neither replies with the number
alone nor keeps to one line without the example; level 1 "oneshot" 0.140, level 1 "steps" 0.105);
its accuracy barely changes between 12 and 48 tokens (0.26-0.29 on the calibration samples cut
there: the calculation comes first), and 32 tokens keep 83 % of the samples stating ``Answer: N``
(24: 75 %, 48: 87 %) at two thirds of the 48-token decode, so a pair's tokens hold a calculation,
its result and the stated answer --
the token-level methods need such multi-token completions, which a one-number reply would not give.

:func:`sample_pool` draws ``samples`` completions per prompt at ``temperature`` through
``tokjax.generate`` (chat template of ``WordProblem.messages(style)``, ``n=samples`` forks of each
prompt's prefill, :data:`PROMPTS_PER_CALL` prompts per call), grades them with ``check_answer`` and
caches the result under ``$TOKJAX_CACHE/experiments`` keyed by (setting, n_prompts, seed, samples,
temperature, model name, a fingerprint of the parameters, prompts per call). The (correct,
incorrect) completions of one prompt are the preference pairs; the correct / incorrect pools also
train cDPO's positive / negative models and P60's SFT. Draw seeds: :data:`TRAIN_SEED` (384 prompts,
quick 48) and :data:`HELDOUT_SEED` (200, quick 64); level 0 has about 54k distinct stories, so 4 of
the 200 held-out questions also occur among the 384 training ones (none among the calibration ones).
Cost (one core of a loaded 2-core machine): 48 prompts x 8 samples in 513 s, about 85 s of it compiling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["MODEL", "SETTING", "TRAIN_SEED", "HELDOUT_SEED", "PROMPTS_PER_CALL", "PromptPool", "problems",
           "sample_pool", "pool_summary"]

MODEL = "smollm2-135m-instruct"
SETTING = dict(level=0, style="oneshot", new_tokens=32)  # T=1 accuracy 0.28 on the calibration seed
TRAIN_SEED, HELDOUT_SEED = 0, 1  # word_problems draw seeds (the calibration seed is 1000)
PROMPTS_PER_CALL = 8             # prompts per generate call (x samples rows); part of the cache key


@dataclasses.dataclass(frozen=True)
class PromptPool:
    """One prompt's samples: ``prompt`` ids (chat template), ``completions`` (``samples`` id arrays, the
    eos included when the sample stopped before the budget), ``correct`` / ``format_ok`` [samples] bool
    (``check_answer``) and the problem's integer ``answer``."""

    prompt: np.ndarray
    completions: tuple
    correct: np.ndarray
    format_ok: np.ndarray
    answer: int


def problems(n_prompts: int, seed: int, setting: dict | None = None):
    """Returns the ``n_prompts`` WordProblems of draw ``seed`` at the setting's level."""
    from tokjax.data import word_problems

    return word_problems(n_prompts, (setting or SETTING)["level"], seed)


def _fingerprint(model) -> str:
    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(model.params):
        a = np.asarray(leaf)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a.reshape(-1)[:256], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _cache_path(key: dict):
    from experiments._common import cached

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cached(f"preference-real-{digest}.npz")


def _check(model, tok, n_prompts, seed, samples, temperature, setting):
    from tokjax.data._word_problems import WORD_PROBLEM_LEVELS, WORD_PROBLEM_STYLES

    for name, v in (("n_prompts", n_prompts), ("samples", samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0 (the pools are sampled), got {temperature!r}")
    if set(setting) != {"level", "style", "new_tokens"}:
        raise ValueError(f"setting must have exactly the keys level, style, new_tokens, got {sorted(setting)}")
    if setting["level"] not in WORD_PROBLEM_LEVELS or setting["style"] not in WORD_PROBLEM_STYLES:
        raise ValueError(f"setting level/style must be in {sorted(WORD_PROBLEM_LEVELS)} / {sorted(WORD_PROBLEM_STYLES)}, "
                         f"got {setting['level']!r} / {setting['style']!r}")
    if not isinstance(setting["new_tokens"], int) or setting["new_tokens"] < 1:
        raise ValueError(f"setting new_tokens must be an int >= 1, got {setting['new_tokens']!r}")
    if tok.eos_id is None or not hasattr(tok, "apply_chat_template"):
        raise ValueError("sample_pool needs a chat tokenizer with an eos id (e.g. tokjax.pretrained(MODEL)[1])")
    if model.cfg.vocab_size < tok.vocab_size:
        raise ValueError(f"model vocabulary {model.cfg.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")


def sample_pool(model, tok, n_prompts: int, seed: int, samples: int = 8, temperature: float = 1.0, *,
                setting: dict | None = None, model_name: str = MODEL, progress: bool = False) -> list[PromptPool]:
    """Returns one :class:`PromptPool` per problem of ``problems(n_prompts, seed)``, from the disk cache when present.

    ``samples`` completions per prompt at ``temperature`` (no other transform), at most
    ``setting["new_tokens"]`` new tokens, stopped at the tokenizer's eos; batched
    :data:`PROMPTS_PER_CALL` prompts (x ``samples`` rows) per ``tokjax.generate`` call, call ``i``
    keyed ``fold_in(key(seed), i)``. The cache key holds the setting, sizes, seed, temperature,
    ``model_name`` and a fingerprint of the parameters (so a fine-tuned model never reads the
    reference's pool). Finished calls are saved as they come, so a killed run resumes where it stopped.
    Raises ValueError on bad sizes, a non-positive temperature or an unknown setting.
    """
    import time

    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L
    from tokjax.data import check_answer

    setting = dict(SETTING if setting is None else setting)
    _check(model, tok, n_prompts, seed, samples, temperature, setting)
    key = dict(setting=setting, n_prompts=n_prompts, seed=seed, samples=samples, temperature=float(temperature),
               model=model_name, params=_fingerprint(model), per_call=PROMPTS_PER_CALL, version=1)
    path = _cache_path(key)
    if path.exists():
        with np.load(path) as f:
            if json.loads(str(f["key"])) == key:
                return _unpack(f)
    probs = problems(n_prompts, seed, setting)
    prompts = [tok.apply_chat_template(p.messages(setting["style"]), add_generation_prompt=True) for p in probs]
    # the calls done so far are saved after each one, so an interrupted run resumes at its next call (call i's key
    # is fold_in(seed, i) whatever ran before: the resumed pool equals an uninterrupted one)
    partial = path.with_name(path.stem + ".partial.npz")
    pools, t0 = [], time.perf_counter()
    if partial.exists():
        with np.load(partial) as f:
            if json.loads(str(f["key"])) == key:
                pools = _unpack(f)
    for call, i in enumerate(range(0, n_prompts, PROMPTS_PER_CALL)):
        if i < len(pools):
            continue
        chunk = prompts[i:i + PROMPTS_PER_CALL]
        out = tokjax.generate(model, chunk, key=jax.random.fold_in(jax.random.key(seed), call), n=samples,
                              max_new_tokens=setting["new_tokens"], logits=L.temperature(float(temperature)),
                              eos_id=tok.eos_id, pad_id=tok.pad_id or 0)
        comps, texts = out.completions(), out.texts(tok)
        for j, (ids, p) in enumerate(zip(chunk, probs[i:i + PROMPTS_PER_CALL])):
            rows = range(j * samples, (j + 1) * samples)  # prompt-major
            graded = [check_answer(texts[r], p.answer) for r in rows]
            pools.append(PromptPool(np.asarray(ids, np.int32), tuple(np.asarray(comps[r], np.int32) for r in rows),
                                    np.array([c for c, _ in graded]), np.array([f for _, f in graded]), int(p.answer)))
        if len(pools) < n_prompts:
            _save(partial, key, pools)
        if progress:
            print(f"  sample_pool: {len(pools)}/{n_prompts} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    _save(path, key, pools)
    partial.unlink(missing_ok=True)
    return pools


def _save(path, key, pools) -> None:
    import os

    import numpy as np

    comps = [c for p in pools for c in p.completions]
    arrays = dict(
        key=np.array(json.dumps(key, sort_keys=True)),
        prompts=np.concatenate([p.prompt for p in pools]), prompt_lengths=np.array([len(p.prompt) for p in pools]),
        completions=np.concatenate(comps) if comps else np.zeros(0, np.int32),
        completion_lengths=np.array([len(c) for c in comps]),
        correct=np.stack([p.correct for p in pools]), format_ok=np.stack([p.format_ok for p in pools]),
        answers=np.array([p.answer for p in pools]))
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # never a half-written cache entry


def _unpack(f) -> list[PromptPool]:
    import numpy as np

    prompts = np.split(f["prompts"], np.cumsum(f["prompt_lengths"])[:-1])
    comps = np.split(f["completions"], np.cumsum(f["completion_lengths"])[:-1])
    correct, fmt, answers = f["correct"], f["format_ok"], f["answers"]
    s = correct.shape[1]
    return [PromptPool(prompts[i].astype(np.int32), tuple(c.astype(np.int32) for c in comps[i * s:(i + 1) * s]),
                       correct[i].astype(bool), fmt[i].astype(bool), int(answers[i])) for i in range(len(prompts))]


def pool_summary(pools: list[PromptPool], new_tokens: int | None = None) -> dict:
    """Returns {"accuracy", "format", "mixed" (fraction of prompts with a correct and an incorrect sample),
    "pairs" (sum over prompts of n_correct * n_incorrect), "mean_tokens", "at_budget" (fraction of samples
    with ``new_tokens``, default the setting's, tokens: cut by the budget)} of sampled pools."""
    import numpy as np

    correct = np.stack([p.correct for p in pools])
    k, s = correct.sum(1), correct.shape[1]
    lengths = np.array([len(c) for p in pools for c in p.completions])
    budget = SETTING["new_tokens"] if new_tokens is None else new_tokens
    return dict(accuracy=float(correct.mean()), format=float(np.stack([p.format_ok for p in pools]).mean()),
                mixed=float(np.mean((k > 0) & (k < s))), pairs=int((k * (s - k)).sum()),
                mean_tokens=float(lengths.mean()), at_budget=float(np.mean(lengths >= budget)))
