"""Activation capture and patching on the shared forward's named sites (taps and hooks).

* :func:`capture` runs one forward and returns the activations at named sites
  (``"layer.3.resid_post"``, ``"layer.2.attn_heads"``, ``"layer.0.attn_probs"``, ``"layer.*.mlp_out"``).
* :func:`patch` runs the forward with activations overwritten at chosen positions of named hook sites
  (activation patching / interchange interventions, as used by successor-head ablations (P54) and
  entity-binding interchanges (P77)): ``patch(model, tokens, {site: (positions, values)})``.
* :func:`head_ablation_hooks` builds ``attn_heads`` hooks that zero (or mean-ablate) chosen heads.

All of them only compose :func:`tokjax.model.forward.forward`'s taps and hooks; nothing is mutated.
Patching a site with the activations :func:`capture` returned for the same tokens is the identity.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from tokjax.model.forward import HOOK_SITES, TAP_SITES, Inputs, Model, Output, Taps, forward
from tokjax.model.ops import check_int_values

__all__ = ["capture", "head_ablation_hooks", "parse_site", "patch", "patch_hooks"]

_SITE_RE = re.compile(r"^layer\.(\*|\d+)\.([a-z_]+)$")


def _unpack(model) -> tuple:
    """Returns (params, cfg) of a Model or a (params, cfg) pair."""
    if isinstance(model, Model):
        return model.params, model.cfg
    if isinstance(model, (tuple, list)) and len(model) == 2:
        return model[0], model[1]
    raise ValueError(f"expected a tokjax Model or a (params, cfg) pair, got {type(model).__name__}")


def parse_site(name: str, n_layers: int, *, hook: bool = False) -> tuple[int | None, str]:
    """Returns (layer or None for ``*``, site) of ``"layer.<i>.<site>"``; ValueError on an unknown site or layer.

    ``hook``: the site must be a hook site (:data:`HOOK_SITES`), not a tap-only one.
    """
    m = _SITE_RE.match(name) if isinstance(name, str) else None
    allowed = HOOK_SITES if hook else TAP_SITES
    if not m or m.group(2) not in allowed:
        extra = ""
        if m and m.group(2) in TAP_SITES:
            extra = f" ({m.group(2)!r} is a tap-only site: it can be captured, not patched)"
        raise ValueError(f"unknown site {name!r}{extra}; expected 'layer.<i>.<site>' or 'layer.*.<site>' with "
                         f"site in {allowed}")
    layer = None if m.group(1) == "*" else int(m.group(1))
    if layer is not None and not 0 <= layer < n_layers:
        raise ValueError(f"site {name!r}: layer {layer} out of range for a model with n_layers={n_layers}")
    return layer, m.group(2)


def capture(model, tokens, sites: Sequence[str] | str, *, hooks: Mapping[str, Callable] | None = None,
            return_output: bool = False):
    """Returns {site: activation} for the named ``sites`` after one forward of ``tokens`` [B, T].

    ``model``: a :class:`tokjax.Model` or a ``(params, cfg)`` pair. A site ``"layer.<i>.<s>"`` gives
    layer i's activation ([B, T, D]; ``attn_heads`` [B, T, H, hd]; ``keys``/``values`` [B, T, KV, hd];
    ``attn_probs`` [B, H, T, T]); ``"layer.*.<s>"`` gives every layer's, stacked on a leading axis.
    ``hooks`` are applied during the run (capture a patched model). ``return_output``: return
    ``(activations, Output)`` so the logits of the same run come with them.
    """
    params, cfg = _unpack(model)
    if isinstance(sites, str):
        sites = (sites,)
    if len(sites) == 0:
        raise ValueError("capture needs at least one site, e.g. ['layer.0.resid_post']")
    parsed = {s: parse_site(s, cfg.n_layers) for s in sites}
    kinds = tuple(dict.fromkeys(k for _, k in parsed.values()))
    every = any(layer is None for layer, _ in parsed.values())
    layers = "all" if every else tuple(sorted({layer for layer, _ in parsed.values()}))
    out = forward(params, cfg, Inputs(tokens=jnp.asarray(tokens)), taps=Taps(layers=layers, sites=kinds), hooks=hooks)
    index = list(range(cfg.n_layers)) if every else list(layers)
    acts = {}
    for name, (layer, kind) in parsed.items():
        stacked = out.taps[kind]
        acts[name] = stacked if layer is None else stacked[index.index(layer)]
    return (acts, out) if return_output else acts


def _check_positions(positions, T: int, name: str):
    if positions is None:
        return None
    pos = jnp.asarray(positions)
    if pos.ndim not in (0, 1) or not jnp.issubdtype(pos.dtype, jnp.integer):
        raise ValueError(f"patch {name!r}: positions must be an int scalar or [P] array, got shape {pos.shape} "
                         f"dtype {pos.dtype}")
    check_int_values(pos, f"patch {name!r}: positions (T={T})", 0, T)
    return jnp.atleast_1d(pos)


def patch_hooks(cfg, T: int, patches: Mapping[str, tuple]) -> dict[str, Callable]:
    """Returns forward hooks that overwrite ``patches = {site: (positions, values)}`` (see :func:`patch`)."""
    if not isinstance(patches, Mapping) or not patches:
        raise ValueError("patches must be a non-empty dict {site: (positions, values)}")
    hooks = {}
    for name, pv in patches.items():
        layer, kind = parse_site(name, cfg.n_layers, hook=True)
        if layer is None:
            raise ValueError(f"patch site {name!r} must name one layer ('layer.<i>.{kind}'), not every layer")
        if not (isinstance(pv, (tuple, list)) and len(pv) == 2):
            raise ValueError(f"patch {name!r}: expected a (positions, values) pair, got {type(pv).__name__}")
        positions, values = pv
        pos = _check_positions(positions, T, name)
        values = jnp.asarray(values)
        tail = (cfg.n_heads, cfg.head_size) if kind == "attn_heads" else (cfg.d_model,)
        P = T if pos is None else pos.shape[0]
        if values.shape[-len(tail):] != tail or values.ndim not in (len(tail) + 1, len(tail) + 2) \
                or values.shape[-len(tail) - 1] != P:
            raise ValueError(f"patch {name!r}: values must be [B, {P}, {', '.join(map(str, tail))}] or "
                             f"[{P}, {', '.join(map(str, tail))}] (one per patched position), got {tuple(values.shape)}")

        def hook(x, _layer, pos=pos, values=values):
            v = jnp.broadcast_to(values.astype(x.dtype), (x.shape[0],) + values.shape[-len(tail) - 1:])
            return v if pos is None else x.at[:, pos].set(v)

        hooks[name] = hook
    return hooks


def patch(model, tokens, patches: Mapping[str, tuple], *, taps: Taps | None = None,
          hooks: Mapping[str, Callable] | None = None) -> Output:
    """Returns the forward :class:`Output` of ``tokens`` [B, T] with activations overwritten at hook sites.

    ``patches = {"layer.<i>.<site>": (positions, values)}``: at layer i's ``site`` (any of
    :data:`HOOK_SITES`), positions ``positions`` (int [P], or None for all T) take ``values``
    [B, P, D] (or [P, D], shared by the batch; [.., P, H, hd] for ``attn_heads``). Later layers see
    the patched activation (an interchange intervention when ``values`` come from another prompt's
    :func:`capture`). ``hooks``: further hooks on other sites.
    """
    params, cfg = _unpack(model)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    ph = patch_hooks(cfg, tokens.shape[1], patches)
    clash = set(ph) & set(hooks or {})
    if clash:
        raise ValueError(f"sites {sorted(clash)} are both patched and hooked; compose them into one hook")
    return forward(params, cfg, Inputs(tokens=tokens), taps=taps, hooks={**(hooks or {}), **ph})


def head_ablation_hooks(cfg, heads: Sequence[tuple[int, int]], *, means: jax.Array | None = None) -> dict:
    """Returns ``attn_heads`` hooks that ablate ``heads`` = [(layer, head), ...] (P54's per-head ablation).

    Zero ablation by default; ``means`` [n_layers, H, hd] (e.g. each head's mean output over a
    reference set, from ``capture(..., 'layer.*.attn_heads')``) gives mean ablation.
    """
    by_layer: dict[int, list[int]] = {}
    for lh in heads:
        if not (isinstance(lh, (tuple, list)) and len(lh) == 2):
            raise ValueError(f"heads must be (layer, head) pairs, got {lh!r}")
        layer, h = int(lh[0]), int(lh[1])
        if not (0 <= layer < cfg.n_layers and 0 <= h < cfg.n_heads):
            raise ValueError(f"head {(layer, h)} out of range: layers [0, {cfg.n_layers}), heads [0, {cfg.n_heads})")
        by_layer.setdefault(layer, []).append(h)
    if means is not None and jnp.shape(means) != (cfg.n_layers, cfg.n_heads, cfg.head_size):
        raise ValueError(f"means must be [n_layers, n_heads, head_size]={(cfg.n_layers, cfg.n_heads, cfg.head_size)}, "
                         f"got {jnp.shape(means)}")
    hooks = {}
    for layer, hs in by_layer.items():
        idx = jnp.asarray(sorted(set(hs)), jnp.int32)
        fill = None if means is None else jnp.asarray(means)[layer][idx]

        def hook(x, _layer, idx=idx, fill=fill):
            v = jnp.zeros(x.shape[:2] + (idx.shape[0], x.shape[-1]), x.dtype) if fill is None else \
                jnp.broadcast_to(fill.astype(x.dtype), x.shape[:2] + fill.shape)
            return x.at[:, :, idx].set(v)

        hooks[f"layer.{layer}.attn_heads"] = hook
    return hooks
