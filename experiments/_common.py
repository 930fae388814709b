"""Setup helpers that several experiments share (so no experiment imports another).

* artefact cache: :func:`cached`, :func:`save_tree`, :func:`load_tree`, :func:`memo_run` (one finished training
  run's results, so a long full run killed half-way resumes where it stopped);
* the ``tiny-pydocs`` decoding set-up: :func:`load_setup`, :func:`load_target`, :func:`make_prompts`,
  :func:`task_prompts`;
* decoding benchmarks: :func:`compare_speed`, :func:`bench`, :func:`summarize`, :func:`fmt`,
  :func:`same_tokens`;
* completion tasks (prompt + answer windows with a loss mask): :func:`pad_to`,
  :func:`train_completion_model`.
"""

from __future__ import annotations

import time

PROMPT_LEN = 48


# ---------------------------------------------------------------------------- artefact cache
def cached(name: str):
    """Returns the path of an experiment artefact under ``$TOKJAX_CACHE/experiments`` (directory created)."""
    from tokjax._paths import cache_root

    d = cache_root() / "experiments"
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def memo_run(prefix: str, key: dict, compute) -> dict:
    """Returns ``compute()`` (a dict of arrays / numbers) from ``$TOKJAX_CACHE/experiments/<prefix>-<hash>.npz``
    when a run with the same ``key`` (a JSON-able dict: everything the result depends on) finished before, else
    computes it and writes it atomically (a killed run never leaves a half-written file)."""
    import hashlib
    import json
    import os

    import numpy as np

    text = json.dumps(key, sort_keys=True, default=str)
    path = cached(f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz")
    if path.exists():
        with np.load(path) as f:
            if str(f["__key__"]) == text:
                return {k: f[k] for k in f.files if k != "__key__"}
    out = compute()
    if not isinstance(out, dict) or "__key__" in out:
        raise ValueError("memo_run: compute() must return a dict of arrays without the key '__key__'")
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, __key__=np.array(text), **{k: np.asarray(v) for k, v in out.items()})
    os.replace(tmp, path)
    return {k: np.asarray(v) for k, v in out.items()}


def memo_json(prefix: str, key: dict, compute):
    """Returns ``compute()`` (nested dicts / lists of numbers and strings) cached like :func:`memo_run`, as JSON;
    dict keys that were ints come back as ints."""
    import json

    def revive(d):
        return {int(k) if k.lstrip("-").isdigit() else k: v for k, v in d.items()}

    def plain(o):  # numpy scalars and arrays
        return o.tolist() if hasattr(o, "tolist") else str(o)

    out = memo_run(prefix, key, lambda: {"json": json.dumps(compute(), default=plain)})
    return json.loads(str(out["json"]), object_hook=revive)


def save_tree(path, tree) -> None:
    """Returns None after writing the leaves of ``tree`` to ``path`` (.npz, in tree-flatten order)."""
    import jax
    import numpy as np

    np.savez(path, *[np.asarray(x) for x in jax.tree.leaves(tree)])


def load_tree(path, like):
    """Returns the tree saved by :func:`save_tree` at ``path``, with the structure of ``like``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    with np.load(path) as f:
        leaves = [jnp.asarray(f[f"arr_{i}"]) for i in range(len(f.files))]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


# ---------------------------------------------------------------------------- tiny-pydocs set-up
def load_setup(seq_len: int = 64):
    """Returns (model, tokenizer, TokenDataset of pydocs with the pretrained model's split)."""
    import tokjax
    from tokjax.data import TokenDataset, load_corpus, split_corpus

    model, tok = tokjax.pretrained("tiny-pydocs", progress=False)
    train_docs, val_docs = split_corpus(load_corpus("pydocs"), val_fraction=0.1, seed=0)
    return model, tok, TokenDataset.from_texts(train_docs, val_docs, tok, seq_len, name="pydocs")


def load_target():
    """Returns (model, tokenizer) of the tiny pretrained target."""
    import tokjax

    return tokjax.pretrained("tiny-pydocs")


def make_prompts(tok, kind: str, n: int, seed: int = 0, length: int = PROMPT_LEN) -> list[list[int]]:
    """Returns ``n`` prompts of about ``length`` tokens (ragged: lengths vary by up to 25%) of prose or code."""
    import numpy as np

    from tokjax.data import load_corpus, split_corpus

    if kind == "prose":
        _, docs = split_corpus(load_corpus("pydocs"), val_fraction=0.1, seed=0)
    else:
        docs = load_corpus("stdlib", max_bytes=400_000).documents
    rng = np.random.default_rng(seed)
    ids = [tok.encode(d) for d in docs]
    ids = [x for x in ids if len(x) > 2 * length]
    out = []
    for i in range(n):
        x = ids[rng.integers(len(ids))]
        cut = length - int(rng.integers(0, length // 4 + 1)) if n > 1 else length
        start = int(rng.integers(0, len(x) - length))
        out.append([int(t) for t in x[start:start + cut]])
    return out


def task_prompts(tok, task: str, n: int, length: int, seed: int = 0):
    """Returns int32 [n, length] prompts cut from the stdlib code ("code") or the docs prose ("prose")."""
    import numpy as np

    from tokjax.data import load_corpus

    corpus = load_corpus("stdlib", max_bytes=600_000) if task == "code" else load_corpus("pydocs")
    docs = [d for d in corpus.documents if len(d) > 8 * length + 200]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        d = docs[int(rng.integers(len(docs)))]
        s = int(rng.integers(0, len(d) - 8 * length))
        ids = tok.encode(d[s: s + 8 * length])
        if len(ids) >= length:
            out.append(ids[:length])
    return np.asarray(out, np.int32)


# ---------------------------------------------------------------------------- decoding benchmarks
def compare_speed(model, prompts, strategies: dict, new_tokens: int, reps: int):
    """Returns {name: (seconds per generate (min over reps), GenerateOutput)}; every strategy runs interleaved."""
    from experiments._harness import decode

    outs, best = {}, {}
    for name, strat in strategies.items():  # compile
        outs[name] = decode(model, prompts, max_new_tokens=new_tokens, strategy=strat)
        best[name] = float("inf")
    for _ in range(reps):
        for name, strat in strategies.items():
            t0 = time.perf_counter()
            decode(model, prompts, max_new_tokens=new_tokens, strategy=strat)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], outs[name]) for name in strategies}


