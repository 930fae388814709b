"""P11 exact byte-level probabilities vs naive tokenization on prompts that end inside a token (SmolLM2).

Paper ("Exact Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles", ICLR
2025; official code facebookresearch/Exact-Byte-Level-Probabilities-from-Tokenized-LMs): a tokenized LM defines
a distribution over bytes that the Byte-Token Representation lemma recovers exactly; conditioning on bytes
instead of on the tokenization of the prompt removes the prompt-boundary bias, which gives ~18% on fill-in-
the-middle coding benchmarks and lets models with different vocabularies be ensembled (up to 3.7%).

Setting: ``tokjax.pretrained("smollm2-135m-instruct")`` as a plain LM (no chat template; the byte string follows
the bos token). Text: lines of the bundled pydoc topics (stdlib documentation), at least 40 bytes long. Each
prompt is a line cut at a random byte that lies strictly inside a token of the line's canonical encoding (the
case the paper is about: a cursor in the middle of a word); the target is the line's next byte.

Claims, rules declared before anything runs ("seeds" = three independent draws of lines and cut points, seeds
0, 1, 2; ``N_PROMPTS`` prompts per draw, one draw of ``QUICK_PROMPTS`` with --quick):

* ``mid-token-next-byte`` (``RULE``): top-1 accuracy of the next byte, exact (``byte_logprobs``) minus naive
  (``naive_byte_logprobs``: tokenize the prompt, group next tokens by their first byte), above 5 points on every
  draw. Also reported: mean log-probability of the true byte under each.
* ``ensemble`` (paper: up to 3.7% from byte-level ensembles of models with different vocabularies;
  ``ENSEMBLE_RULE``): bits per byte of SmolLM2-135M-Instruct (49152 ids), of ``tokjax.pretrained("tiny-pydocs")``
  (1024-id BPE, ~1M params) and of their equal-weight byte-level ensemble, p(b | x) = (p_1(b | x) + p_2(b | x)) / 2
  (the average of the two exact next-byte distributions, each from ``byte_conditionals``), on passages of
  ``PASSAGE_BYTES`` bytes from tiny-pydocs's held-out split (``split_corpus(load_corpus("pydocs"),
  val_fraction=0.1, seed=0)``, the split it was trained with; passages start at a random line of a random
  validation document). Claim reproduced if the ensemble's bits per byte lie below the better single model's on
  every draw (threshold 0; draws = seeds 0, 1, 2 with ``N_PASSAGES`` passages each, one draw of
  ``QUICK_PASSAGES`` with --quick). A paired bootstrap over passages (ensemble minus the better model) is
  reported in the note.
* ``fim`` and ``fim-vs-healing`` (paper: ~18% on fill-in-the-middle benchmarks; ``FIM_RULE`` / ``HEALING_RULE``):
  code completion from a cursor inside a token, prefix only (no suffix: the prompt-boundary effect the paper's FIM
  gain rests on). Lines of Python standard-library source (``STDLIB_MODULES``, read with ``inspect.getsource``;
  stripped line >= 24 bytes, not a comment, line and context ASCII), the cursor at a random byte strictly inside a
  token, 4-40 bytes before the line end and >= 4 bytes into the stripped line; the prompt is the ``CONTEXT_BYTES``
  bytes of the file before the line plus the line up to the cursor. Three greedy arms complete the line:
  byte-level (``byte_generate(..., stop=b"\n")``, at most 48 bytes), naive token-level (``tokjax.generate`` on the
  prompt's tokens, stop string "\n", at most 32 tokens) and token healing (``token_healing``: back off the last
  prompt token, the best token extending it, then the same generate). Metric: exact match of the rest of the line
  (%). ``fim`` reproduced if byte-level minus naive exceeds 5 points on every draw; ``fim-vs-healing`` if
  byte-level exceeds healing (threshold 0) on every draw; draws = seeds 0, 1, 2 with ``N_COMPLETIONS`` cursors
  each, one draw of ``QUICK_COMPLETIONS`` with --quick.

Quick vs full: --quick runs one draw of each claim with fewer prompts / passages / cursors; full mode runs three
draws of every claim (the ensemble arm ~24 passages, roughly 10 CPU-minutes; the mid-token arm 180 byte_logprobs
calls; the completion arm 90 cursors, byte_generate at ~12 bytes per second on SmolLM2 after its compiles).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p11_exact_byte_probs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="next-byte top-1 accuracy on prompts cut inside a token (percentage points)",
            higher_is_better=True, threshold=5.0, seeds=(0, 1, 2),
            reported="exact byte_logprobs vs naive_byte_logprobs, no tuning; 3 draws of lines and cut points")
MODEL = "smollm2-135m-instruct"
N_PROMPTS, QUICK_PROMPTS = 30, 8
MIN_LINE = 40
ENSEMBLE_RULE = Rule(metric="bits per byte on tiny-pydocs validation passages (lower is better)",
                     higher_is_better=False, threshold=0.0, seeds=(0, 1, 2),
                     reported="equal-weight (0.5/0.5) probability average of the two exact byte distributions, "
                              "fixed in advance; baseline = the better single model on each draw")
FIM_RULE = Rule(metric="exact match of the rest of the line from a cursor inside a token (percentage points)",
                higher_is_better=True, threshold=5.0, seeds=(0, 1, 2),
                reported="byte_generate (exact byte-level greedy) vs naive token-level greedy, no tuning")
HEALING_RULE = Rule(metric="exact match of the rest of the line from a cursor inside a token (percentage points)",
                    higher_is_better=True, threshold=0.0, seeds=(0, 1, 2),
                    reported="byte_generate (exact byte-level greedy) vs token healing (one token backed off), "
                             "no tuning")
STDLIB_MODULES = ("argparse", "bisect", "calendar", "configparser", "csv", "dataclasses", "difflib", "fnmatch",
                  "fractions", "functools", "glob", "heapq", "json.encoder", "pathlib", "pprint", "shlex",
                  "statistics", "string", "textwrap", "tokenize")
CONTEXT_BYTES = 600
N_COMPLETIONS, QUICK_COMPLETIONS = 30, 8
TINY = "tiny-pydocs"
PASSAGE_BYTES = 64
N_PASSAGES, QUICK_PASSAGES = 8, 2


def lines() -> list[str]:
    """Returns the pydoc-topic lines of at least MIN_LINE ASCII bytes, in a fixed order."""
    import pydoc_data.topics

    out = []
    for key in sorted(pydoc_data.topics.topics):
        for line in pydoc_data.topics.topics[key].splitlines():
            line = line.strip()
            if len(line) >= MIN_LINE and line.isascii():
                out.append(line)
    return out


def mid_token_cuts(tok, pool: list[str], n: int, seed: int) -> list[tuple[bytes, int]]:
    """Returns n (prefix bytes, true next byte) pairs: a random line cut strictly inside one of its tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        line = pool[int(rng.integers(len(pool)))]
        ends, pos = [], 0
        for t in tok.encode(line):
            pos += len(tok.decode([t]).encode("utf-8"))
            ends.append(pos)
        starts = [0] + ends[:-1]
        inside = [c for s, e in zip(starts, ends) for c in range(s + 1, e) if c >= 8]
        if not inside:
            continue
        cut = int(rng.choice(inside))
        data = line.encode("utf-8")
        out.append((data[:cut], data[cut]))
    return out


