"""Checkpointing with orbax: crash-safe step checkpoints of a TrainState, and params-only checkpoints.

Why a checkpoint interrupted mid-write never corrupts the previous one: orbax writes every
checkpoint into ``<step>.orbax-checkpoint-tmp-<time>/``, writes ``commit_success.txt`` (and a
commit timestamp in ``_CHECKPOINT_METADATA``) into it when everything is on disk, and only
then renames it to ``<step>/``. A process killed before the rename leaves a tmp directory that
is ignored (and removed by the next writer); the earlier steps are never touched.

On top of that, :class:`Checkpointer` trusts only *committed* step directories (with the commit
marker). A step directory without one (left by a copy tool, a non-atomic filesystem, or a user)
is skipped on restore, and moved aside to ``<step>.incomplete-<time>`` by a writer so that
orbax never trips over it. Orbax failures are re-raised as ValueError/FileNotFoundError naming
the directory, never as a deep orbax traceback.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tokjax.model.ops import path_tokens

__all__ = ["Checkpointer", "CheckpointError", "save_params", "load_params", "is_complete_checkpoint"]


COMMIT_FILE = "commit_success.txt"
METADATA_FILE = "_CHECKPOINT_METADATA"
TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be read (corrupt, or saved from a different model/optimiser)."""


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Returns True when ``path`` is a checkpoint directory that orbax finished committing."""
    p = Path(path)
    if not p.is_dir() or TMP_MARK in p.name:
        return False
    if (p / COMMIT_FILE).is_file():
        return True
    # Orbax versions or filesystems that skip the commit file still record a commit timestamp.
    try:
        meta = json.loads((p / METADATA_FILE).read_text())
        return bool(meta.get("commit_timestamp_nsecs"))
    except (OSError, ValueError, AttributeError):
        return False


def _abstract(target: Any) -> Any:
    """Returns ``target`` with every array leaf replaced by a ShapeDtypeStruct (nothing is read or copied)."""
    import orbax.checkpoint as ocp

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, target)


def _short(err: BaseException) -> str:
    """Returns the first line of an exception's message (orbax messages can be pages long)."""
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0] if msg else ''}"