def same_tokens(a, b) -> bool:
    """Returns whether two GenerateOutputs hold the same completions, row by row."""
    return [c.tolist() for c in a.completions()] == [c.tolist() for c in b.completions()]


def bench(model, methods: dict, prompts, batch: int, new_tokens: int, reps: int = 3, logits=None) -> dict:
    """Returns {name: {"tpc", "seconds", "tokens", "stats"}}: every method decodes ``prompts`` in batches of ``batch``.

    Each method is compiled by a first untimed pass; then ``reps`` timed passes run with the
    methods interleaved (machine load hits them alike) and the fastest pass counts.
    """
    import jax
    import numpy as np

    from experiments._harness import decode
    from tokjax import logits as L

    logits = L.greedy() if logits is None else logits
    chunks = [prompts[i: i + batch] for i in range(0, len(prompts), batch)]

    def one_pass(strategy):
        return [decode(model, c, max_new_tokens=new_tokens, logits=logits, key=jax.random.key(0), strategy=strategy)
                for c in chunks]

    res = {}
    for name, strategy in methods.items():
        outs = one_pass(strategy)
        calls = sum(o.stats["forward_calls"] * o.tokens.shape[0] for o in outs)
        gen = sum(o.stats["generated_tokens"] for o in outs)
        acc = [o.stats.get("position_acceptance") for o in outs]
        res[name] = {"tpc": gen / max(calls, 1), "seconds": float("inf"),
                     "tokens": np.concatenate([o.tokens for o in outs]), "pos_acc": np.mean([a for a in acc if a], axis=0).tolist() if any(acc) else None}
    for _ in range(reps):
        for name, strategy in methods.items():
            t0 = time.perf_counter()
            one_pass(strategy)
            res[name]["seconds"] = min(res[name]["seconds"], time.perf_counter() - t0)
    return res


def summarize(res: dict, base: str = "plain") -> dict:
    """Returns {name: (tokens per call, speedup over base, same tokens as base)}."""
    import numpy as np

    b = res[base]
    return {k: (v["tpc"], b["seconds"] / v["seconds"], bool(np.array_equal(v["tokens"], b["tokens"]))) for k, v in res.items()}


def fmt(summary: dict) -> str:
    """Returns 'name tpc/speedup' pairs for a note."""
    return ", ".join(f"{k} {t:.2f}tok/call {s:.2f}x" + ("" if same else " (MISMATCH)") for k, (t, s, same) in summary.items())


# ---------------------------------------------------------------------------- completion tasks
def pad_to(enc, width, pad_id):
    """Returns ``enc`` with its arrays right-padded to ``width`` tokens."""
    import numpy as np

    t, m = enc["tokens"], enc["mask"]
    extra = width - t.shape[1]
    return {**enc, "tokens": np.pad(t, ((0, 0), (0, extra)), constant_values=pad_id),
            "mask": np.pad(m, ((0, 0), (0, extra)), constant_values=False)}


def adam(lr: float, *, warmup: int = 0, end_lr: float | None = None) -> dict:
    """Returns ``train_model`` options for plain Adam (b2 0.999, no weight decay, no clipping) at ``lr``.

    Constant by default; with ``end_lr``, linear warmup over ``warmup`` steps then cosine decay to
    ``end_lr`` (optax's warmup_cosine_decay_schedule, as the experiments' former private loops used).
    """
    return dict(lr=lr, warmup_steps=warmup, min_lr_ratio=1.0 if end_lr is None else end_lr / lr, b2=0.999,
                weight_decay=0.0, grad_clip=None)


def sample_rows(data: dict, batch: int, seed: int):
    """Returns ``batch_fn(step)``: ``batch`` rows of every array in ``data`` drawn uniformly, a pure function of step."""
    import numpy as np

    n = len(next(iter(data.values())))

    def batch_fn(step: int) -> dict:
        idx = np.random.default_rng((seed, step)).integers(0, n, size=batch)
        return {k: v[idx] for k, v in data.items()}

    return batch_fn


def train_completion_model(enc_train, vocab_size, *, steps, seed, d_model=64, n_layers=2, batch=64, lr=3e-3):
    """Returns (params, cfg, final train loss) of a tiny tokjax transformer trained by ``tokjax.train`` on
    completion tokens: next-token loss under ``enc_train["mask"]``, AdamW (weight decay 0.01, b2 0.999),
    50 warmup steps then cosine decay to lr/10, gradient clipping at 1."""
    import tokjax
    from experiments._harness import train_model

    W = enc_train["tokens"].shape[1]
    cfg = tokjax.ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=4, max_len=W)
    data = {"tokens": enc_train["tokens"], "mask": enc_train["mask"]}
    model, hist = train_model(cfg, steps=steps, batch_fn=sample_rows(data, batch, seed), lr=lr, warmup_steps=50,
                              weight_decay=0.01, b2=0.999, grad_clip=1.0, seed=seed)
    return model.params, cfg, hist["train"][-1]["loss"]