def passages(n: int, seed: int) -> list[bytes]:
    """Returns n ASCII passages of PASSAGE_BYTES bytes from tiny-pydocs's validation documents, each starting at a
    random line start (the pydocs split of tokjax.pretrained's tiny-pydocs config: val_fraction 0.1, seed 0)."""
    import numpy as np

    from tokjax.data import load_corpus, split_corpus

    _, val = split_corpus(load_corpus("pydocs"), val_fraction=0.1, seed=0)
    rng = np.random.default_rng(1000 + seed)
    out = []
    while len(out) < n:
        doc = val[int(rng.integers(len(val)))].encode("utf-8")
        starts = [0] + [i + 1 for i in range(len(doc) - 1) if doc[i] == 10 and doc[i + 1] != 10]
        starts = [s for s in starts if s + PASSAGE_BYTES <= len(doc)]
        if not starts:
            continue
        s = starts[int(rng.integers(len(starts)))]
        piece = doc[s:s + PASSAGE_BYTES]
        if piece.isascii() and piece not in out:
            out.append(piece)
    return out


def paired_bootstrap(diffs, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Returns the 95% percentile interval of the mean of ``diffs`` over bootstrap resamples."""
    import numpy as np

    d = np.asarray(diffs, np.float64)
    idx = np.random.default_rng(seed).integers(len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def ensemble_row(quick: bool, smol, smol_tok) -> Row:
    """The ``ensemble`` claim: bits per byte of each model and of their equal-weight byte-level ensemble."""
    import time

    import numpy as np

    import tokjax
    from tokjax.tokenizers.exact_byte_probs import byte_conditionals

    tiny, tiny_tok = tokjax.pretrained(TINY, progress=False)
    seeds = ENSEMBLE_RULE.run_seeds(quick)
    n = QUICK_PASSAGES if quick else N_PASSAGES
    bpb = {"smol": [], "tiny": [], "ens": []}
    per_passage = []  # (ensemble - better single) bits per byte, every passage of every draw
    t0 = time.perf_counter()
    for s in seeds:
        draw = {k: [] for k in bpb}  # bits per byte of each passage
        for x in passages(n, s):
            target = np.frombuffer(x, np.uint8)
            lp = {}
            for name, (m, t) in (("smol", (smol, smol_tok)), ("tiny", (tiny, tiny_tok))):
                lp[name] = byte_conditionals(m, t, x)[np.arange(len(x)), target]
            lp["ens"] = np.logaddexp(lp["smol"], lp["tiny"]) + np.log(0.5)
            for k in draw:
                draw[k].append(-float(lp[k].sum()) / np.log(2) / len(x))
        for k in bpb:
            bpb[k].append(float(np.mean(draw[k])))
        best = min(("smol", "tiny"), key=lambda k: bpb[k][-1])
        per_passage += [e - b for e, b in zip(draw["ens"], draw[best])]
        print(f"draw {s}: bits per byte SmolLM2 {bpb['smol'][-1]:.3f} tiny-pydocs {bpb['tiny'][-1]:.3f} ensemble "
              f"{bpb['ens'][-1]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    best_runs = [min(a, b) for a, b in zip(bpb["smol"], bpb["tiny"])]
    lo, hi = paired_bootstrap(per_passage)
    mean = lambda xs: round(float(np.mean(xs)), 3)  # noqa: E731
    return Row(
        pid="P11", claim_id="ensemble",
        claim="byte-level ensembles of models with different vocabularies beat each model (up to 3.7%)",
        setting=f"SmolLM2-135M-Instruct (49152 ids) + tiny-pydocs (1024 ids), equal weights; {len(seeds)} draw(s) x "
                f"{n} passages of {PASSAGE_BYTES} bytes from tiny-pydocs's validation split; exact byte conditionals",
        baseline_name="the better single model per draw", baseline_value=mean(best_runs), method_value=mean(bpb["ens"]),
        metric="bits per byte (lower is better)",
        verdict=ENSEMBLE_RULE.verdict(bpb["ens"], best_runs, seeds=seeds),
        note=f"SmolLM2 {mean(bpb['smol'])}, tiny-pydocs {mean(bpb['tiny'])}, ensemble {mean(bpb['ens'])} bits/byte; "
             f"ensemble - better model per passage: 95% paired bootstrap [{lo:.3f}, {hi:.3f}] over "
             f"{len(per_passage)} passages; per draw ensemble " + "/".join(f"{a:.3f}" for a in bpb["ens"])
             + ", better single " + "/".join(f"{a:.3f}" for a in best_runs))


def completion_cursors(tok, n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Returns n (prompt bytes, rest of the line) pairs from STDLIB_MODULES' source: a code line cut at a random
    byte strictly inside one of its tokens (tokenized in its file context), CONTEXT_BYTES of the file before."""
    import importlib
    import inspect

    import numpy as np

    files = [inspect.getsource(importlib.import_module(m)).encode("utf-8") for m in STDLIB_MODULES]
    rng = np.random.default_rng(2000 + seed)
    out: list[tuple[bytes, bytes]] = []
    while len(out) < n:
        src = files[int(rng.integers(len(files)))]
        starts = [0] + [i + 1 for i in range(len(src)) if src[i] == 10]
        k = int(rng.integers(len(starts) - 1))
        a, b = starts[k], starts[k + 1] - 1  # the line is src[a:b], src[b] == "\n"
        line = src[a:b]
        body = line.lstrip()
        if len(body) < 24 or body.startswith(b"#") or a < CONTEXT_BYTES or not src[a - CONTEXT_BYTES:b].isascii():
            continue
        indent = len(line) - len(body)
        ends, pos = [], 0
        for t in tok.encode(line.decode("ascii")):
            pos += len(tok.decode([t]).encode("utf-8"))
            ends.append(pos)
        inside = [c for s0, e in zip([0] + ends[:-1], ends) for c in range(s0 + 1, e)
                  if c >= indent + 4 and 4 <= len(line) - c <= 40]
        if not inside:
            continue
        cut = int(rng.choice(inside))
        pair = (src[a - CONTEXT_BYTES:a] + line[:cut], line[cut:])
        if pair not in out:
            out.append(pair)
    return out


def completion_rows(quick: bool, model, tok) -> list[Row]:
    """The ``fim`` and ``fim-vs-healing`` claims: exact match of greedy line completions from a cursor inside a
    token, byte-level vs naive token-level vs token healing."""
    import time

    import numpy as np

    import tokjax
    from tokjax.logits import greedy
    from tokjax.tokenizers import byte_generate, token_healing

    def first_line(data: bytes) -> bytes:
        return data.split(b"\n", 1)[0]

    def tokens_then_generate(prompts_ids: list[list[int]]) -> list[bytes]:
        out = tokjax.generate(model, prompts_ids, max_new_tokens=32, logits=greedy(), stop=["\n"], tokenizer=tok,
                              eos_id=tok.eos_id)
        texts = []
        for row, ids in enumerate(prompts_ids):
            new = [int(t) for t in np.asarray(out.tokens[row, len(ids):int(out.lengths[row])])]
            texts.append(tok.decode(ids[1:] + new).encode("utf-8"))
        return texts

    seeds = FIM_RULE.run_seeds(quick)
    n = QUICK_COMPLETIONS if quick else N_COMPLETIONS
    em = {"byte": [], "naive": [], "healing": []}
    t0 = time.perf_counter()
    byte_s = byte_n = 0.0
    for s in seeds:
        pairs = completion_cursors(tok, n, s)
        hits = {k: [] for k in em}
        naive = tokens_then_generate([[tok.bos_id] + tok.encode(p.decode("ascii")) for p, _ in pairs])
        healed = tokens_then_generate([token_healing(model, tok, p) for p, _ in pairs])
        for (p, rest), nv, hl in zip(pairs, naive, healed):
            t1 = time.perf_counter()
            bg = byte_generate(model, tok, p, 48, stop=b"\n")
            byte_s, byte_n = byte_s + time.perf_counter() - t1, byte_n + len(bg) - len(p)
            for k, full in (("byte", bg), ("naive", nv), ("healing", hl)):
                hits[k].append(int(full.startswith(p) and first_line(full[len(p):]) == rest))
        for k in em:
            em[k].append(100.0 * float(np.mean(hits[k])))
        print(f"completion draw {s}: exact match byte {em['byte'][-1]:.1f} naive {em['naive'][-1]:.1f} healing "
              f"{em['healing'][-1]:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    mean = lambda xs: round(float(np.mean(xs)), 2)  # noqa: E731
    draws = {k: "/".join(f"{a:.1f}" for a in v) for k, v in em.items()}
    per_draw = f"; per draw byte {draws['byte']}, naive {draws['naive']}, healing {draws['healing']}"
    setting = (f"SmolLM2-135M-Instruct as a plain LM, {len(seeds)} draw(s) x {n} Python stdlib source lines, cursor "
               f"strictly inside a token 4-40 bytes before the line end, {CONTEXT_BYTES} bytes of file context, "
               "prefix only (no suffix), greedy to the line end")
    claim = "byte-level decoding improves fill-in-the-middle code completion (~18%)"
    rate = f"byte_generate {byte_n / max(byte_s, 1e-9):.1f} bytes/s wall (compiles included)"
    return [
        Row(pid="P11", claim_id="fim", claim=claim, setting=setting,
            baseline_name="naive: token-level greedy on the prompt's tokens", baseline_value=mean(em["naive"]),
            method_value=mean(em["byte"]), metric="line exact match % (higher is better)",
            verdict=FIM_RULE.verdict(em["byte"], em["naive"], seeds=seeds),
            note=f"token healing {mean(em['healing'])}{per_draw}; {rate}"),
        Row(pid="P11", claim_id="fim-vs-healing", claim=claim + ", beyond token healing", setting=setting,
            baseline_name="token healing: last prompt token backed off, best token extending it",
            baseline_value=mean(em["healing"]), method_value=mean(em["byte"]),
            metric="line exact match % (higher is better)",
            verdict=HEALING_RULE.verdict(em["byte"], em["healing"], seeds=seeds),
            note=f"naive {mean(em['naive'])}{per_draw}"),
    ]


def mid_token_row(quick: bool, model, tok) -> Row:
    """The ``mid-token-next-byte`` claim: next-byte top-1 accuracy, exact vs naive, at a cursor inside a token."""
    import time

    import numpy as np

    from tokjax.tokenizers import byte_logprobs, naive_byte_logprobs

    pool = lines()
    seeds = RULE.run_seeds(quick)
    n = QUICK_PROMPTS if quick else N_PROMPTS
    acc = {"exact": [], "naive": []}
    logp = {"exact": [], "naive": []}
    exact_s, exact_calls = 0.0, 0  # the per-call rate of byte_logprobs, printed
    t0 = time.perf_counter()
    for s in seeds:
        hits = {"exact": [], "naive": []}
        lps = {"exact": [], "naive": []}
        for prefix, target in mid_token_cuts(tok, pool, n, s):
            for name, fn in (("exact", byte_logprobs), ("naive", naive_byte_logprobs)):
                t1 = time.process_time()  # CPU time: the rate does not depend on the machine's load
                lp = fn(model, tok, prefix)
                if name == "exact":
                    exact_s, exact_calls = exact_s + time.process_time() - t1, exact_calls + 1
                hits[name].append(int(np.argmax(lp[:256]) == target))
                lps[name].append(float(max(lp[target], -50.0)))  # naive gives -inf to some true bytes
        for name in acc:
            acc[name].append(100.0 * float(np.mean(hits[name])))
            logp[name].append(float(np.mean(lps[name])))
        print(f"draw {s}: accuracy exact {acc['exact'][-1]:.1f} naive {acc['naive'][-1]:.1f}; mean log p(true byte) "
              f"exact {logp['exact'][-1]:.3f} naive {logp['naive'][-1]:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    mean = lambda xs: round(float(np.mean(xs)), 2)  # noqa: E731
    print(f"byte_logprobs: {exact_calls / exact_s:.2f} calls per CPU-second", flush=True)
    setting = (f"SmolLM2-135M-Instruct as a plain LM, {len(seeds)} draw(s) x {n} pydoc-topic lines cut at a random byte "
               "inside a token (>= 8 bytes in); next byte of the line")
    return Row(pid="P11", claim_id="mid-token-next-byte",
            claim="exact byte-level probabilities remove the prompt-boundary bias of tokenized prompts (the mechanism "
                  "behind the paper's FIM gains)",
            setting=setting, baseline_name="naive: tokenize the prompt, group next tokens by first byte",
            baseline_value=mean(acc["naive"]), method_value=mean(acc["exact"]),
            metric="next-byte top-1 accuracy % (higher is better)",
            verdict=RULE.verdict(acc["exact"], acc["naive"], seeds=seeds),
            note=f"mean log p(true byte) exact {mean(logp['exact'])} vs naive {mean(logp['naive'])} "
                 "(naive -inf clipped at -50); per draw exact " + "/".join(f"{a:.1f}" for a in acc["exact"])
                 + ", naive " + "/".join(f"{a:.1f}" for a in acc["naive"]))


def run(quick: bool, only: frozenset | None = None) -> list[Row]:
    import tokjax

    model, tok = tokjax.pretrained(MODEL, progress=False)
    want = lambda *ids: only is None or bool(only & set(ids))  # noqa: E731
    rows = [mid_token_row(quick, model, tok)] if want("mid-token-next-byte") else []
    rows += [ensemble_row(quick, model, tok)] if want("ensemble") else []
    rows += [r for r in completion_rows(quick, model, tok) if only is None or r.claim_id in only] \
        if want("fim", "fim-vs-healing") else []
    return rows


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
