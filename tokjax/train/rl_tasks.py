"""Verifiable RL tasks (the tiny rung of issue 21's ladder) and the warm start they are trained from.

    model, tok = tokjax.pretrained("tiny-arithmetic-cot")      # SFT warm start, trained on first use
    task = ArithmeticCoTTask(tok, split="train")               # an RLTask for tokjax.train.rl.rl_train
    model, history = rl_train(model, task, RLConfig(...), eos_id=tok.eos_id)

**Task.** Multi-digit addition with chain of thought (:func:`tokjax.data.arithmetic`,
``chain_of_thought=True``): the prompt is ``"a+b="`` (bos first), the completion lists every
column from the units up as ``"x+y+c=d cK"`` joined by ``", "``, then ``" => "``, the answer and
eos, e.g. ``"47+5=" -> "7+5+0=2 c1, 4+0+1=5 c0 => 52"``. A completion is *well-formed*
(``format_ok``) when its text, before an eos that ends it, matches that grammar exactly (any
number of columns, any digits); it is *correct* when it is well-formed and the integer after
``" => "`` equals the answer (exact match). Reward: 1 if correct else 0.

**Splits.** ``train``, ``validation`` and ``test`` are three seeded draws with every
validation / test problem removed from train (the prompts are compared as strings) and test
problems removed from validation; RL and SFT read ``train`` only, snapshots and learning rates are
chosen on ``validation``, and ``test`` is the held-out evaluation.

**Warm start** (:func:`build_arithmetic_cot`, the builder behind
``tokjax.pretrained("tiny-arithmetic-cot")``): a byte-level BPE tokenizer with single-digit
pre-tokenisation, a tiny llama-style model SFT-trained through :func:`tokjax.train.train`
(completion tokens only, prompt masked), a parameter snapshot every ``select.eval_every`` steps,
and the snapshot chosen on the *validation* split: among those whose greedy accuracy lies in
[``acc_low``, ``acc_high``] and whose well-formed rate is >= ``min_format``, the one whose
accuracy is closest to ``target`` (room for RL to improve while groups of G samples still mix
right and wrong answers). No snapshot in the band raises ValueError with the measured curve.
"""

from __future__ import annotations

import re
import time
from typing import Any, Sequence

import numpy as np

__all__ = ["ArithmeticCoTTask", "COT_PATTERN", "DATA", "SPLITS", "arithmetic_cot_splits", "build_arithmetic_cot",
           "check_arithmetic_cot", "evaluate_greedy", "max_completion_tokens", "select_snapshot"]

SPLITS = ("train", "validation", "test")
# The data of tokjax.pretrained("tiny-arithmetic-cot") (its config's data section; a test keeps them equal).
DATA = {"digits": [1, 4], "op": "+", "seed": 0, "train": 20000, "validation": 300, "test": 500}
_COLUMN = r"\d[+-]\d[+-]\d=\d c\d"
COT_PATTERN = re.compile(rf"{_COLUMN}(?:, {_COLUMN})* => (-?\d+)")


