"""Sequential and named composition, shared by every optax-shaped transform family.

A transform family (logit transforms in :mod:`tokjax.logits`, loss transforms in
:mod:`tokjax.losses`) defines a base class whose members have ``init(*init_args) -> state`` and
``apply(value, state, context) -> (value, state)``: logit transforms ``init(batch)`` and
``apply(logits, state, LogitContext)``, loss transforms ``init()`` and ``apply(stats, state,
batch)``. Composition is the same for every family, so it is written once here: a family's
``Chain`` / ``NamedChain`` are frozen dataclasses that mix :class:`SequentialComposition` /
:class:`NamedComposition` into its base class, and its ``chain`` / ``named_chain`` constructors
validate their arguments with :func:`checked_members` / :func:`checked_named_members`.

This module sits at the bottom of the layering (rank 0, with ``tokjax.model``): it imports
nothing from tokjax.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IdentityBehaviour", "NamedComposition", "SequentialComposition", "checked_members", "checked_named_members"]


class SequentialComposition:
    """Mixin for a family's ``Chain``: applies ``self.transforms`` left to right, threading the value;
    the state is the tuple of the members' states (in order)."""

    transforms: tuple

    def members(self) -> tuple:
        """Returns the composed transforms, in application order."""
        return tuple(self.transforms)

    def init(self, *args) -> tuple:
        return tuple(t.init(*args) for t in self.transforms)

    def apply(self, value, state, context) -> tuple[Any, tuple]:
        new = []
        for t, s in zip(self.transforms, state):
            value, s = t.apply(value, s, context)
            new.append(s)
        return value, tuple(new)


class NamedComposition:
    """Mixin for a family's ``NamedChain``: like :class:`SequentialComposition`, but ``self.named`` holds
    ``(name, transform)`` pairs and the state is a dict keyed by name, so a caller can address one
    member's hyperparameters (``state["temperature"]``) without knowing its position."""

    named: tuple

    def members(self) -> tuple:
        """Returns the composed transforms, in application order."""
        return tuple(t for _, t in self.named)

    def init(self, *args) -> dict:
        return {n: t.init(*args) for n, t in self.named}

    def apply(self, value, state, context) -> tuple[Any, dict]:
        new = {}
        for n, t in self.named:
            value, new[n] = t.apply(value, state[n], context)
        return value, new


class IdentityBehaviour:
    """Mixin for a family's ``Identity``: returns the value and the state unchanged; every instance of one
    family's Identity is equal to every other (so it is one static jit argument)."""

    def __eq__(self, other):
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self))

    def apply(self, value, state, context):
        return value, state


def checked_members(transforms, base: type) -> tuple:
    """Returns ``transforms`` as a tuple; raises ValueError naming the first one that is not a ``base``."""
    for t in transforms:
        if not isinstance(t, base):
            raise ValueError(f"chain expects {base.__name__} objects, got {type(t).__name__}")
    return tuple(transforms)


def checked_named_members(named, base: type) -> tuple:
    """Returns ``named`` as a tuple of ``(name, transform)`` pairs; raises ValueError when an entry is not
    a ``(str, base)`` pair or a name repeats (the state dict would silently drop a member)."""
    named = tuple(named)
    for entry in named:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"named_chain entries must be (name: str, transform) pairs, got {entry!r}")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain names must be unique, got {names}")
    for n, t in named:
        if not isinstance(t, base):
            raise ValueError(f"named_chain entry {n!r} is not a {base.__name__}: {type(t).__name__}")
    return named
