"""Checks and normalises what a caller hands ``generate`` / ``stream``: the prompt and the key.

The decode loop reads prompts in one layout: ``tokens`` int32 [B, P] with row ``b``'s prompt in
``tokens[b, :lengths[b]]`` (right padding, ``pad_id`` after it). Everything else a caller may
reasonably pass is converted to that layout here, and everything that would silently decode the
wrong thing is rejected with a ValueError that says what was wrong and what is expected:

* token ids that are not integers (``[[1.7, 2.2]]`` would otherwise run as ``[[1, 2]]``; bools as 0/1);
* empty prompts (``[]``, ``[[]]``, a row of length 0, a left-padded row that is all padding);
* a left-padded array passed without ``padding_side="left"`` (its leading padding would be read
  as prompt), and the reverse;
* a ``key=`` that is not a single jax PRNG key (an int seed, a batch of keys, int32 data).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np

from tokjax.model import ModelConfig

__all__ = ["prepare_prompt", "check_key", "PADDING_SIDES"]

PADDING_SIDES = ("right", "left")


def _is_scalar(x) -> bool:
    return np.ndim(x) == 0 and not isinstance(x, (str, bytes))


def _int_ids(arr: np.ndarray, what: str) -> np.ndarray:
    """Returns ``arr`` as int64 after rejecting dtypes that are not integer token ids."""
    kind = arr.dtype.kind
    if kind in "iu":
        return arr.astype(np.int64, copy=False)
    if kind == "b":
        raise ValueError(
            f"{what}: token ids must be integers, got booleans (dtype bool); a bool array is usually a mask: "
            "pass the ids themselves (an attention mask goes in prompt_lengths=)"
        )
    if kind == "f":
        flat = arr.reshape(-1)
        example = flat[np.nonzero(flat != np.round(flat))[0][:1]]
        shown = f" (e.g. {float(example[0])})" if example.size else ""
        raise ValueError(
            f"{what}: token ids must be integers, got floating-point values{shown} (dtype {arr.dtype}); tokjax does "
            "not round or truncate ids: convert them yourself (e.g. np.asarray(ids).astype(np.int32)) if that "
            "is really what you mean"
        )
    if kind in "US":
        raise ValueError(f"{what}: token ids must be integers, got strings; encode text with the tokenizer first "
                         "(tokenizer.encode(text))")
    raise ValueError(f"{what}: token ids must be integers, got dtype {arr.dtype}")


def _as_array(x, what: str) -> np.ndarray:
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{what} is a {type(x).__name__}; encode text with the tokenizer first "
                         "(tokenizer.encode(text))")
    if isinstance(x, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in x):
        # numpy turns [1, True] into int64 [1, 1]: catch Python bools before it does.
        raise ValueError(f"{what}: must be integers, got a Python bool among them ({list(x)[:8]!r})")
    try:
        arr = np.asarray(x)
    except ValueError as err:  # ragged nesting deeper than one level
        raise ValueError(f"{what} must be [batch, seq] token ids or a list of id lists, got a ragged nesting "
                         f"({err})") from None
    if arr.dtype == object:
        raise ValueError(f"{what} must be [batch, seq] token ids or a list of id lists, got a ragged or mixed nesting")
    return arr


def _rows_from_list(prompt) -> tuple[np.ndarray, np.ndarray]:
    """Returns (ids int64 [B, P] right-padded with 0, lengths [B]) of a list of id rows of any lengths."""
    rows = []
    for b, r in enumerate(prompt):
        arr = _as_array(r, f"prompt row {b}")
        if arr.ndim != 1:
            raise ValueError(f"prompt row {b} must be a flat list of token ids, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(
                f"prompt row {b} is empty; every row needs at least one token to condition on (e.g. the "
                "tokenizer's bos id)"
            )
        rows.append(_int_ids(arr, f"prompt row {b}"))
    lens = np.array([len(r) for r in rows], np.int32)
    arr = np.zeros((len(rows), int(lens.max())), np.int64)
    for b, r in enumerate(rows):
        arr[b, : len(r)] = r
    return arr, lens


def _lengths(prompt_lengths, B: int, P: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Returns (lengths [B] or None, attention mask [B, P] or None) from ``prompt_lengths``."""
    raw = _as_array(prompt_lengths, "prompt_lengths")
    if raw.ndim == 2:
        if raw.shape != (B, P):
            raise ValueError(f"an attention mask passed as prompt_lengths must have the prompt's shape {(B, P)}, "
                             f"got {raw.shape}")
        if raw.dtype.kind not in "biu" or not np.isin(raw, (0, 1)).all():
            raise ValueError("an attention mask passed as prompt_lengths must hold only 0 and 1 (or bools)")
        return None, raw.astype(bool)
    if raw.dtype.kind not in "iu":
        raise ValueError(f"prompt_lengths must be integers (one length per row), got dtype {raw.dtype}")
    lens = raw.reshape(-1)
    if raw.ndim > 1 or lens.shape != (B,):
        raise ValueError(f"prompt_lengths must have one entry per prompt row ({B}), got shape {raw.shape}")
    return lens.astype(np.int64), None


