"""Where tokjax keeps what it makes on disk: one cache directory, chosen in one place.

    $TOKJAX_CACHE, else ~/.cache/tokjax

Everything tokjax caches lives under it: pretrained tiny models (``<root>/<name>/``, unfinished
runs under ``<root>/.work/``), experiment artefacts (``<root>/experiments/``), zero-shot
tokenizer-transfer hypernetworks (``<root>/zett/``) and the drafts some experiments train. Every
function that needs the directory calls :func:`cache_root`, so setting ``TOKJAX_CACHE`` moves all
of it. This module imports nothing from tokjax (rank 0 in ``tests/test_layering.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "DEFAULT_CACHE", "cache_root"]

CACHE_ENV = "TOKJAX_CACHE"
DEFAULT_CACHE = "~/.cache/tokjax"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the absolute cache directory: ``cache_dir``, else ``$TOKJAX_CACHE``, else ``~/.cache/tokjax``.

    ``~`` is expanded and a relative path is taken relative to the current directory (at the time
    of the call). An empty ``$TOKJAX_CACHE`` counts as unset. Nothing is created.
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(cache_dir).expanduser().absolute()
