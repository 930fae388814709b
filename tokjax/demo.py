"""The five-minute tour of tokjax on SmolLM2-135M-Instruct (``tokjax demo``, ``make demo``).

Four sections, each timed: (a) a chat answer streamed as it is generated; (b) a code-editing
prompt decoded with plain greedy, speculative prompt lookup and Token Recycling (identical tokens,
tokens per target call, measured speed-up); (c) one passage scored with cut cross-entropy and with
materialised logits (same loss, the [T, V] logits it never builds); (d) the paper catalog and where
to go next. Every section is a function of (model, tokenizer, sizes), so tests run them on a tiny
model; :class:`ChatSession` is also what ``tokjax chat`` runs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import tokjax
from tokjax import logits as L
from tokjax.decoding import drafts, speculative, verify
from tokjax.tokenizers import TextStreamer

MODEL = "smollm2-135m-instruct"
# Prompts are padded up to a multiple of this, so every chat turn (and every demo prompt) in the
# same bucket reuses one compiled decode step instead of compiling per prompt length.
BUCKET = 128

CHAT_QUESTION = "Why is the sky blue? Answer in two sentences."

# Code editing: the answer copies most of the prompt, which is what prompt lookup and Token
# Recycling exploit. Written inline (a stdlib function would change with the Python version).
CODE = '''def word_counts(path, min_length=3):
    counts = {}
    with open(path) as handle:
        for line in handle:
            for word in line.split():
                word = word.lower()
                if len(word) < min_length:
                    continue
                if word in counts:
                    counts[word] += 1
                else:
                    counts[word] = 1
    return counts
'''
CODE_PROMPT = "Add type hints to this function:\n\n```python\n" + CODE + "```"

def passage() -> str:
    """Returns the text section (c) scores: CPython's help on the with and try statements (bundled with Python)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in ("with", "try", "exceptions") if k in topics)