def _mask_lengths(mask: np.ndarray, side: str) -> np.ndarray:
    """Returns the per-row lengths of a contiguous attention mask; ValueError when it is not contiguous on ``side``."""
    B, P = mask.shape
    lens = mask.sum(axis=1)
    pos = np.arange(P)[None, :]
    right = pos < lens[:, None]
    left = pos >= (P - lens)[:, None]
    want, other = (right, left) if side == "right" else (left, right)
    bad = np.nonzero(~(mask == want).all(axis=1))[0]
    if bad.size:
        b = int(bad[0])
        if (mask[b] == other[b]).all():
            flip, where = ("left", "end") if side == "right" else ("right", "start")
            raise ValueError(
                f"attention mask row {b} is {flip}-padded (its tokens are at the {where}) but "
                f"padding_side={side!r}; pass padding_side={flip!r}"
            )
        raise ValueError(f"attention mask row {b} is not one contiguous run of 1s ({mask[b].astype(int).tolist()}); "
                         "tokjax prompts are contiguous")
    return lens


def _lead_pad_run(arr: np.ndarray, pad_id: int) -> np.ndarray:
    """Returns, per row, how many leading entries equal ``pad_id``."""
    not_pad = arr != pad_id
    first = np.argmax(not_pad, axis=1)
    return np.where(not_pad.any(axis=1), first, arr.shape[1])


def _left_padding_hint(pad_id: int) -> str:
    return (f'it looks left-padded (rows start with a run of pad_id={pad_id}); pass padding_side="left" '
            "(tokjax converts it), or pass the rows as a list of id lists")