def check_arithmetic_cot(text: str, answer: str | int) -> tuple[bool, bool]:
    """Returns (correct, format_ok) of a completion text (eos already stripped) against ``answer``.

    ``format_ok``: the whole text matches the chain-of-thought grammar :data:`COT_PATTERN`
    (columns ``"x+y+c=d cK"`` joined by ``", "``, then ``" => "`` and an integer). ``correct``:
    well-formed and the final integer equals ``answer`` (exact match of the integer value).
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str (a decoded completion), got {type(text).__name__}")
    m = COT_PATTERN.fullmatch(text)
    if m is None:
        return False, False
    try:
        want = int(str(answer))
    except ValueError:
        raise ValueError(f"answer must be an integer (or its decimal string), got {answer!r}") from None
    return int(m.group(1)) == want, True


def arithmetic_cot_splits(sizes: dict[str, int], *, digits=(1, 4), op: str = "+", seed: int = 0) -> dict[str, list]:
    """Returns {split: [ArithmeticExample]} for ``sizes`` {"train", "validation", "test": n} (disjoint prompts).

    Each split is a seeded :func:`tokjax.data.arithmetic` draw (seed, seed + 1, seed + 2) with
    ``chain_of_thought=True``; train drops the prompts of validation and test, validation those
    of test, so the held-out splits never overlap what is trained on.
    """
    from tokjax.data import arithmetic

    if not isinstance(sizes, dict) or set(sizes) - set(SPLITS) or not sizes:
        raise ValueError(f"sizes must map some of {SPLITS} to counts, got {sizes!r}")
    test = arithmetic(sizes.get("test", 0), digits, op, True, seed + 2)
    seen = {e.prompt for e in test}
    val = [e for e in arithmetic(sizes.get("validation", 0), digits, op, True, seed + 1) if e.prompt not in seen]
    seen |= {e.prompt for e in val}
    train = [e for e in arithmetic(sizes.get("train", 0), digits, op, True, seed) if e.prompt not in seen]
    return {"train": train, "validation": val, "test": test}


class ArithmeticCoTTask:
    """An :class:`tokjax.train.rl.RLTask`: addition with chain of thought, exact-match reward, format flag.

    ``tokenizer``: the warm start's (``tokjax.pretrained("tiny-arithmetic-cot")[1]``); ``split``:
    which problems :meth:`prompts` draws (``"train"`` for RL; ``examples`` holds the split);
    ``data``: overrides of :data:`DATA` (digits, op, seed and split sizes; the defaults are the
    warm start's, so the held-out splits are the ones its snapshot was chosen / tested on);
    ``prompt_seed``: which sequence of prompts the steps draw (e.g. one per RL seed).
    ``prompts(step, k)`` draws k problems without replacement, a pure function of
    ``step``; ``reward`` returns (float32 1/0 exact-match rewards, bool well-formed flags).
    """

    def __init__(self, tokenizer, split: str = "train", *, data: dict | None = None, prompt_seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name in ("encode", "decode", "eos_id"):
            if not hasattr(tokenizer, name):
                raise ValueError(f"tokenizer must have encode/decode/eos_id, got {type(tokenizer).__name__}")
        data = {**DATA, **(data or {})}
        if set(data) - set(DATA):
            raise ValueError(f"data has unknown key(s) {sorted(set(data) - set(DATA))}; valid: {sorted(DATA)}")
        self.tokenizer, self.split, self.data, self.seed = tokenizer, split, data, int(data["seed"])
        self.prompt_seed = int(prompt_seed)
        self.examples = arithmetic_cot_splits({k: data[k] for k in SPLITS}, digits=tuple(data["digits"]),
                                              op=data["op"], seed=self.seed)[split]
        if not self.examples:
            raise ValueError(f"the {split} split is empty (data {data})")
        self.prompt_ids = [tokenizer.encode(e.prompt, add_bos=True) for e in self.examples]
        self.max_new_tokens = max_completion_tokens(tuple(data["digits"]))

    def __len__(self) -> int:
        return len(self.examples)

    def prompts(self, step: int, n: int) -> tuple[list[list[int]], list[str]]:
        """Returns n prompt id lists (bos first) and their answers for RL step ``step`` (seeded by it)."""
        if not isinstance(n, int) or n < 1 or n > len(self.examples):
            raise ValueError(f"n must be an int in [1, {len(self.examples)}], got {n!r}")
        idx = np.random.default_rng((self.seed, self.prompt_seed, int(step))).choice(len(self.examples), n, replace=False)
        return [list(self.prompt_ids[i]) for i in idx], [self.examples[i].answer for i in idx]

    def text(self, completion) -> str:
        """Returns the completion's text up to (not including) its first eos."""
        ids = [int(t) for t in np.asarray(completion).reshape(-1)]
        eos = self.tokenizer.eos_id
        if eos in ids:
            ids = ids[:ids.index(eos)]
        return self.tokenizer.decode(ids)

    def reward(self, completions: Sequence, answers: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Returns (float32 rewards [B]: 1 = right answer in a well-formed completion, bool format_ok [B]).

        A completion that did not end with eos (truncated) is not well-formed."""
        if len(completions) != len(answers):
            raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
        eos = self.tokenizer.eos_id
        out = [check_arithmetic_cot(self.text(c), a) if eos in np.asarray(c).tolist() else (False, False)
               for c, a in zip(completions, answers)]
        return np.array([o[0] for o in out], np.float32), np.array([o[1] for o in out], bool)


def max_completion_tokens(digits=(1, 4)) -> int:
    """Returns a token budget that holds any completion for operands of up to ``digits[1]`` digits
    (single-digit pre-tokenisation; 12 tokens per column at most, the answer, eos and a margin)."""
    hi = digits[1] if isinstance(digits, (tuple, list)) else digits
    return 12 * hi + hi + 8


def evaluate_greedy(model, tokenizer, examples, *, max_new_tokens: int, batch_size: int = 256) -> dict:
    """Returns {"accuracy", "format_ok", "n"}: greedy (argmax) decoding of ``examples`` scored by
    :func:`check_arithmetic_cot` (a completion without eos is malformed)."""
    from tokjax.decoding import generate
    from tokjax.logits import greedy

    if not examples:
        raise ValueError("evaluate_greedy needs at least one example")
    right = fmt = 0
    eos = tokenizer.eos_id
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        out = generate(model, [tokenizer.encode(e.prompt, add_bos=True) for e in chunk], logits=greedy(),
                       max_new_tokens=max_new_tokens, eos_id=eos)
        for c, e in zip(out.completions(), chunk):
            ids = c.tolist()
            if eos not in ids:
                continue
            ok, wf = check_arithmetic_cot(tokenizer.decode(ids[:ids.index(eos)]), e.answer)
            right, fmt = right + ok, fmt + wf
    n = len(examples)
    return {"accuracy": right / n, "format_ok": fmt / n, "n": n}


def _sft_windows(tokenizer, examples, width: int):
    """Returns (tokens [N, width] int32, prompt_lengths [N], lengths [N]): bos + prompt + completion + eos."""
    toks = np.zeros((len(examples), width), np.int32)
    plen = np.zeros(len(examples), np.int32)
    lens = np.zeros(len(examples), np.int32)
    for i, e in enumerate(examples):
        p = tokenizer.encode(e.prompt, add_bos=True)
        ids = p + tokenizer.encode(e.completion) + [tokenizer.eos_id]
        if len(ids) > width:
            raise ValueError(f"example {e.prompt!r} needs {len(ids)} tokens, more than the window {width}")
        toks[i, :len(ids)], plen[i], lens[i] = ids, len(p), len(ids)
    return toks, plen, lens


def select_snapshot(curve: list[dict], *, acc_low: float, acc_high: float, target: float, min_format: float) -> int:
    """Returns the index in ``curve`` (rows with "accuracy", "format_ok" on validation) of the chosen snapshot:
    the accuracy in [acc_low, acc_high] with format_ok >= min_format closest to ``target`` (earliest on ties);
    ValueError listing the curve when none qualifies."""
    ok = [i for i, r in enumerate(curve)
          if acc_low <= r["accuracy"] <= acc_high and r["format_ok"] >= min_format]
    if not ok:
        shown = ", ".join(f"step {r['step']}: acc {r['accuracy']:.2f} fmt {r['format_ok']:.2f}" for r in curve)
        raise ValueError(f"no SFT snapshot has validation accuracy in [{acc_low}, {acc_high}] with >= {min_format} "
                         f"well-formed answers ({shown}); change the model or train section")
    return min(ok, key=lambda i: (abs(curve[i]["accuracy"] - target), i))


def build_arithmetic_cot(config: dict, work, progress: bool = True) -> tuple[Any, Any, dict]:
    """Returns (Model, BPETokenizer, metrics) of the SFT warm start described by ``config`` (module docstring).

    ``config`` sections: ``data`` (digits, op, seed, train / validation / test sizes), ``tokenizer``
    (vocab_size), ``model`` (ModelConfig fields but vocab_size), ``train`` (TrainConfig fields),
    ``select`` (eval_every, acc_low, acc_high, target, min_format). ``work`` is a scratch
    directory (the tokenizer is saved there). Metrics: the chosen step, its validation and test
    greedy accuracy / well-formed rate, the whole validation curve, wall time.
    """
    import jax
    from pathlib import Path

    from tokjax.model import Model, ModelConfig
    from tokjax.tokenizers import BPETokenizer
    from tokjax.train import train, train_config_from_dict

    t0 = time.perf_counter()
    d, sel = config["data"], config["select"]
    digits = tuple(d["digits"])
    splits = arithmetic_cot_splits({"train": d["train"], "validation": d["validation"], "test": d["test"]},
                                   digits=digits, op=d["op"], seed=d["seed"])
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = BPETokenizer.train([e.text for e in splits["train"]], config["tokenizer"]["vocab_size"],
                                   digits="single", min_frequency=2)
    tokenizer.save(work)
    mcfg = ModelConfig(vocab_size=tokenizer.vocab_size, **config["model"])
    tc = train_config_from_dict(config["train"], "tiny-arithmetic-cot: train")
    width = max_completion_tokens(digits) + 2 * digits[1] + 4
    if width > mcfg.max_len:
        raise ValueError(f"model.max_len={mcfg.max_len} is shorter than the {width} tokens a problem needs")
    toks, plen, lens = _sft_windows(tokenizer, splits["train"], width)
    B, n_train = tc.batch_size, len(toks)

    def batch_fn(step):
        idx = np.random.default_rng((tc.seed, step)).integers(0, n_train, B)
        return {"tokens": toks[idx], "prompt_lengths": plen[idx], "lengths": lens[idx]}

    every = int(sel["eval_every"])
    max_new = max_completion_tokens(digits)
    curve, snaps = [], []

    def callback(step, state, metrics):
        done = step + 1
        if done % every and done != tc.total_steps:
            return
        params = jax.device_get(state.params)  # a host copy: the state is donated to the next step
        r = evaluate_greedy(Model(params=params, cfg=mcfg), tokenizer, splits["validation"], max_new_tokens=max_new)
        curve.append({"step": done, **r})
        snaps.append(params)
        if progress:
            print(f"tokjax: tiny-arithmetic-cot step {done}: validation greedy accuracy {r['accuracy']:.3f}, "
                  f"well-formed {r['format_ok']:.3f}", flush=True)

    train(mcfg, tc, batch_fn, progress=False, callback=callback)
    i = select_snapshot(curve, acc_low=sel["acc_low"], acc_high=sel["acc_high"], target=sel["target"],
                        min_format=sel["min_format"])
    model = Model(params=jax.tree.map(np.asarray, snaps[i]), cfg=mcfg)
    test = evaluate_greedy(model, tokenizer, splits["test"], max_new_tokens=max_new)
    metrics = {
        "val_loss": None, "unigram_val_loss": None,
        "chosen_step": curve[i]["step"], "val_accuracy": curve[i]["accuracy"], "val_format_ok": curve[i]["format_ok"],
        "test_accuracy": test["accuracy"], "test_format_ok": test["format_ok"], "n_val": curve[i]["n"],
        "n_test": test["n"], "n_train": n_train, "num_params": mcfg.num_params(), "max_new_tokens": max_new,
        "validation_curve": [{k: r[k] for k in ("step", "accuracy", "format_ok")} for r in curve],
        "wall_time_s": time.perf_counter() - t0,
    }
    return model, tokenizer, metrics
