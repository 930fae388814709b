"""Named training losses: ``name + options -> loss_fn(params, cfg, batch, rng) -> (loss, metrics)``.

A YAML run config picks its loss by name (``tokjax.train.TrainConfig.loss``)::

    train:
      loss: {name: prior, alpha: 0.5, reference: "pretrained:tiny-pydocs"}

:func:`make_loss` validates the name and the options (ValueError listing the valid ones) and
returns a :class:`RegisteredLoss`: a callable with the train signature that compares and hashes by
(name, options), so two runs of the same config share compiled train steps and a resumed run sees
the same loss. :func:`register_loss` adds a loss; each entry declares its options and defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

__all__ = ["LossEntry", "RegisteredLoss", "loss_names", "loss_options", "loss_from_spec", "make_loss",
           "register_loss"]


@dataclasses.dataclass(frozen=True)
class LossEntry:
    """Returns nothing; a registered loss: ``factory(**options) -> loss_fn`` and its options' defaults."""

    name: str
    factory: Callable[..., Callable]
    defaults: tuple  # ((option, default), ...)
    doc: str = ""


_REGISTRY: dict[str, LossEntry] = {}
_BUILT: dict[tuple, "RegisteredLoss"] = {}


def _freeze(value: Any) -> Any:
    """Returns ``value`` with lists/dicts turned into tuples (hashable; the same for equal YAML values)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class RegisteredLoss:
    """Returns nothing; a loss built from the registry, callable as ``(params, cfg, batch, rng) -> (loss, metrics)``.

    Equality and hashing use (name, options) only. ``__qualname__`` is a stable description,
    which is what the train loop records in ``run.json`` to refuse resuming with another loss.
    """

    name: str
    options: tuple  # sorted ((option, frozen value), ...) as given (defaults not filled in)
    fn: Callable = dataclasses.field(compare=False, hash=False, repr=False)

    def __post_init__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options)
        object.__setattr__(self, "__qualname__", f"RegisteredLoss[{self.name}]({opts})")

    def __call__(self, params, cfg, batch, rng=None):
        return self.fn(params, cfg, batch, rng)

    def spec(self) -> dict:
        """Returns the ``{"name": ..., **options}`` mapping this loss was built from (YAML-serialisable)."""
        return {"name": self.name, **{k: _thaw(v) for k, v in self.options}}


def register_loss(name: str, factory: Callable[..., Callable], defaults: Mapping[str, Any], *, doc: str = "",
                  overwrite: bool = False) -> None:
    """Returns None after registering ``factory`` under ``name``; ``defaults`` lists every option it accepts."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a loss name must be a non-empty string without surrounding spaces, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(factory):
        raise ValueError(f"factory must be callable, got {factory!r}")
    if "name" in defaults:
        raise ValueError("'name' is reserved and cannot be a loss option")
    _REGISTRY[name] = LossEntry(name, factory, tuple(defaults.items()), doc)
    for key in [k for k in _BUILT if k[0] == name]:
        del _BUILT[key]


def loss_names() -> tuple[str, ...]:
    """Returns the registered loss names, sorted."""
    return tuple(sorted(_REGISTRY))


def loss_options(name: str) -> dict[str, Any]:
    """Returns ``{option: default}`` of the loss ``name``; ValueError lists the valid names for an unknown one."""
    return dict(_entry(name).defaults)


def _entry(name: Any) -> LossEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid losses: {list(loss_names())}")
    return _REGISTRY[name]


def make_loss(name: str, **options) -> RegisteredLoss:
    """Returns the :class:`RegisteredLoss` ``name`` with ``options`` (others keep their defaults).

    Raises ValueError naming the valid losses for an unknown ``name``, the valid options for an
    unknown option, and the factory's message for a bad option value. Equal (name, options)
    return the same object.
    """
    entry = _entry(name)
    valid = [k for k, _ in entry.defaults]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for loss {name!r}; valid options: {valid}")
    frozen = tuple(sorted((k, _freeze(v)) for k, v in options.items()))
    key = (name, frozen)
    try:
        hash(key)
    except TypeError:
        raise ValueError(f"options of loss {name!r} must be plain values (numbers, strings, lists), got "
                         f"{options!r}") from None
    if key not in _BUILT:
        kwargs = {**dict(entry.defaults), **options}
        try:
            fn = entry.factory(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"loss {name!r}: {e}") from None
        _BUILT[key] = RegisteredLoss(name, frozen, fn)
    return _BUILT[key]


