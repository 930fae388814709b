"""SmolLM2-135M-Instruct's accuracy on tokjax.data.word_problems per level and prompt style (greedy and T=1).

The RL, preference and routing experiments (issues 19, 21, 22) train on a setting whose T=1
accuracy lies in 20-70 %; this script measures it first, on problems of a calibration seed that the
experiments do not use for evaluation. Chat template (``WordProblem.messages(style)``: the "oneshot"
style puts a worked example before the question), ``--new`` new tokens (default 48, the issues'
budget), graded by ``check_answer`` (stated ``Answer: N``, else the last integer). Columns: accuracy
and the rate of stated ``Answer: N`` (greedy and one T=1 sample per problem), the mean number of new
tokens of the T=1 samples (the eos included) and the fraction of them that ran into the budget.

    python experiments/word_problem_levels.py [--n 200] [--levels 0 1 2 3 4 5] [--styles steps short direct oneshot]
        [--new 48] [--budgets 16 24 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CALIBRATION_SEED = 1000  # not an evaluation seed of any experiment


def chat_prompts(tok, probs, style: str = "steps") -> list[list[int]]:
    """Returns the chat-template prompt ids of each problem asked in ``style``."""
    return [tok.apply_chat_template(p.messages(style), add_generation_prompt=True) for p in probs]


def measure(model, tok, level: int, style: str = "steps", n: int = 200, new: int = 48, batch: int = 50,
            budgets=(), progress: bool = False) -> dict:
    """Returns {"greedy", "greedy_format", "t1", "t1_format", "t1_tokens", "t1_at_budget", "t1_cut", "seconds"} on
    ``n`` calibration problems of ``level`` asked in ``style`` (the T=1 keys are those of the original level table).

    ``t1_cut``: {k: T=1 accuracy of the same samples cut after k new tokens} for each k < ``new`` in
    ``budgets`` (what a smaller budget would have scored, without sampling again)."""
    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L
    from tokjax.data import check_answer, word_problems

    t0 = time.perf_counter()
    probs = word_problems(n, level, CALIBRATION_SEED)
    prompts = chat_prompts(tok, probs, style)
    res = {}
    for mode, transform in (("greedy", L.greedy()), ("t1", L.temperature(1.0))):
        ok, fmt, lengths, cut = [], [], [], {k: [] for k in budgets if k < new}
        for i in range(0, len(prompts), batch):
            out = tokjax.generate(model, prompts[i:i + batch], key=jax.random.key(level * 100 + i),
                                  max_new_tokens=new, logits=transform, eos_id=tok.eos_id)
            lengths += [len(c) for c in out.completions()]
            for k in cut:
                cut[k] += [check_answer(tok.decode(c[:k].tolist()), p.answer)[0]
                           for c, p in zip(out.completions(), probs[i:i + batch])]
            for text, p in zip(out.texts(tok), probs[i:i + batch]):
                c, f = check_answer(text, p.answer)
                ok.append(c)
                fmt.append(f)
            if progress:
                print(f"  level {level} {style} {mode}: {i + len(out.texts(tok))}/{n} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
        res[mode], res[mode + "_format"] = float(np.mean(ok)), float(np.mean(fmt))
        res[mode + "_tokens"], res[mode + "_at_budget"] = float(np.mean(lengths)), float(np.mean(np.array(lengths) >= new))
        if mode == "t1":
            res["t1_cut"] = {k: float(np.mean(v)) for k, v in cut.items()}
    res["seconds"] = time.perf_counter() - t0
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--styles", nargs="*", default=["steps"])
    parser.add_argument("--new", type=int, nargs="*", default=[48], help="new-token budgets to measure")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--budgets", type=int, nargs="*", default=[],
                        help="also grade the T=1 samples cut after each of these numbers of new tokens")
    args = parser.parse_args(argv)
    import numpy as np

    import tokjax
    from tokjax.data import word_problems
    from tokjax.data._word_problems import WORD_PROBLEM_STYLES

    bad = [s for s in args.styles if s not in WORD_PROBLEM_STYLES]
    if bad:
        parser.error(f"--styles: unknown {bad}; choose from {sorted(WORD_PROBLEM_STYLES)}")
    model, tok = tokjax.pretrained("smollm2-135m-instruct", progress=False)
    print("| level | style | new tokens | greedy accuracy | greedy 'Answer: N' | T=1 accuracy | T=1 'Answer: N' | "
          "T=1 mean tokens | T=1 at budget | mean answer | seconds |" + "".join(f" T=1 accuracy cut at {k} |" for k in args.budgets))
    print("|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(args.budgets))
    for level in args.levels:
        mean_answer = np.mean([p.answer for p in word_problems(args.n, level, CALIBRATION_SEED)])
        for style in args.styles:
            for new in args.new:
                r = measure(model, tok, level, style, args.n, new, args.batch, args.budgets, progress=True)
                print(f"| {level} | {style} | {new} | {r['greedy']:.3f} | {r['greedy_format']:.3f} | {r['t1']:.3f} | "
                      f"{r['t1_format']:.3f} | {r['t1_tokens']:.1f} | {r['t1_at_budget']:.2f} | {mean_answer:.1f} | "
                      f"{r['seconds']:.0f} |" + "".join(f" {r['t1_cut'][k]:.3f} |" if k in r["t1_cut"] else " - |"
                                                       for k in args.budgets), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