def _collect_quietly() -> None:
    """Returns None after garbage-collecting the read coroutines a failed orbax restore abandons.

    Without this they are collected at some later, random moment and print "Exception ignored
    in: <coroutine ...>" tracebacks far away from the error that was already reported.
    """
    import gc
    import sys

    hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _precheck(stored: Any, abstract: Any, where: Path) -> None:
    """Returns None; raises CheckpointError when the checkpoint's metadata shows other arrays than requested.

    Comparing shapes before reading gives a precise message (which parameter differs) and
    avoids a failed read, whose abandoned tensorstore callbacks orbax reports much later.
    """
    if stored is None:
        return
    stored = getattr(stored, "tree", stored)  # orbax >= 0.11 wraps the tree in a TreeMetadata
    try:
        got = {path_tokens(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
    except Exception:
        return
    want = {path_tokens(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    if not all(hasattr(v, "shape") for v in got.values()):
        return  # metadata of a kind we do not understand: rely on the restore itself
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        show = lambda ps: ", ".join("/".join(p) for p in ps[:3]) + (" ..." if len(ps) > 3 else "")  # noqa: E731
        raise CheckpointError(
            f"checkpoint {where} does not have the structure of the requested state "
            f"(missing: {show(missing) or 'none'}; unexpected: {show(extra) or 'none'}); "
            "saved from a different model or optimiser?"
        )
    for path, w in want.items():
        g = got[path]
        if tuple(g.shape) != tuple(w.shape) or (getattr(g, "dtype", None) is not None and np.dtype(g.dtype) != w.dtype):
            raise CheckpointError(
                f"checkpoint {where} holds {'/'.join(path)} as {tuple(g.shape)} {g.dtype}, but the requested "
                f"state has {tuple(w.shape)} {w.dtype} (saved from a different model config?)"
            )


def _check_like(restored: Any, abstract: Any, where: Path) -> None:
    """Returns None; raises CheckpointError when the restored tree's shapes/dtypes differ from the target's."""
    got, exp = jax.tree.leaves(restored), jax.tree.leaves(abstract)
    if jax.tree.structure(restored) != jax.tree.structure(abstract) or len(got) != len(exp):
        raise CheckpointError(f"checkpoint {where} does not have the structure of the requested state")
    for g, e in zip(got, exp):
        if tuple(np.shape(g)) != tuple(e.shape) or np.dtype(g.dtype) != np.dtype(e.dtype):
            raise CheckpointError(
                f"checkpoint {where} holds an array {np.shape(g)} {g.dtype} where the requested state has "
                f"{e.shape} {e.dtype} (saved from a different model config?)"
            )


class Checkpointer:
    """Step checkpoints of a pytree (a TrainState) in one directory, via orbax CheckpointManager.

    ``save(step, state)`` writes ``<directory>/<step>/`` atomically and keeps the newest
    ``max_to_keep``; ``restore(target)`` reads the newest committed step into the structure of
    ``target`` (a state of the right shapes, or its ShapeDtypeStruct tree). With
    ``create=False`` a missing directory raises FileNotFoundError naming it.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, create: bool = True):
        import orbax.checkpoint as ocp

        if not isinstance(max_to_keep, int) or isinstance(max_to_keep, bool) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        self.directory = Path(directory).expanduser().absolute()
        self._writable = create
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"checkpoint directory {self.directory} exists and is not a directory")
        if not self.directory.exists():
            if not create:
                raise FileNotFoundError(f"checkpoint directory not found: {self.directory}")
            self.directory.mkdir(parents=True, exist_ok=True)
        if create:
            self._quarantine_incomplete()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=create,
            # Synchronous saves: the next train step donates the state's buffers, and a
            # checkpoint that is still being written when the process dies is worth nothing.
            enable_async_checkpointing=False,
            cleanup_tmp_directories=create,
            read_only=not create,
        )
        try:
            # One item saved with the standard handler, declared up front: without it orbax cannot
            # read a step's metadata before a restore names the handler, and logs 'Item "default"
            # was found in the checkpoint, but could not be restored' on every resume (harmless:
            # the restore below names it, but the structure precheck saw no metadata).
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
            )
        except Exception as e:  # orbax raises a zoo of types for unreadable directories
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {_short(e)}") from None

    # ------------------------------------------------------------------------- steps
    def _step_dirs(self) -> dict[int, Path]:
        out = {}
        for p in self.directory.iterdir():
            if p.is_dir() and p.name.isdigit():
                out[int(p.name)] = p
        return out

    def _quarantine_incomplete(self) -> None:
        for step, p in self._step_dirs().items():
            if not is_complete_checkpoint(p):
                dest = p.with_name(f"{p.name}.incomplete-{time.time_ns()}")
                warnings.warn(f"checkpoint {p} was never committed (interrupted write?); moved it to {dest.name}")
                p.rename(dest)

    def all_steps(self) -> list[int]:
        """Returns the sorted steps that have a committed checkpoint."""
        return sorted(s for s, p in self._step_dirs().items() if is_complete_checkpoint(p))

    def latest_step(self) -> int | None:
        """Returns the newest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------------ save / restore
    def save(self, step: int, state: Any) -> Path:
        """Returns the directory of the checkpoint of ``state`` written (atomically) for ``step``.

        A step that already has a committed checkpoint is left as it is (checkpoints are never
        rewritten in place), which makes saving the final step of a finished run idempotent.
        """
        import orbax.checkpoint as ocp

        if not self._writable:
            raise ValueError(f"checkpoint directory {self.directory} was opened read-only (create=False)")
        step = int(step)
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        if step in self.all_steps():  # e.g. the final step of a run that was already complete
            return self.directory / str(step)
        stale = self.directory / str(step)
        if stale.exists():
            self._quarantine_incomplete()
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()
        return self.directory / str(step)

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Returns the checkpointed state of ``step`` (default: the newest committed one) shaped like ``target``.

        Raises FileNotFoundError naming the directory when there is no committed checkpoint (or
        not that step), and CheckpointError (a ValueError) when it cannot be read or does not
        match ``target``.
        """
        import orbax.checkpoint as ocp

        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
            step = steps[-1]
        elif int(step) not in steps:
            raise FileNotFoundError(
                f"no committed checkpoint for step {step} in {self.directory} (committed steps: {steps})"
            )
        where = self.directory / str(int(step))
        abstract = _abstract(target)
        try:
            stored = self._manager.item_metadata(int(step))
        except Exception:  # unreadable metadata: let the restore below report it
            stored = None
        _precheck(stored, abstract, where)
        error = None
        try:
            restored = self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
        except Exception as e:
            error = _short(e)
        if error is not None:  # raised outside the except block: no hidden orbax context
            _collect_quietly()
            raise CheckpointError(f"checkpoint {where} is corrupt or was saved from a different model/optimiser: {error}")
        _check_like(restored, abstract, where)
        return restored

    def close(self) -> None:
        """Returns None; waits for pending writes and releases orbax's resources."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, steps={self.all_steps()})"


# ------------------------------------------------------------------------- params only
def save_params(path: str | os.PathLike, params: Any) -> Path:
    """Returns ``path`` after writing ``params`` there as one orbax checkpoint (atomic: tmp dir + rename).

    Raises ValueError when ``path`` already exists (a checkpoint is never overwritten in place).
    """
    import orbax.checkpoint as ocp

    p = Path(path).expanduser().absolute()
    if p.exists():
        raise ValueError(f"{p} already exists; params checkpoints are never overwritten in place")
    p.parent.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(p, params)
        ckptr.wait_until_finished()
    return p


def load_params(path: str | os.PathLike, target: Any) -> Any:
    """Returns the params saved at ``path`` by :func:`save_params`, shaped like ``target``.

    ``target`` is a params tree or its ShapeDtypeStruct tree (``tokjax.model.param_shapes(cfg)``).
    Raises FileNotFoundError naming the path when it is missing or was never committed, and
    CheckpointError (a ValueError) when it is corrupt or has other shapes.
    """
    import orbax.checkpoint as ocp

    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise FileNotFoundError(f"params checkpoint not found: {p}")
    if not is_complete_checkpoint(p):
        raise FileNotFoundError(f"params checkpoint {p} was never committed (interrupted write?)")
    abstract = _abstract(target)
    error = None
    try:
        with ocp.StandardCheckpointer() as ckptr:
            try:
                meta = ckptr.metadata(p)
                stored = getattr(meta, "item_metadata", meta)
            except Exception:  # unreadable metadata: let the restore below report it
                stored = None
            _precheck(stored, abstract, p)
            restored = ckptr.restore(p, abstract)
    except CheckpointError:
        raise
    except Exception as e:
        error = _short(e)
    if error is not None:
        _collect_quietly()
        raise CheckpointError(f"params checkpoint {p} is corrupt or does not match the model: {error}")
    _check_like(restored, abstract, p)
    return restored