def loss_from_spec(spec: Any) -> RegisteredLoss:
    """Returns the loss a config asks for: a name string, or a mapping ``{"name": ..., **options}``."""
    if isinstance(spec, str):
        return make_loss(spec)
    if isinstance(spec, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in spec):
        spec = dict(spec)  # the frozen form TrainConfig stores
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a loss spec must be a name or a mapping with a 'name' key (valid losses: "
                         f"{list(loss_names())}), got {spec!r}")
    options = {k: _thaw(v) for k, v in spec.items() if k != "name"}
    return make_loss(spec["name"], **options)


# ------------------------------------------------------------------------------ built-in losses
def _next_token_factory(method, block_size, reduction, z_loss, softcap):
    from tokjax.losses._next_token import make_next_token_loss

    return make_next_token_loss(method=method, block_size=int(block_size), reduction=reduction,
                                z_loss=float(z_loss), softcap=None if softcap is None else float(softcap))


def _reference(reference: str):
    """Returns (ref_params, ref_cfg) or None for ``reference`` = "batch" | "pretrained:NAME"."""
    if reference == "batch":
        return None
    if isinstance(reference, str) and reference.startswith("pretrained:"):
        import tokjax

        model, _ = tokjax.pretrained(reference.split(":", 1)[1], progress=False)
        return (model.params, model.cfg)
    raise ValueError(f"reference must be 'batch' (batch['ref_logp'] [B, T]) or 'pretrained:NAME', got {reference!r}")


def _prior_factory(alpha, normalize, reference, method, block_size, reduction):
    import functools

    from tokjax.losses._next_token import next_token_loss
    from tokjax.losses.prior import prior

    transform = prior(float(alpha), normalize=normalize)
    if method not in ("cut", "naive"):
        raise ValueError(f"method must be one of ('cut', 'naive'), got {method!r}")
    return functools.partial(next_token_loss, transforms=transform, method=method, block_size=int(block_size),
                             reduction=reduction, ref=_reference(reference))


def _text2token_factory(pooling, stop_ids, min_count, method):
    from tokjax.losses.text2token import make_text2token_loss

    return make_text2token_loss(pooling=pooling, stop_ids=tuple(stop_ids), min_count=int(min_count), method=method)


def _self_generated_factory(prob, sample, temperature, method, block_size):
    from tokjax.losses.self_generated import make_scheduled_sampling_loss

    return make_scheduled_sampling_loss(prob=float(prob), sample=bool(sample), temperature=float(temperature),
                                        method=method, block_size=int(block_size))


def _teacher(reference: Any, option: str):
    if not (isinstance(reference, str) and reference.startswith("pretrained:")):
        raise ValueError(f"{option} must be a 'pretrained:NAME' reference, got {reference!r}")
    return _reference(reference)


def _kd_factory(teacher, ce_weight, kd_weight, temperature, reduction):
    from tokjax.losses._distill import make_kd_loss

    return make_kd_loss(_teacher(teacher, "teacher"), ce_weight=float(ce_weight), kd_weight=float(kd_weight),
                        temperature=float(temperature), reduction=reduction)


def _gld_factory(teacher, k, gld_weight, kd_weight, ce_weight, temperature, values, method, reduction):
    from tokjax.losses.infigfusion import make_gld_loss

    return make_gld_loss(_teacher(teacher, "teacher"), k=int(k), gld_weight=float(gld_weight),
                         kd_weight=float(kd_weight), ce_weight=float(ce_weight), temperature=float(temperature),
                         values=values, method=method, reduction=reduction)


def _dual_head_kd_factory(teacher, gamma, alpha, temperature, grad, reduction):
    from tokjax.losses.dual_head_kd import make_dual_head_kd_loss

    return make_dual_head_kd_loss(_teacher(teacher, "teacher"), gamma=float(gamma), alpha=float(alpha),
                                  temperature=float(temperature), grad=grad, reduction=reduction)


