"""Order-k Markov sources over letters with an exactly known entropy rate."""

from __future__ import annotations

import bisect
import operator
import string

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["MarkovSource", "markov_source", "empirical_conditional_entropy"]

_LETTERS = string.ascii_lowercase


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    """Returns the entropy in bits of each row of ``p`` (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


class MarkovSource:
    """A stationary order-``k`` Markov chain over the letters ``'a'..``.

    The state is the last ``order`` letters, encoded base ``alphabet_size``
    with the oldest letter most significant: state ``s`` of context
    ``c_1..c_k`` is ``sum(c_i * A**(k - i))``.  ``transitions[s, c]`` is
    ``P(next = c | state s)``; order 0 has the single state 0.
    """

    def __init__(self, transitions: np.ndarray, order: int):
        t = np.asarray(transitions, dtype=np.float64)
        order = check_int("order", order, 0)
        if t.ndim != 2:
            raise ValueError(f"transitions must be 2-D, got shape {t.shape}")
        a = t.shape[1]
        if not 1 <= a <= len(_LETTERS):
            raise ValueError(f"alphabet_size must be in [1, {len(_LETTERS)}], got {a}")
        if t.shape[0] != a**order:
            raise ValueError(
                f"transitions must have alphabet_size**order = {a**order} rows, got {t.shape[0]}"
            )
        if np.any(t < 0) or not np.allclose(t.sum(axis=1), 1.0, atol=1e-9):
            raise ValueError("each row of transitions must be a probability distribution")
        self.transitions = t / t.sum(axis=1, keepdims=True)
        self.order = order
        self.alphabet_size = a
        self.alphabet = _LETTERS[:a]
        self._stationary: np.ndarray | None = None

    @property
    def num_states(self) -> int:
        """Returns the number of context states, ``alphabet_size ** order``."""
        return self.alphabet_size**self.order

    def _step(self, pi: np.ndarray) -> np.ndarray:
        """Returns the state distribution one letter after ``pi``."""
        a, k = self.alphabet_size, self.order
        if k == 0:
            return pi
        rest = a ** (k - 1)
        # joint[c1, s_rest, c] = pi[c1, s_rest] * P(c | c1 s_rest); new state = s_rest * a + c.
        joint = pi.reshape(a, rest)[:, :, None] * self.transitions.reshape(a, rest, a)
        return joint.sum(axis=0).reshape(-1)

    def stationary(self, *, tol: float = 1e-13, max_iter: int = 200_000) -> np.ndarray:
        """Returns the stationary distribution over the ``alphabet_size**order`` states.

        Computed by power iteration on the lazy chain ``(I + T) / 2`` (same
        fixed point, always aperiodic) from the uniform distribution.  For a
        reducible chain this is the limit from that start, one of several.
        """
        if self._stationary is not None:
            return self._stationary
        pi = np.full(self.num_states, 1.0 / self.num_states)
        tol = max(tol, 4e-16 * self.num_states)  # rounding noise floor of the L1 change
        for _ in range(max_iter):
            new = 0.5 * (pi + self._step(pi))
            new /= new.sum()
            if np.abs(new - pi).sum() < tol:
                pi = new
                break
            pi = new
        self._stationary = pi
        return pi

    def entropy_rate(self) -> float:
        """Returns the exact entropy rate in bits per letter, ``sum_s pi(s) H(P(.|s))``."""
        return float(np.dot(self.stationary(), _entropy_bits(self.transitions)))

    def sample(self, n_chars: int, rng: np.random.Generator | int | None = None) -> str:
        """Returns a stationary sample of ``n_chars`` letters.

        The first ``order`` letters are drawn from the stationary distribution
        of contexts, the rest from the transitions.  ``rng`` is a
        ``np.random.Generator`` or a seed.
        """
        n_chars = check_int("n_chars", n_chars, 0)
        rng = _as_rng(rng)
        a, k = self.alphabet_size, self.order
        if n_chars == 0:
            return ""
        pi = self.stationary()
        cdf_pi = np.cumsum(pi)
        state = min(int(np.searchsorted(cdf_pi, rng.random() * cdf_pi[-1], side="right")), len(pi) - 1)
        ctx = []
        s = state
        for _ in range(k):
            ctx.append(s % a)
            s //= a
        out = ctx[::-1][:n_chars]
        remaining = n_chars - len(out)
        if remaining <= 0:
            return "".join(self.alphabet[c] for c in out)
        cdfs = np.cumsum(self.transitions, axis=1)
        cdfs[:, -1] = np.inf  # guard against rounding at the top
        cdf_rows = cdfs.tolist()
        us = rng.random(remaining).tolist()
        mod = a ** (k - 1) if k > 0 else 1
        letters = self.alphabet
        chars = [letters[c] for c in out]
        bis = bisect.bisect_right
        for u in us:
            c = bis(cdf_rows[state], u)
            chars.append(letters[c])
            state = (state % mod) * a + c if k > 0 else 0
        return "".join(chars)

    def encode(self, text: str) -> np.ndarray:
        """Returns the letters of ``text`` as int64 indices into ``alphabet``."""
        idx = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("a")
        if idx.size and (idx.min() < 0 or idx.max() >= self.alphabet_size):
            raise ValueError(f"text has letters outside {self.alphabet!r}")
        return idx

    def nll_bits(self, text: str) -> float:
        """Returns the mean ``-log2 P(letter | previous order letters)`` over ``text[order:]``.

        For a long sample this approaches :meth:`entropy_rate`; it is the loss
        (in bits per letter) of the Bayes-optimal predictor.
        """
        x = self.encode(text)
        k, a = self.order, self.alphabet_size
        if x.size <= k:
            raise ValueError(f"text needs more than order={k} letters")
        states = _context_states(x, k, a)
        p = self.transitions[states, x[k:]]
        return float(-np.log2(p).mean())

    def __repr__(self) -> str:
        return f"MarkovSource(order={self.order}, alphabet_size={self.alphabet_size})"


def _context_states(x: np.ndarray, k: int, a: int) -> np.ndarray:
    """Returns the context state index before each position ``k..len(x)-1``."""
    n = x.size - k
    states = np.zeros(n, dtype=np.int64)
    for i in range(k):
        states = states * a + x[i : i + n]
    return states


def empirical_conditional_entropy(text: str, order: int, alphabet_size: int) -> float:
    """Returns the plug-in estimate of ``H(X_t | previous order letters)`` in bits."""
    x = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("a")
    k, a = operator.index(order), operator.index(alphabet_size)
    if x.size <= k:
        raise ValueError(f"text needs more than order={k} letters")
    states = _context_states(x, k, a)
    counts = np.bincount(states * a + x[k:], minlength=a**k * a).reshape(a**k, a).astype(np.float64)
    tot = counts.sum()
    row = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(counts > 0, counts / np.where(row > 0, row, 1.0), 1.0)
    return float(-(counts / tot * np.log2(cond)).sum())


def markov_source(
    order: int,
    alphabet_size: int,
    seed: int = 0,
    concentration: float = 1.0,
) -> MarkovSource:
    """Returns a random :class:`MarkovSource` with Dirichlet(concentration) transition rows.

    Small ``concentration`` (e.g. 0.1) gives peaked, low-entropy rows; large
    values approach the uniform source (entropy ``log2(alphabet_size)``).

    Raises:
      ValueError: ``order < 0``, ``alphabet_size`` outside [1, 26],
        ``concentration <= 0`` or more than 2**20 context states.
    """
    order = operator.index(order)
    alphabet_size = operator.index(alphabet_size)
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    if not 1 <= alphabet_size <= len(_LETTERS):
        raise ValueError(f"alphabet_size must be in [1, {len(_LETTERS)}], got {alphabet_size}")
    concentration = float(concentration)
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    if alphabet_size**order > 2**20:
        raise ValueError(f"alphabet_size**order = {alphabet_size**order} states is too many (max 2**20)")
    rng = np.random.default_rng(seed)
    # Dirichlet via normalised Gamma draws; floor tiny values so no row is all zero.
    g = rng.gamma(concentration, size=(alphabet_size**order, alphabet_size))
    g = np.maximum(g, 1e-300)
    t = g / g.sum(axis=1, keepdims=True)
    return MarkovSource(t, order)
