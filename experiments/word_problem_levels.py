"""SmolLM2-135M-Instruct's accuracy on tokjax.data.word_problems per level (greedy and T=1).

The RL, preference and routing experiments (issues 19, 21, 22) train on the level whose T=1
accuracy lies in 20-70 %; this script measures it first, on problems of a calibration seed that the
experiments do not use for evaluation. Chat template, ``--new`` new tokens (default 48, the issues'
budget), graded by ``check_answer`` (stated ``Answer: N``, else the last integer).

    python experiments/word_problem_levels.py [--n 200] [--levels 1 2 3 4 5] [--new 48]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CALIBRATION_SEED = 1000  # not an evaluation seed of any experiment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--new", type=int, default=48)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args(argv)
    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L
    from tokjax.data import check_answer, word_problems

    model, tok = tokjax.pretrained("smollm2-135m-instruct", progress=False)
    print(f"| level | greedy accuracy | T=1 accuracy | T=1 'Answer: N' format | mean answer | seconds |")
    print("|---|---|---|---|---|---|")
    for level in args.levels:
        t0 = time.perf_counter()
        probs = word_problems(args.n, level, CALIBRATION_SEED)
        prompts = [tok.apply_chat_template([{"role": "user", "content": p.prompt()}], add_generation_prompt=True)
                   for p in probs]
        res = {}
        for mode, transform in (("greedy", L.greedy()), ("t1", L.temperature(1.0))):
            ok, fmt = [], []
            for i in range(0, len(prompts), args.batch):
                out = tokjax.generate(model, prompts[i:i + args.batch], key=jax.random.key(level * 100 + i),
                                      max_new_tokens=args.new, logits=transform, eos_id=tok.eos_id)
                for text, p in zip(out.texts(tok), probs[i:i + args.batch]):
                    c, f = check_answer(text, p.answer)
                    ok.append(c)
                    fmt.append(f)
            res[mode] = (float(np.mean(ok)), float(np.mean(fmt)))
        print(f"| {level} | {res['greedy'][0]:.3f} | {res['t1'][0]:.3f} | {res['t1'][1]:.3f} | "
              f"{np.mean([p.answer for p in probs]):.1f} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