def _aligndistil_factory(dpo, reverse, beta, beta2, temperature, adaptive, reduction):
    from tokjax.losses.aligndistil import make_aligndistil_loss

    return make_aligndistil_loss(_teacher(dpo, "dpo"), _teacher(reverse, "reverse"), beta=float(beta),
                                 beta2=float(beta2), temperature=float(temperature), adaptive=bool(adaptive),
                                 reduction=reduction)


def _dpo_factory(beta, reference, method, block_size):
    from tokjax.losses.dpo import make_dpo_loss

    return make_dpo_loss(beta=float(beta), ref=_reference(reference), method=method, block_size=int(block_size))


def _register_builtins() -> None:
    from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE

    register_loss("next_token", _next_token_factory,
                  {"method": "cut", "block_size": DEFAULT_BLOCK_SIZE, "reduction": "token_mean", "z_loss": 0.0,
                   "softcap": None},
                  doc="next-token cross-entropy (method 'cut' = P29 cut cross-entropy, 'naive' = logits)")
    register_loss("prior", _prior_factory,
                  {"alpha": 1.0, "normalize": "sequence", "reference": "batch", "method": "cut",
                   "block_size": DEFAULT_BLOCK_SIZE, "reduction": "token_mean"},
                  doc="P78 PRIOR token weights (1 - P_ref)^alpha; reference 'batch' or 'pretrained:NAME'")
    register_loss("text2token", _text2token_factory,
                  {"pooling": "mean", "stop_ids": [], "min_count": 1, "method": "data"},
                  doc="P71 Text2Token: KL(target token distribution || LM head of the pooled hidden state)")
    register_loss("scheduled_sampling", _self_generated_factory,
                  {"prob": 0.25, "sample": False, "temperature": 1.0, "method": "cut", "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P49 batch-scheduled sampling: inputs mixed with the model's own tokens with probability prob "
                      "(batch['ss_prob'] overrides it per step)")
    # --- distillation (teachers are "pretrained:NAME" references, loaded once per spec) --------------
    register_loss("kd", _kd_factory,
                  {"teacher": "pretrained:tiny-pydocs", "ce_weight": 1.0, "kd_weight": 1.0, "temperature": 1.0,
                   "reduction": "token_mean"},
                  doc="plain logit distillation: ce_weight * CE + kd_weight * KL(teacher || student)")
    register_loss("gld", _gld_factory,
                  {"teacher": "pretrained:tiny-pydocs", "k": 10, "gld_weight": 1.0, "kd_weight": 1.0,
                   "ce_weight": 1.0, "temperature": 1.0, "values": "logits", "method": "aligned",
                   "reduction": "token_mean"},
                  doc="P12 InfiGFusion: CE + KD + Graph-on-Logits distillation (sorted Gromov-Wasserstein)")
    register_loss("dual_head_kd", _dual_head_kd_factory,
                  {"teacher": "pretrained:tiny-pydocs", "gamma": 1.0, "alpha": 1.0, "temperature": 2.0,
                   "grad": "sum", "reduction": "token_mean"},
                  doc="P34 Dual-Head KD; params need the auxiliary head first "
                      "(tokjax.losses.dual_head_kd.init_aux_head)")
    register_loss("aligndistil", _aligndistil_factory,
                  {"dpo": None, "reverse": None, "beta": 0.1, "beta2": 10.0, "temperature": 1.0,
                   "adaptive": True, "reduction": "seq_mean"},
                  doc="P15 AlignDistil: KL to the token-adaptively extrapolated DPO / reverse-DPO teacher; "
                      "dpo and reverse are 'pretrained:NAME' references")
    # --- preferences ------------------------------------------------------------------------------
    register_loss("dpo", _dpo_factory,
                  {"beta": 0.1, "reference": "batch", "method": "cut", "block_size": DEFAULT_BLOCK_SIZE},
                  doc="sequence DPO (TRL sigmoid form; P65 implicit token rewards in tokjax.losses.dpo); tokens "
                      "[2B, T+1] = B chosen rows then B rejected rows; reference 'batch' (batch['ref_logp'] "
                      "[2B, T]) or 'pretrained:NAME'")


_register_builtins()
