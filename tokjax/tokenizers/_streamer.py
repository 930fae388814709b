"""Detokenizing streamers: token ids arriving step by step -> text pieces, safe for multi-byte characters.

A byte-level tokenizer can split one character across tokens (an emoji is four UTF-8 bytes, often
two or more tokens). Decoding a prefix of the ids then ends in U+FFFD replacement characters that
the next token would have completed, so a naive streamer prints garbage that later decodes differ
from. :class:`TextStreamer` decodes the ids received so far with the tokenizer's own ``decode``
and holds back a trailing run of U+FFFD until more ids (or :meth:`TextStreamer.flush`) settle it.
The pieces it returns therefore concatenate to exactly ``tokenizer.decode(all_ids)``.

That needs ``decode`` to be prefix-stable apart from a trailing incomplete character (adding ids
never rewrites text already decoded), which byte-level BPE and byte tokenizers are: UTF-8 is
self-synchronising, so a complete character never changes. A decoder that does rewrite earlier
text (e.g. WordPiece's space clean-up) is detected and reported with a ValueError instead of
silently printing text that differs from ``decode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ._base import Tokenizer

REPLACEMENT = "\ufffd"


class TextStreamer:
    """Turns one row's token ids, fed in chunks, into text pieces that never split a character.

    ``push(ids)`` returns the newly settled text (possibly ""), ``flush()`` returns what is held
    back at the end (an incomplete final character decodes to U+FFFD, as ``decode`` does), and
    ``text`` is everything emitted so far. Each push decodes the row from its start: O(length) per
    push, negligible next to a model step for chat-sized outputs.
    """

    def __init__(self, tokenizer: Tokenizer):
        if not callable(getattr(tokenizer, "decode", None)):
            raise ValueError(f"TextStreamer needs a tokenizer with decode(ids), got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def _settle(self, decoded: str, final: bool) -> str:
        if not decoded.startswith(self.text):
            raise ValueError(
                f"{type(self.tokenizer).__name__}.decode is not prefix-stable (adding ids changed text already "
                f"streamed: {self.text[-20:]!r} -> {decoded[max(0, len(self.text) - 20):len(self.text)]!r}); "
                "TextStreamer supports byte-level tokenizers"
            )
        end = len(decoded)
        if not final:
            # A trailing U+FFFD may be an incomplete character the next ids complete; hold it back.
            while end > len(self.text) and decoded[end - 1] == REPLACEMENT:
                end -= 1
        piece = decoded[len(self.text):end]
        self.text += piece
        return piece

    def push(self, ids: Sequence[int] | np.ndarray | int) -> str:
        """Returns the text that ``ids`` (appended to the row) settles; "" while a character is incomplete."""
        arr = np.asarray(ids)
        if arr.ndim > 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"push expects an int or a 1-D sequence of int ids, got {arr.dtype} shape {arr.shape}")
        self.ids.extend(int(i) for i in arr.reshape(-1))
        return self._settle(self.tokenizer.decode(self.ids), final=False)

    def flush(self) -> str:
        """Returns the held-back remainder; afterwards ``text == tokenizer.decode(ids)``."""
        return self._settle(self.tokenizer.decode(self.ids), final=True)

    def reset(self) -> None:
        """Forgets the row's ids and text (for the next turn of a chat)."""
        self.ids = []
        self.text = ""


def stream_text(
    tokenizer: Tokenizer, steps: Iterable[Sequence[np.ndarray] | Sequence[int] | np.ndarray]
) -> Iterator[list[str]]:
    """Yields, per step of ``steps``, each row's new text (a list of B strings), then the rows' remainders.

    ``steps``: what :func:`tokjax.stream` yields (a list of B id arrays per step). Concatenating a
    row's pieces gives ``tokenizer.decode`` of the row's streamed ids. The last item yielded is the
    flushed remainder of every row (often all "").
    """
    streamers: list[TextStreamer] | None = None
    for step in steps:
        rows = list(step)
        if streamers is None:
            streamers = [TextStreamer(tokenizer) for _ in rows]
        if len(rows) != len(streamers):
            raise ValueError(f"a step has {len(rows)} rows, the first had {len(streamers)}")
        yield [s.push(r) for s, r in zip(streamers, rows)]
    if streamers is not None:
        yield [s.flush() for s in streamers]