def pad_prompt(
    ids: Sequence[int], capacity: int, bucket: int = BUCKET, pad_id: int = 0
) -> tuple[np.ndarray, list[int]]:
    """Returns ([1, P] int32 prompt padded to a multiple of ``bucket``, [len(ids)]); P + room stays within capacity."""
    n = len(ids)
    if n == 0:
        raise ValueError("the prompt is empty")
    width = min(-(-n // bucket) * bucket, max(capacity, n))
    buf = np.full((1, width), pad_id, np.int32)
    buf[0, :n] = np.asarray(ids, np.int32)
    return buf, [n]


def stream_reply(
    model, tok, ids: Sequence[int], *, logits, max_new_tokens: int, key: jax.Array | None = None,
    strategy=None,
) -> Iterator[str]:
    """Yields the text of the continuation of ``ids`` piece by piece as it is generated (stops at eos).

    ``logits`` / ``key`` / ``strategy`` as in :func:`tokjax.stream`; the prompt is padded to a
    :data:`BUCKET` multiple so prompts of similar length share one compiled step.
    """
    if len(ids) + max_new_tokens > model.cfg.max_len:
        raise ValueError(
            f"the prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of "
            f"{model.cfg.max_len} tokens"
        )
    prompt, lengths = pad_prompt(ids, model.cfg.max_len - max_new_tokens, pad_id=tok.pad_id or 0)
    streamer = TextStreamer(tok)
    for step in tokjax.stream(model, prompt, prompt_lengths=lengths, key=key, max_new_tokens=max_new_tokens,
                              logits=logits, strategy=strategy, eos_id=tok.eos_id, pad_id=tok.pad_id or 0):
        piece = streamer.push(step[0])
        if piece:
            yield piece
    tail = streamer.flush()
    if tail:
        yield tail


class ChatSession:
    """A multi-turn conversation: the message history, and replies streamed from a chat-template model."""

    def __init__(self, model, tok, *, logits=None, max_new_tokens: int = 256, system: str | None = None,
                 key: jax.Array | None = None):
        if not callable(getattr(tok, "apply_chat_template", None)) or getattr(tok, "chat_template", None) is None:
            raise ValueError(f"chat needs a tokenizer with a chat template; {type(tok).__name__} has none "
                             "(use an instruction-tuned model such as smollm2-135m-instruct)")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        self.model, self.tok = model, tok
        self.logits = L.greedy() if logits is None else logits
        self.max_new_tokens = max_new_tokens
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[dict[str, str]] = []
        self.key = jax.random.key(0) if key is None else key

    def _prompt(self) -> list[int]:
        # Oldest exchanges are dropped (never the system message or the new question) when the
        # conversation outgrows the context; the reply's budget is never cut.
        # The history is only shortened once the new message is known to fit.
        room = self.model.cfg.max_len - self.max_new_tokens
        turns = self.turns
        while True:
            ids = self.tok.apply_chat_template(self.system + turns, add_generation_prompt=True)
            if len(ids) <= room or len(turns) <= 1:
                break
            turns = turns[2:]
        if len(ids) > room:
            raise ValueError(f"the message is {len(ids)} tokens with the chat template; with max_new_tokens="
                             f"{self.max_new_tokens} at most {room} fit the model's context")
        self.turns = turns
        return ids

    def reply(self, text: str) -> Iterator[str]:
        """Yields the assistant's answer to ``text`` in pieces as it is generated, then records it in the history."""
        self.turns.append({"role": "user", "content": text})
        try:
            ids = self._prompt()
        except ValueError:
            self.turns.pop()
            raise
        self.key, sub = jax.random.split(self.key)
        pieces = []
        for piece in stream_reply(self.model, self.tok, ids, logits=self.logits, max_new_tokens=self.max_new_tokens,
                                  key=sub):
            pieces.append(piece)
            yield piece
        self.turns.append({"role": "assistant", "content": "".join(pieces)})


@contextlib.contextmanager
def section(title: str, timings: dict[str, float], say: Callable[[str], None] = print):
    """Prints a header, runs the block, prints and records how long it took."""
    say(f"\n=== {title} ===")
    t0 = time.perf_counter()
    yield
    timings[title] = time.perf_counter() - t0
    say(f"[{title}: {timings[title]:.1f} s]")


def chat_section(model, tok, question: str = CHAT_QUESTION, max_new_tokens: int = 48,
                 write: Callable[[str], None] | None = None) -> str:
    """Streams a greedy chat answer to ``question`` through ``write`` (stdout) and returns it."""
    write = write or (lambda s: print(s, end="", flush=True))
    write(f"user> {question}\nassistant> ")
    session = ChatSession(model, tok, logits=L.greedy(), max_new_tokens=max_new_tokens)
    answer = "".join(write(p) or p for p in session.reply(question))
    write("\n")
    return answer


def _timed(model, prompt, lengths, strategy, max_new_tokens: int, eos_id, repeats: int):
    """Returns (output, best wall seconds over ``repeats`` runs after one warm-up run that compiles)."""
    def run():
        out = tokjax.generate(model, prompt, prompt_lengths=lengths, max_new_tokens=max_new_tokens,
                              logits=L.greedy(), strategy=strategy, eos_id=eos_id)
        jax.block_until_ready(out.tokens)
        return out

    run()  # compile; each speculative run starts cold (Token Recycling's table is rebuilt per run)
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return out, best


def speculative_section(model, tok, ids: Sequence[int], max_new_tokens: int = 96, repeats: int = 2,
                        say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Decodes ``ids`` with greedy, prompt lookup and Token Recycling; asserts identical tokens; returns per method
    {tokens_per_call, seconds, tokens_per_s, speedup, generated}."""
    if len(ids) + max_new_tokens > model.cfg.max_len:
        raise ValueError(f"prompt ({len(ids)}) + max_new_tokens ({max_new_tokens}) exceeds max_len {model.cfg.max_len}")
    prompt, lengths = pad_prompt(ids, model.cfg.max_len - max_new_tokens, pad_id=tok.pad_id or 0)
    methods = {
        "greedy": None,
        "prompt lookup (3-gram, 8 drafts)": speculative(
            drafts.prompt_lookup(max_ngram=3, num_draft=8), verify.greedy()),
        # The paper's 80-node tree pays on a GPU; on a 2-core CPU a 14-node tree is the better trade.
        "Token Recycling (14-node tree)": speculative(drafts.recycling(template="small"), verify.greedy()),
    }
    results: dict[str, dict[str, Any]] = {}
    base = None
    for name, strategy in methods.items():
        out, secs = _timed(model, prompt, lengths, strategy, max_new_tokens, tok.eos_id, repeats)
        completion = out.completions()[0]
        if base is None:
            base = (completion, secs)
            say("greedy answer:\n" + tok.decode(completion.tolist()).rstrip())
        identical = bool(np.array_equal(completion, base[0]))
        if not identical:  # lossless by construction; a mismatch is a bug worth stopping the tour for
            raise AssertionError(f"{name} produced different tokens than greedy")
        n = len(completion)
        results[name] = {
            "tokens_per_call": float(out.stats["tokens_per_call"]), "seconds": secs, "tokens_per_s": n / secs,
            "speedup": base[1] / secs, "generated": n, "identical": identical, "completion": completion.tolist(),
        }
    say(f"\n{'method':34s} {'identical':>9s} {'tok/call':>8s} {'tok/s':>7s} {'speed-up':>8s}")
    for name, r in results.items():
        say(f"{name:34s} {'yes' if r['identical'] else 'NO':>9s} {r['tokens_per_call']:8.2f} {r['tokens_per_s']:7.1f} "
            f"{r['speedup']:7.2f}x")
    say(f"({results['greedy']['generated']} new tokens, batch 1, best of {repeats} after a warm-up compile)")
    return results


def int8_section(model, tok, ids: Sequence[int], greedy: dict[str, Any], max_new_tokens: int = 96, repeats: int = 2,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Decodes ``ids`` greedily with int8 weights (``tokjax.model.quant``) and compares with the float32 greedy run
    ``greedy`` (speculative_section's "greedy" row): returns {seconds, tokens_per_s, speedup, same_fraction,
    first_divergence, quantize_s}."""
    from tokjax.model.quant import quantize_int8

    t0 = time.perf_counter()
    qmodel = quantize_int8(model)
    jax.block_until_ready(jax.tree.leaves(qmodel.params))
    quantize_s = time.perf_counter() - t0
    prompt, lengths = pad_prompt(ids, model.cfg.max_len - max_new_tokens, pad_id=tok.pad_id or 0)
    out, secs = _timed(qmodel, prompt, lengths, None, max_new_tokens, tok.eos_id, repeats)
    got, ref = out.completions()[0], np.asarray(greedy["completion"])
    n = min(len(got), len(ref))
    diff = np.flatnonzero(got[:n] != ref[:n])
    first = int(diff[0]) if diff.size else (None if len(got) == len(ref) else n)
    r = {"seconds": secs, "tokens_per_s": len(got) / secs, "speedup": greedy["seconds"] / secs * len(got) / max(
        greedy["generated"], 1), "same_fraction": float(np.mean(got[:n] == ref[:n])) if n else 1.0,
        "first_divergence": first, "quantize_s": quantize_s}
    say(f"{'int8 weights (per-32 scales)':34s} {'same' if first is None else f'from {first}':>9s} {'':>8s} "
        f"{r['tokens_per_s']:7.1f} {r['speedup']:7.2f}x")
    say("(int8: a quarter of the weight bytes per decode step; not lossless, so its tokens may drift from "
        f"float32's; quantized in {quantize_s:.1f} s)")
    return r


def _scratch_bytes(compiled) -> int | None:
    """Returns XLA's temp-buffer size of a compiled function, None where the backend does not report it."""
    mem = compiled.memory_analysis()
    return None if mem is None else getattr(mem, "temp_size_in_bytes", None)


def loss_section(model, tok, text: str | None = None, max_tokens: int = 1024,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores a passage with cut and naive cross-entropy; returns both losses and the loss head's memory.

    The loss is the whole model's (``next_token_loss`` with ``method="cut"`` / ``"naive"``). The
    memory is the loss head's alone (hidden states and head matrix in, mean loss out): what cut
    cross-entropy changes, measured as XLA's scratch buffers of each compiled head next to the
    [T, V] float32 logits and the [T, block] tile it streams them in.
    """
    from tokjax.losses import DEFAULT_BLOCK_SIZE, cross_entropy, cut_cross_entropy, next_token_loss
    from tokjax.model.forward import forward, lm_head

    ids = tok.encode(passage() if text is None else text)[: min(max_tokens, model.cfg.max_len) + 1]
    if len(ids) < 2:
        raise ValueError("the passage needs at least two tokens")
    cfg = model.cfg
    tokens = jnp.asarray([ids], jnp.int32)
    losses = {}
    for m in ("cut", "naive"):
        loss_fn = jax.jit(lambda p, b, m=m: next_token_loss(p, cfg, b, method=m)[0])
        losses[m] = float(loss_fn(model.params, {"tokens": tokens}))

    hidden = jax.jit(lambda p, x: forward(p, cfg, x, compute_logits=False).hidden[0])(model.params, tokens[:, :-1])
    head = jnp.asarray(lm_head(model.params, cfg))  # [D, V], materialised once outside the measured heads
    labels = tokens[0, 1:]
    scratch, head_loss = {}, {}
    for name, fn in (("cut", cut_cross_entropy), ("naive", cross_entropy)):
        compiled = jax.jit(lambda h, w, y, fn=fn: fn(h, w, y)).lower(hidden, head, labels).compile()
        head_loss[name] = float(compiled(hidden, head, labels))
        scratch[name] = _scratch_bytes(compiled)

    T, V = len(ids) - 1, cfg.vocab_size
    block = min(DEFAULT_BLOCK_SIZE, V)
    logits_bytes, block_bytes = T * V * 4, T * block * 4
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    say(f"passage: {T} predicted tokens (CPython's help on with/try), vocabulary {V:,}")
    diff = abs(losses["cut"] - losses["naive"])
    say(f"loss  cut {losses['cut']:.6f}   naive {losses['naive']:.6f}   |diff| {diff:.1e}"
        f"   (perplexity {math.exp(losses['cut']):.2f})")
    say(f"logits cut never builds: [T, V] float32 = {mib(logits_bytes)}; it streams [T, {block}] tiles = "
        f"{mib(block_bytes)} ({logits_bytes / block_bytes:.0f}x less)")
    if scratch["cut"] and scratch["naive"]:
        say(f"measured scratch memory of the compiled loss head: cut {mib(scratch['cut'])}, naive "
            f"{mib(scratch['naive'])} ({scratch['naive'] / scratch['cut']:.0f}x less)")
    return {"cut": losses["cut"], "naive": losses["naive"], "head_cut": head_loss["cut"],
            "head_naive": head_loss["naive"], "tokens": T, "logits_bytes": logits_bytes, "block_bytes": block_bytes,
            "scratch_cut": scratch["cut"], "scratch_naive": scratch["naive"]}


def catalog_section(say: Callable[[str], None] = print) -> dict[str, int]:
    """Prints the paper catalog's status counts and where to go next; returns the counts."""
    from tokjax import catalog

    counts = catalog.summary()
    say(f"{sum(counts.values())} papers: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    say("next:  make test          the test suite (fast subset; make test-all for everything)\n"
        "       make reproduce     every implemented paper's quick experiment -> experiments/RESULTS-quick.md\n"
        "       tokjax chat        talk to SmolLM2-135M-Instruct (--temperature, --top-p, --greedy)\n"
        "       tokjax catalog     the full table;  docs/ for each family (decoding, losses, tokenizers, ...)")
    return counts


def run_tour(quick: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the four sections on SmolLM2-135M-Instruct; returns their results and per-section seconds."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    results: dict[str, Any] = {"timings": timings}
    with section("loading SmolLM2-135M-Instruct (GGUF, Q4_1 -> float32)", timings, say):
        model, tok = tokjax.pretrained(MODEL, progress=True)
        say(f"{model.num_params():,} parameters, {model.cfg.n_layers} layers, vocabulary {model.cfg.vocab_size:,}")
    with section("(a) chat: a streamed answer (greedy)", timings, say):
        results["chat"] = chat_section(model, tok, max_new_tokens=8 if quick else 48)
    with section("(b) code editing: greedy vs speculative decoding (lossless) and int8 weights", timings, say):
        ids = tok.apply_chat_template([{"role": "user", "content": CODE_PROMPT}], add_generation_prompt=True)
        say("user> " + CODE_PROMPT.replace("\n", "\n      "))
        results["speculative"] = speculative_section(model, tok, ids, max_new_tokens=16 if quick else 96,
                                                     repeats=1 if quick else 2, say=say)
        results["int8"] = int8_section(model, tok, ids, results["speculative"]["greedy"],
                                       max_new_tokens=16 if quick else 96, repeats=1 if quick else 2, say=say)
    with section("(c) scoring a passage: cut cross-entropy vs materialised logits", timings, say):
        results["loss"] = loss_section(model, tok, max_tokens=64 if quick else 1024, say=say)
    with section("(d) the catalog and where to go next", timings, say):
        results["catalog"] = catalog_section(say)
    total = time.perf_counter() - t0
    results["total_s"] = total
    say("\n" + "  ".join(f"{k.split(':')[0].split(' (')[0]} {v:.0f}s" for k, v in timings.items()))
    say(f"tour finished in {total:.0f} s")
    return results
