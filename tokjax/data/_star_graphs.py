"""Star-graph path finding (the planning task of P14 insertion LMs and P8 MLM-U), seeded and batched.

A model reads a graph as a shuffled list of directed edges plus a query (source, goal) and must
write the one path from the source to the goal. All the interesting choice sits at the centre,
where ``degree`` branches leave and only one reaches the goal: a left-to-right next-token model
that has not learnt to plan backwards from the goal guesses there (accuracy ~1/degree).

What the official code defines (read at the commits given; our code is written from scratch)
---------------------------------------------------------------------------------------------

**P14, ILM** - ``dhruvdcoder/xlm-core`` @ 51c781308678e8cdfab06f806552f1fd1249d186.

* ``src/xlm/commands/generate_star_graphs.py``: the three datasets, pre-generated with
  ``seed_everything_simple(42)`` (numpy global RNG + ``random``) and pushed to the HF hub as
  ``dhruveshpatel/star-small`` (easy), ``star-medium``, ``star-hard``; splits train 50 000,
  validation 100, test 5 000. The repo ships that *generator*; the hub data itself is not used
  here: we reproduce the generation rule (same distribution, not the same draws).

  preset   official generator                               degree  nodes per path  min plan  labels
  easy     SimpleStarGraphGenerator                         3       5               (centre)  20
  medium   AsymmetricVariableArmlengthStarGraphGenerator    3       U{3..6}         2         20
  hard     AsymmetricVariableArmlengthStarGraphGenerator    5       U{6..12}        5         56

* ``src/xlm/tasks/star/__init__.py``:

  - ``simple_star_graph(degree, pathlength, vocab_size)`` (adapted, per its comment, from
    ``gregorbachmann/Next-Token-Failures`` ``data/graphs.py``): the source *is* the centre; the
    gold path is ``pathlength`` nodes (source, ``pathlength-2`` inner nodes, goal); ``degree-1``
    distractor arms of ``pathlength-1`` further nodes each hang off the source. Edges point away
    from the centre. All labels are distinct draws from ``0..vocab_size-1`` (rejection sampling,
    i.e. a uniformly random injective labelling). ``random.shuffle(edge_list)`` over all edges.
    Its guard demands ``vocab_size >= pathlength*degree + 1`` although only
    ``degree*(pathlength-1) + 1`` labels are used (we require only the latter).
  - ``asymmetric_variable_armlength_star_graph(degree, min_pathlength, max_pathlength,
    vocab_size, min_plan_length)``: ``degree`` directed *paths*, path i of
    ``L_i ~ U{min_pathlength..max_pathlength}`` nodes, all passing through one shared centre
    node placed at index ``J_i ~ U{0..L_i - min_plan_length - 1}`` of path i (``np.random.randint``
    of ``L_i - min_plan_length``). So the centre can have incoming arms too, and the source is
    generally *upstream* of the centre, not the centre itself. Labels: ``sum(L) - degree + 1``
    distinct ids (``np.random.choice(..., replace=False)``). Source = first node of path 0, goal
    = its last node, gold path = all of path 0 (so at least ``min_plan_length`` nodes follow the
    centre). Edges shuffled. Its guards: ``vocab_size >= degree*(max_pathlength-1) + 1`` and
    ``min_plan_length <= min_pathlength`` (``min_plan_length == min_pathlength`` would crash in
    ``randint(0)``, so the working bound is ``min_pathlength - 1``, which we enforce).
  - ``preprocess_fn``: prompt tokens = the shuffled edges flattened (``u v u v ...``, no
    separators) then ``source goal``; target tokens = the gold path *as its edges* flattened
    (``s a a b b g`` for path ``s a b g``). Tokenizer ``SimpleSpaceTokenizer.for_numbers``: node
    ``k`` -> id ``k + 7`` after ``[PAD] [CLS] [MASK] [EOS] [BOS] [SEP] [UNK]``. The ILM collator
    (``xlm-models/ilm/datamodule_ilm.py``, ``ILMSeq2Seq*Collator``) lays a row out as
    ``[CLS] prompt [BOS] target``, prompt left-padded (no EOS: ILM stops with its stop head).
    Sizes (``xlm-models/ilm/configs/experiment/star_{easy,medium,hard}_ilm.yaml``):
    ``input_block_size`` 28/36/116 (prompt + [CLS] + [BOS]), ``block_size`` 14/16/28 (target).
  - Metric (``xlm-models/ilm/configs/model_type/ilm_stopping_seq2seq.yaml`` ->
    ``xlm.metrics.seq2seq_exact_match_update_fn`` / ``ExactMatch``): exact token match of the
    whole generated sequence with the (padded) gold; no "any valid path" credit.

**P8, MLM-U** - ``facebookresearch/maze_navigation_MLMU`` @ b1ec3cd8a8166feb4ae5ec978db7cd9c8bba6812.

* ``configs/dataset/stargraph.yaml``: ``degree 2, pathlen 5, num_nodes 50``, 200 000 train /
  20 000 val, model vocab 64. (No ``configs/exp/*`` uses it; the paper's runs are on mazes.)
  The notes' prototype (NOTES-losses.md, section 4 check 3) used 20 labels instead of 50.
* ``recipe/datasets/stargraph/gen_data.py::star_graph``: the same rule as ``simple_star_graph``
  (source = centre, ``degree-1`` distractor arms, ``random.shuffle`` of all edges). Written as
  Next-Token-Failures text ``a,b|c,d|.../s,g=s,x,y,g``; ``stargraph.py::clean_lines`` drops the
  commas and wraps each line as ``[bos] a b | c d | ... / s g = s x y g [eos]``; token ids come
  from a ``BasicTokenizer`` over the sorted set of strings. ``eval_fn``: prefix up to and
  including ``=``, greedy left-to-right, ``em`` = every suffix token (path and ``[eos]``) right.

What this module does
---------------------

One generator covers both rules: ``degree`` paths through a shared centre with
``L_i ~ U{lo..hi}`` nodes; ``min_plan_length=None`` puts the centre first on every path (the
source is the centre: ``simple_star_graph`` / P8), an int ``m`` draws the centre's index from
``U{0..L_i-m-1}`` (the asymmetric generator). The gold path is path 0, as in the official code
(paths are i.i.d., labels random and edges shuffled, so nothing marks it). Presets
(:data:`STAR_GRAPH_PRESETS`): ``easy``, ``medium``, ``hard`` as in the table, and ``mlmu``
(degree 2, 5 nodes, 50 labels: P8's config).

Vocabulary (:class:`StarGraphVocab`, size ``num_nodes + 6``): node ``k`` is token ``k``; then
``[pad]`` = N, ``[bos]`` = N+1, ``|`` = N+2 (edge separator), ``/`` = N+3 (query marker),
``=`` = N+4 (path start), ``[eos]`` = N+5, with N = ``num_nodes``. Two serialisations:

* ``format="nodes"`` (default; P8 / Next-Token-Failures, token for token):
  prompt ``[bos] a b | c d | ... | y z / s g =``, target ``s v1 ... g [eos]``.
* ``format="pairs"`` (xlm-core ``preprocess_fn``): prompt ``[bos] a b c d ... y z s g =``, target
  ``s v1 v1 v2 ... vk g [eos]``. Deviation: xlm-core's model collators add their own specials
  (ILM: ``[CLS]`` first, ``[BOS]`` between prompt and target, no EOS); here ``[bos]`` and ``=``
  play those roles and the target always ends in ``[eos]`` (an insertion LM with a stop head
  uses each row's first ``target_lengths - 1`` target tokens).

Arrays are right-padded to widths fixed by the parameters (not by the batch), so every batch
of a setting has the same shapes; for ``easy``/``mlmu`` every row is full.

Grading: :func:`check_path` is the official criterion, exact match of the written path (tokens
up to the first ``[eos]``/``[pad]``). :func:`is_valid_path` accepts any walk from the source
to the goal along the graph's directed edges; neither official repo grades that way, and on
these graphs (a directed tree) the two agree, which the tests check.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from tokjax.data._packing import check_int

__all__ = [
    "FORMATS",
    "STAR_GRAPH_PRESETS",
    "StarGraph",
    "StarGraphVocab",
    "StarGraphs",
    "check_path",
    "exact_path_match",
    "is_valid_path",
    "star_graphs",
]

FORMATS = ("nodes", "pairs")

#: difficulty -> (degree, (min, max) nodes per path, min_plan_length or None = source at centre, labels)
STAR_GRAPH_PRESETS: dict[str, dict[str, Any]] = {
    "easy": {"degree": 3, "path_length": (5, 5), "min_plan_length": None, "num_nodes": 20},
    "medium": {"degree": 3, "path_length": (3, 6), "min_plan_length": 2, "num_nodes": 20},
    "hard": {"degree": 5, "path_length": (6, 12), "min_plan_length": 5, "num_nodes": 56},
    "mlmu": {"degree": 2, "path_length": (5, 5), "min_plan_length": None, "num_nodes": 50},
}

_SPECIALS = ("[pad]", "[bos]", "|", "/", "=", "[eos]")


@dataclasses.dataclass(frozen=True)
class StarGraphVocab:
    """The token vocabulary of star graphs over ``num_nodes`` labels: nodes ``0..N-1``, then 6 specials.

    ``pad, bos, sep, query, path_start, eos`` = ``N .. N+5`` (strings ``[pad] [bos] | / = [eos]``).
    """

    num_nodes: int

    @property
    def pad(self) -> int:
        return self.num_nodes

    @property
    def bos(self) -> int:
        return self.num_nodes + 1

    @property
    def sep(self) -> int:
        return self.num_nodes + 2

    @property
    def query(self) -> int:
        return self.num_nodes + 3

    @property
    def path_start(self) -> int:
        return self.num_nodes + 4

    @property
    def eos(self) -> int:
        return self.num_nodes + 5

    @property
    def size(self) -> int:
        """Returns the vocabulary size ``num_nodes + 6``."""
        return self.num_nodes + len(_SPECIALS)

    def _check_ids(self, ids) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.ndim != 1:
            raise ValueError(f"token ids must be one sequence (1-D), got shape {arr.shape}")
        bad = (arr < 0) | (arr >= self.size)
        if bad.any():
            raise ValueError(f"token id {int(arr[bad][0])} is outside the vocabulary [0, {self.size})")
        return arr

    def decode(self, ids, *, skip_pad: bool = False) -> list[str]:
        """Returns the token strings of ``ids`` (node labels as decimals), pads dropped if ``skip_pad``."""
        arr = self._check_ids(ids)
        out = []
        for t in arr.tolist():
            if t < self.num_nodes:
                out.append(str(t))
            elif not (skip_pad and t == self.pad):
                out.append(_SPECIALS[t - self.num_nodes])
        return out

    def to_text(self, ids, *, skip_pad: bool = True) -> str:
        """Returns ``ids`` as space-separated tokens, e.g. ``"[bos] 3 7 | 3 9 / 3 9 ="`` (pads dropped)."""
        return " ".join(self.decode(ids, skip_pad=skip_pad))

    def encode(self, text) -> np.ndarray:
        """Returns int32 ids of ``text`` (a string of space-separated tokens, or a list of token strings).

        The inverse of :meth:`to_text` / :meth:`decode`. Raises ValueError on an unknown token.
        """
        tokens = text.split() if isinstance(text, str) else list(text)
        out = []
        for tok in tokens:
            if tok in _SPECIALS:
                out.append(self.num_nodes + _SPECIALS.index(tok))
            elif isinstance(tok, str) and tok.isdigit() and int(tok) < self.num_nodes:
                out.append(int(tok))
            else:
                raise ValueError(f"unknown star-graph token {tok!r} (nodes are 0..{self.num_nodes - 1}, "
                                 f"specials {' '.join(_SPECIALS)})")
        return np.asarray(out, dtype=np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class StarGraph:
    """One star-graph example (from ``graphs[i]``).

    Attributes:
      edges: the directed edges ``(u, v)`` in their shuffled order.
      source, goal, centre: node labels (``source == centre`` when ``min_plan_length`` is None).
      path: the gold path, ``source .. goal``.
      prompt, target: int32 token ids, unpadded (``target`` ends with ``[eos]``).
      format: ``"nodes"`` or ``"pairs"``; vocab: the :class:`StarGraphVocab`.
    """

    edges: tuple[tuple[int, int], ...]
    source: int
    goal: int
    centre: int
    path: tuple[int, ...]
    prompt: np.ndarray
    target: np.ndarray
    format: str
    vocab: StarGraphVocab


@dataclasses.dataclass(frozen=True, eq=False)
class StarGraphs:
    """A batch of ``n`` star graphs and their token serialisation (see the module docstring).

    Attributes:
      degree, path_length (min, max nodes per path), min_plan_length (None: source at the
      centre), num_nodes (labels), format, vocab: the setting.
      edges: int32 ``[n, E, 2]``, shuffled, ``-1`` past ``num_edges``; ``E = degree*(max-1)``.
      num_edges: int32 ``[n]`` (``sum of path lengths - degree``).
      source, goal, centre: int32 ``[n]``.
      path: int32 ``[n, max]`` gold path, ``-1`` past ``path_lengths``; path_lengths: int32 ``[n]``.
      prompt: int32 ``[n, P]``, ``[pad]`` past ``prompt_lengths``.
      target: int32 ``[n, T]``, ``[pad]`` past ``target_lengths`` (which count the ``[eos]``).
    """

    degree: int
    path_length: tuple[int, int]
    min_plan_length: int | None
    num_nodes: int
    format: str
    vocab: StarGraphVocab
    edges: np.ndarray
    num_edges: np.ndarray
    source: np.ndarray
    goal: np.ndarray
    centre: np.ndarray
    path: np.ndarray
    path_lengths: np.ndarray
    prompt: np.ndarray
    prompt_lengths: np.ndarray
    target: np.ndarray
    target_lengths: np.ndarray

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def __getitem__(self, i: int) -> StarGraph:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"example {i} out of range for {n} star graphs")
        ne, pl = int(self.num_edges[i]), int(self.path_lengths[i])
        return StarGraph(
            edges=tuple((int(u), int(v)) for u, v in self.edges[i, :ne].tolist()),
            source=int(self.source[i]), goal=int(self.goal[i]), centre=int(self.centre[i]),
            path=tuple(int(x) for x in self.path[i, :pl].tolist()),
            prompt=self.prompt[i, : int(self.prompt_lengths[i])].copy(),
            target=self.target[i, : int(self.target_lengths[i])].copy(),
            format=self.format, vocab=self.vocab,
        )

    def lm_batch(self) -> dict[str, np.ndarray]:
        """Returns ``{"tokens", "prompt_lengths", "lengths"}``: prompt then target, right-padded.

        ``tokens`` int32 ``[n, P + T]``; the keys are those of ``tokjax.losses`` next-token batches,
        so the loss counts only the target tokens (the path and its ``[eos]``).
        """
        n, P = self.prompt.shape
        T = self.target.shape[1]
        tokens = np.full((n, P + T), self.vocab.pad, dtype=np.int32)
        tokens[:, :P] = self.prompt
        cols = self.prompt_lengths[:, None] + np.arange(T)[None, :]
        np.put_along_axis(tokens, cols, self.target, axis=1)
        lengths = self.prompt_lengths + self.target_lengths
        tokens[np.arange(P + T)[None, :] >= lengths[:, None]] = self.vocab.pad
        return {"tokens": tokens, "prompt_lengths": self.prompt_lengths.copy(), "lengths": lengths.astype(np.int32)}


def _resolve(difficulty, degree, path_length, min_plan_length, num_nodes):
    if difficulty is None:
        base: dict[str, Any] = {"degree": None, "path_length": None, "min_plan_length": None, "num_nodes": None}
    elif isinstance(difficulty, str) and difficulty in STAR_GRAPH_PRESETS:
        base = dict(STAR_GRAPH_PRESETS[difficulty])
    else:
        raise ValueError(f"unknown difficulty {difficulty!r}; expected one of {sorted(STAR_GRAPH_PRESETS)} "
                         "or None with explicit degree, path_length and num_nodes")
    for key, val in (("degree", degree), ("path_length", path_length), ("min_plan_length", min_plan_length),
                     ("num_nodes", num_nodes)):
        if val is not None:
            base[key] = val
    for key in ("degree", "path_length", "num_nodes"):
        if base[key] is None:
            raise ValueError(f"{key} is required when difficulty is None")

    degree = check_int("degree", base["degree"], 0)
    if degree < 2:
        raise ValueError(f"degree must be >= 2 (a star needs a choice between arms), got {degree}")
    pl = base["path_length"]
    if isinstance(pl, Sequence) and not isinstance(pl, str):
        if len(pl) != 2:
            raise ValueError(f"path_length must be an int or a (min, max) pair, got {pl!r}")
        lo, hi = check_int("path_length min", pl[0], 0), check_int("path_length max", pl[1], 0)
    else:
        lo = hi = check_int("path_length", pl, 0)
    if lo < 2:
        raise ValueError(f"path_length (nodes per path, centre included) must be >= 2, got {lo}")
    if hi < lo:
        raise ValueError(f"path_length (min, max) must have min <= max, got ({lo}, {hi})")
    mpl = base["min_plan_length"]
    if mpl is not None:
        mpl = check_int("min_plan_length", mpl, 0)
        if not 1 <= mpl <= lo - 1:
            raise ValueError(f"min_plan_length must be in [1, min path_length - 1] = [1, {lo - 1}] "
                             f"(or None for the source at the centre), got {mpl}")
    num_nodes = check_int("num_nodes", base["num_nodes"], 0)
    need = degree * (hi - 1) + 1
    if num_nodes < need:
        raise ValueError(f"num_nodes={num_nodes} is too small: degree * (max path_length - 1) + 1 = "
                         f"{degree} * {hi - 1} + 1 = {need} distinct node labels are needed")
    if num_nodes + len(_SPECIALS) > np.iinfo(np.int32).max:
        raise ValueError(f"num_nodes must fit int32 token ids, got {num_nodes}")
    return degree, lo, hi, mpl, num_nodes


def star_graphs(
    n: int,
    *,
    difficulty: str | None = "easy",
    degree: int | None = None,
    path_length: int | tuple[int, int] | None = None,
    num_nodes: int | None = None,
    min_plan_length: int | None = None,
    format: str = "nodes",
    seed: int = 0,
) -> StarGraphs:
    """Returns :class:`StarGraphs`: ``n`` seeded star-graph path-finding problems with their tokens.

    ``difficulty`` picks a preset of :data:`STAR_GRAPH_PRESETS` (``easy``/``medium``/``hard``: the
    ILM repo's, ``mlmu``: P8's); any of ``degree`` (branches at the centre), ``path_length``
    (nodes per path, centre included: an int or a ``(min, max)`` range), ``num_nodes`` (label
    count) and ``min_plan_length`` (nodes the gold path must have after the centre; the preset's
    None means the source is the centre) given explicitly overrides the preset. With
    ``difficulty=None`` give ``degree``, ``path_length`` and ``num_nodes``. (``min_plan_length=None``
    keeps the preset's value; for the source at the centre start from ``easy`` or ``mlmu``.)
    A pure function of its arguments (numpy ``default_rng([seed, ...])``, host side; the graphs
    do not depend on ``format``); labels are a fresh random injective map per graph and edges a
    fresh uniform shuffle.

    Raises:
      ValueError: unknown difficulty or format, ``n < 0``, ``degree < 2``, ``path_length < 2`` or
        min > max, ``min_plan_length`` outside ``[1, min path_length - 1]``, or
        ``num_nodes < degree * (max path_length - 1) + 1``.
    """
    n = check_int("n", n, 0)
    seed = check_int("seed", seed, 0)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    degree, lo, hi, mpl, num_nodes = _resolve(difficulty, degree, path_length, min_plan_length, num_nodes)
    vocab = StarGraphVocab(num_nodes)
    rng = np.random.default_rng([seed, degree, lo, hi, 0 if mpl is None else mpl + 1, num_nodes])

    # --- graph: `degree` paths of L[b, i] nodes through one centre at index J[b, i] ---------------
    L = rng.integers(lo, hi + 1, size=(n, degree))
    J = np.zeros_like(L) if mpl is None else rng.integers(0, L - mpl)
    k_max = degree * (hi - 1) + 1
    labels = np.argsort(rng.random((n, num_nodes)), axis=1)[:, :k_max]  # uniform distinct labels
    p = np.arange(hi)
    off = np.cumsum(L - 1, axis=1) - (L - 1)  # first non-centre slot of each path
    slot = 1 + off[..., None] + np.where(p < J[..., None], p, p - 1)
    valid = p < L[..., None]
    slot = np.where(p == J[..., None], 0, np.where(valid, slot, 0))
    paths = np.take_along_axis(labels, slot.reshape(n, degree * hi), axis=1).reshape(n, degree, hi)
    paths = np.where(valid, paths, -1).astype(np.int32)

    E = degree * (hi - 1)
    all_edges = np.stack([paths[:, :, :-1], paths[:, :, 1:]], axis=-1).reshape(n, E, 2)
    edge_ok = (p[:-1] < (L - 1)[..., None]).reshape(n, E)
    order = np.argsort(np.where(edge_ok, rng.random((n, E)), 2.0), axis=1, kind="stable")
    edges = np.take_along_axis(all_edges, order[..., None], axis=1)
    num_edges = edge_ok.sum(axis=1).astype(np.int32)
    edges[np.arange(E)[None, :] >= num_edges[:, None]] = -1

    rows = np.arange(n)
    path = paths[:, 0, :].copy()
    path_lengths = L[:, 0].astype(np.int32)
    source = path[:, 0].copy()
    goal = path[rows, path_lengths - 1] if n else np.zeros(0, np.int32)
    centre = labels[:, 0].astype(np.int32)

    # --- tokens ------------------------------------------------------------------------------------
    if format == "nodes":
        block = np.concatenate([edges, np.full((n, E, 1), vocab.sep, np.int32)], axis=2).reshape(n, 3 * E)
        body = 3 * num_edges - 1  # the last edge has no separator after it
        tail = np.stack([np.full(n, vocab.query), source, goal, np.full(n, vocab.path_start)], axis=1)
        target = np.concatenate([path, np.full((n, 1), vocab.pad, np.int32)], axis=1)
        t_body = path_lengths
    else:
        block = edges.reshape(n, 2 * E)
        body = 2 * num_edges
        tail = np.stack([source, goal, np.full(n, vocab.path_start)], axis=1)
        pairs = np.stack([path[:, :-1], path[:, 1:]], axis=-1).reshape(n, 2 * (hi - 1))
        target = np.concatenate([pairs, np.full((n, 1), vocab.pad, np.int32)], axis=1)
        t_body = 2 * (path_lengths - 1)
    P = 1 + block.shape[1] + tail.shape[1] - (1 if format == "nodes" else 0)
    prompt = np.full((n, P), vocab.pad, dtype=np.int32)
    prompt[:, 0] = vocab.bos
    prompt[:, 1:1 + block.shape[1]] = block
    prompt_lengths = (1 + body + tail.shape[1]).astype(np.int32)
    prompt[np.arange(P)[None, :] >= (1 + body)[:, None]] = vocab.pad
    np.put_along_axis(prompt, (1 + body)[:, None] + np.arange(tail.shape[1])[None, :], tail.astype(np.int32), axis=1)

    T = target.shape[1]
    target[np.arange(T)[None, :] >= t_body[:, None]] = vocab.pad
    target[rows, t_body] = vocab.eos
    target_lengths = (t_body + 1).astype(np.int32)

    out = dict(edges=edges.astype(np.int32), num_edges=num_edges, source=source.astype(np.int32),
               goal=np.asarray(goal, np.int32), centre=centre, path=path, path_lengths=path_lengths,
               prompt=prompt, prompt_lengths=prompt_lengths, target=target.astype(np.int32),
               target_lengths=target_lengths)
    for arr in out.values():
        arr.setflags(write=False)
    return StarGraphs(degree=degree, path_length=(lo, hi), min_plan_length=mpl, num_nodes=num_nodes,
                      format=format, vocab=vocab, **out)


def exact_path_match(target, target_lengths, predicted, eos_id: int, pad_id: int):
    """Returns bool ``[n]``: row i's ``predicted`` tokens up to its first ``[eos]``/``[pad]`` equal the gold.

    Pure and jit-compatible. ``target`` int ``[n, T]`` with ``target[i, target_lengths[i]-1] ==
    eos_id``; ``predicted`` int ``[n, T']`` (a completion after the prompt). Row i is right iff
    ``predicted[i, :tl-1] == target[i, :tl-1]`` and ``predicted[i, tl-1]`` is ``[eos]``, ``[pad]`` or
    past the end (``tl = target_lengths[i]``); what follows is ignored. This is the official
    exact-match criterion (xlm-core ``ExactMatch``, P8 ``eval_fn`` ``em``).
    """
    target = jnp.asarray(target)
    predicted = jnp.asarray(predicted)
    tl = jnp.asarray(target_lengths)
    n, T = target.shape
    Tp = predicted.shape[1]
    if Tp < T:
        predicted = jnp.concatenate([predicted, jnp.full((n, T - Tp), pad_id, predicted.dtype)], axis=1)
    else:
        predicted = predicted[:, :T]
    pos = jnp.arange(T)[None, :]
    body_ok = jnp.all((predicted == target) | (pos >= tl[:, None] - 1), axis=1)
    last = jnp.take_along_axis(predicted, (tl - 1)[:, None], axis=1)[:, 0]
    return body_ok & ((last == eos_id) | (last == pad_id))


def _cut(vocab: StarGraphVocab, predicted) -> list[int]:
    ids = vocab._check_ids(predicted).tolist()
    for k, t in enumerate(ids):
        if t in (vocab.eos, vocab.pad):
            return ids[:k]
    return ids


def check_path(graph: StarGraph | StarGraphs, predicted):
    """Returns whether ``predicted`` is exactly the gold path (the official exact-match criterion).

    ``graph`` a :class:`StarGraph` with ``predicted`` a 1-D sequence of token ids -> bool; or a
    :class:`StarGraphs` batch with ``predicted`` int ``[n, T']`` -> bool ``[n]`` (numpy; the
    jit-compatible core is :func:`exact_path_match`). The prediction is read up to its first
    ``[eos]``/``[pad]`` and compared with the gold target tokens of the graph's format (node ids
    ``s .. g`` for ``"nodes"``, edge pairs for ``"pairs"``).

    Raises:
      ValueError: a wrong shape or a token id outside the vocabulary.
    """
    if isinstance(graph, StarGraph):
        return _cut(graph.vocab, predicted) == graph.target[:-1].tolist()
    if not isinstance(graph, StarGraphs):
        raise ValueError(f"graph must be a StarGraph or StarGraphs, got {type(graph).__name__}")
    pred = np.asarray(predicted)
    if pred.ndim != 2 or pred.shape[0] != len(graph):
        raise ValueError(f"predicted must be [n={len(graph)}, length], got shape {pred.shape}")
    if pred.size and not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"predicted must hold integer token ids, got dtype {pred.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() >= graph.vocab.size):
        raise ValueError(f"predicted holds ids outside the vocabulary [0, {graph.vocab.size})")
    if pred.shape[1] == 0:
        pred = np.full((len(graph), 1), graph.vocab.pad, np.int32)
    return np.asarray(exact_path_match(graph.target, graph.target_lengths, pred.astype(np.int32),
                                       graph.vocab.eos, graph.vocab.pad))


def _nodes_of(graph: StarGraph, ids: list[int]) -> list[int] | None:
    if any(t >= graph.vocab.num_nodes for t in ids):
        return None
    if graph.format == "nodes":
        return ids
    if len(ids) < 2 or len(ids) % 2:
        return None
    pairs = [ids[k:k + 2] for k in range(0, len(ids), 2)]
    if any(a[1] != b[0] for a, b in zip(pairs[:-1], pairs[1:])):
        return None
    return [pairs[0][0]] + [b for _, b in pairs]


def is_valid_path(graph: StarGraph | StarGraphs, predicted):
    """Returns whether ``predicted`` walks from the source to the goal along the graph's directed edges.

    Not the official criterion (both repos grade by :func:`check_path`); on a star graph, a
    directed tree, the only such walk is the gold path, so the two agree. ``predicted`` is read
    up to its first ``[eos]``/``[pad]``; for ``"pairs"`` the edge pairs must chain
    (``a b b c ...``). A :class:`StarGraphs` batch with ``[n, T']`` gives bool ``[n]``.
    """
    if isinstance(graph, StarGraphs):
        pred = np.asarray(predicted)
        if pred.ndim != 2 or pred.shape[0] != len(graph):
            raise ValueError(f"predicted must be [n={len(graph)}, length], got shape {pred.shape}")
        return np.array([is_valid_path(graph[i], pred[i]) for i in range(len(graph))], dtype=bool)
    if not isinstance(graph, StarGraph):
        raise ValueError(f"graph must be a StarGraph or StarGraphs, got {type(graph).__name__}")
    nodes = _nodes_of(graph, _cut(graph.vocab, predicted))
    if not nodes or nodes[0] != graph.source or nodes[-1] != graph.goal or len(set(nodes)) != len(nodes):
        return False
    edge_set = set(graph.edges)
    return all((a, b) in edge_set for a, b in zip(nodes[:-1], nodes[1:]))