def prepare_prompt(
    prompt: Any, prompt_lengths: Any, cfg: ModelConfig, pad_id: int, *, padding_side: str = "right"
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (tokens int32 [B, P] right-padded with ``pad_id``, lengths int32 [B]) after checking the prompt.

    ``prompt``: a list of id lists of any lengths (taken as they are; with ``padding_side="left"``
    they must share one width and are read as a padded array), one flat id list (one row), or a
    padded [B, P] (or [P]) integer array. For an array, ``prompt_lengths`` is
    either one length per row or an attention mask [B, P] of 0/1 (transformers' convention);
    without it every row is the full width P, or, with ``padding_side="left"``, the row minus its
    leading run of ``pad_id``. ``padding_side``: where the padding of the array is, "right"
    (``tokens[b, :len]`` is the prompt) or "left" (``tokens[b, P-len:]``, what transformers'
    tokenizers produce for generation); left-padded rows are moved to the right-padded layout,
    so the result is the same as for the unpadded rows.

    Raises ValueError for ids that are not integers (floats are never rounded, bools never read as
    0/1), ids outside [0, vocab_size), an empty prompt or row, lengths outside [1, P], a
    non-contiguous attention mask, and an array that looks left-padded while ``padding_side`` is
    "right": rows whose stated padding region holds tokens while their start is a run of
    ``pad_id`` (every padded row), or, without ``prompt_lengths``, rows starting with runs of
    ``pad_id`` of different lengths while ``pad_id`` occurs nowhere else. These two checks are
    heuristics with an escape hatch: ids that really are tokens pass with explicit
    ``prompt_lengths`` (or a ``pad_id`` that does not occur in the prompt).
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not isinstance(pad_id, numbers.Integral) or isinstance(pad_id, bool):
        raise ValueError(f"pad_id must be an int, got {type(pad_id).__name__} {pad_id!r}")
    if isinstance(prompt, (list, tuple)) and len(prompt) == 0:
        raise ValueError("prompt is empty ([]); pass at least one row of token ids, e.g. [[bos_id]]")

    rows = isinstance(prompt, (list, tuple)) and not all(_is_scalar(r) for r in prompt)
    if rows and padding_side == "left":
        # Padding only exists in equal-width rows: take them as the padded array they are.
        widths = {int(np.size(r)) for r in prompt}
        if len(widths) != 1:
            raise ValueError(f'padding_side="left" describes a padded prompt, but these rows have different lengths '
                             f"({sorted(widths)}); pass them unpadded (as they are, without padding_side) or padded "
                             "to one width")
        prompt = [_as_array(r, f"prompt row {b}") for b, r in enumerate(prompt)]
        rows = False
    if rows:
        if prompt_lengths is not None:
            raise ValueError("pass prompt_lengths only with a padded [batch, seq] prompt array, not a list of rows "
                             "(each row's length is already its length)")
        arr, lens = _rows_from_list(prompt)
    else:
        arr = _as_array(prompt, "prompt")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"prompt must be [batch, seq] token ids or a list of id lists, got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError("prompt has no rows (shape (0, ...)); pass at least one row of token ids")
        if arr.shape[1] == 0:
            raise ValueError(f"prompt rows are empty (shape {arr.shape}); every row needs at least one token")
        arr = _int_ids(arr, "prompt")
        B, P = arr.shape
        mask = None
        lens = None
        if prompt_lengths is not None:
            lens, mask = _lengths(prompt_lengths, B, P)
            if mask is not None:
                lens = _mask_lengths(mask, padding_side)
        lead = _lead_pad_run(arr, pad_id)
        if padding_side == "left":
            if lens is None:
                lens = P - lead
                empty = np.nonzero(lens == 0)[0]
                if empty.size:
                    raise ValueError(f"prompt row {int(empty[0])} is all padding (pad_id={pad_id}); every row needs "
                                     "at least one token")
            else:
                _check_range(lens, P)
                tail = _trail_pad_run(arr, pad_id)
                # Right-padded rows handed over as left-padded: tokens first, the stated padding at the end.
                looks_right = (tail >= P - lens) & (lead < P - lens)
                padded = lens < P
                if padded.any() and looks_right[padded].all():
                    b = int(np.nonzero(looks_right)[0][0])
                    raise ValueError(
                        f'prompt row {b} looks right-padded (its tokens come first, then pad_id={pad_id}) but '
                        f'padding_side="left" says its {int(lens[b])} tokens are the last ones; '
                        'pass padding_side="right"'
                    )
            src = np.arange(P)[None, :] + (P - lens)[:, None]
            arr = np.take_along_axis(arr, np.minimum(src, P - 1), axis=1)
        elif lens is None:
            lens = np.full((B,), P, np.int64)
            # Rows of one width whose leading pad runs differ, with pad_id nowhere else: what a
            # left-padded batch looks like when read as full rows. (pad_id inside a row means the
            # id is a real token there, so the leading runs are not taken for padding.)
            inner_pad = ((np.arange(P)[None, :] >= lead[:, None]) & (arr == pad_id)).any()
            if B > 1 and lead.min() < lead.max() and not inner_pad:
                b = int(np.argmax(lead))
                raise ValueError(
                    f"prompt row {b} starts with {int(lead[b])} pad_id={pad_id} tokens while other rows do not, and "
                    "no prompt_lengths says where the padding is: " + _left_padding_hint(pad_id) + ", or pass "
                    "prompt_lengths= if those ids are real tokens"
                )
        else:
            _check_range(lens, P)
            pos = np.arange(P)[None, :]
            beyond_has_tokens = ((pos >= lens[:, None]) & (arr != pad_id)).any(axis=1)
            looks_left = (lead >= P - lens) & beyond_has_tokens
            padded = lens < P
            # Every padded row must look left-padded: a batch where one padded row has real tokens
            # first is right-padded, whatever stale ids follow the lengths of the others.
            if padded.any() and looks_left[padded].all():
                b = int(np.nonzero(looks_left)[0][0])
                raise ValueError(
                    f"prompt row {b}: prompt_lengths says its first {int(lens[b])} ids are the prompt, but they are "
                    f"pad_id={pad_id} and the tokens come after them: " + _left_padding_hint(pad_id)
                    + f" (a right-padded row that really starts with id {pad_id}: fill it with pad_id after its "
                    "length)"
                )
    _check_range(lens, arr.shape[1])
    valid = np.arange(arr.shape[1])[None, :] < lens[:, None]
    vals = arr[valid]
    if vals.min() < 0 or vals.max() >= cfg.vocab_size:
        raise ValueError(
            f"prompt token ids must lie in [0, {cfg.vocab_size}) (the model's vocab_size), got values in "
            f"[{vals.min()}, {vals.max()}]"
        )
    arr = np.where(valid, arr, pad_id).astype(np.int32)
    return arr, lens.astype(np.int32)


def _trail_pad_run(arr: np.ndarray, pad_id: int) -> np.ndarray:
    """Returns, per row, how many trailing entries equal ``pad_id``."""
    return _lead_pad_run(arr[:, ::-1], pad_id)


def _check_range(lens: np.ndarray, P: int) -> None:
    if np.any(lens < 1) or np.any(lens > P):
        raise ValueError(f"prompt lengths must lie in [1, {P}] (the padded width), got {np.asarray(lens).tolist()}")


def check_key(key: Any, *, name: str = "key") -> jax.Array:
    """Returns ``key`` as one typed jax PRNG key (shape ()); ValueError for anything else.

    Accepted: a typed key (``jax.random.key(seed)``) and a legacy raw uint32 key
    (``jax.random.PRNGKey(seed)``, shape (2,) for the default implementation), which is wrapped
    with ``jax.random.wrap_key_data`` so it draws exactly the random bits it would draw raw.
    Rejected with a message saying what to pass: an int seed (``key=0``), a batch of keys (the
    loop splits one key itself), and arrays of any other dtype or shape.
    """
    hint = f"pass {name}=jax.random.key(seed)"
    if key is None or isinstance(key, (bool, numbers.Number)):
        what = "None" if key is None else f"{type(key).__name__} {key!r}"
        raise ValueError(f"{name} must be a jax.random key, got {what}; {hint} (an int seed is not a key)")
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise ValueError(f"{name} must be a jax.random key, got {type(key).__name__}; {hint}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single key (shape ()), got a key array of shape {key.shape}; "
                             "generate splits one key per step itself")
        return key
    want = jax.random.key_data(jax.random.key(0)).shape
    if key.dtype != np.uint32 or key.shape != want:
        raise ValueError(
            f"{name} must be a jax.random key, got an array of dtype {key.dtype} and shape {key.shape} "
            f"(a legacy raw key is uint32 of shape {want}); {hint}"
        )
    return jax.random.wrap_key_data(key)
