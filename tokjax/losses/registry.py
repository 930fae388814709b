"""Named training losses: ``name + options -> loss_fn(params, cfg, batch, rng) -> (loss, metrics)``.

A YAML run config picks its loss by name (``tokjax.train.TrainConfig.loss``)::

    train:
      loss: {name: prior, alpha: 0.5, reference: "pretrained:tiny-pydocs"}

:func:`make_loss` validates the name and the options (ValueError listing the valid ones) and
returns a :class:`RegisteredLoss`: a callable with the train signature that compares and hashes by
(name, options), so two runs of the same config share compiled train steps and a resumed run sees
the same loss. :func:`register_loss` adds a loss; each entry declares its options and defaults,
and which options are *models* (a reference, a teacher).

A model option takes a Model or ``(params, cfg)`` pair (``make_loss("kd", teacher=model)``), a
reference option also ``"batch"`` (the batch carries ``ref_logp`` [B, T]), and either a
``"SOURCE:NAME"`` string, which is how a YAML config names a model. This module never loads a
model itself (it sits below ``tokjax.pretrained`` and ``tokjax.train``): layers above register a
loader per source with :func:`register_model_source`; importing :mod:`tokjax.pretrained` (which
``import tokjax`` does) registers ``pretrained:NAME`` -> ``tokjax.pretrained(NAME)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

__all__ = ["LossEntry", "RegisteredLoss", "loss_names", "loss_options", "loss_from_spec", "make_loss",
           "model_sources", "register_loss", "register_model_source", "resolve_model"]


@dataclasses.dataclass(frozen=True)
class LossEntry:
    """A registered loss: ``factory(**options) -> loss_fn``, its options' defaults and which options are models."""

    name: str
    factory: Callable[..., Callable]
    defaults: tuple  # ((option, default), ...)
    doc: str = ""
    models: tuple[str, ...] = ()  # options that take a model (Model, (params, cfg) or "SOURCE:NAME")


_REGISTRY: dict[str, LossEntry] = {}
_BUILT: dict[tuple, "RegisteredLoss"] = {}
_MODEL_SOURCES: dict[str, Callable[[str], Any]] = {}


class _ModelArg:
    """A model passed as a loss option: hashed and compared by identity, shown by a content fingerprint.

    Identity keeps hashing cheap (equal objects share compiled train steps); the fingerprint (a hash
    of the config and the parameter bytes, computed when first shown) makes the loss's description
    in a run record the same across processes, so a resumed run with the same teacher is accepted.
    """

    __slots__ = ("model", "_shown")

    def __init__(self, model):
        self.model = model
        self._shown = None

    def __eq__(self, other):
        return isinstance(other, _ModelArg) and other.model is self.model

    def __hash__(self):
        return id(self.model)

    def __repr__(self):
        if self._shown is None:
            import hashlib

            import jax
            import numpy as np

            params, cfg = _pair(self.model, "model")
            h = hashlib.sha256(repr(cfg).encode())
            for leaf in jax.tree.leaves(jax.device_get(params)):
                a = np.ascontiguousarray(np.asarray(leaf))
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
            self._shown = f"<model sha256:{h.hexdigest()[:16]}>"
        return self._shown


def _freeze(value: Any) -> Any:
    """Returns ``value`` with lists/dicts turned into tuples (hashable; the same for equal YAML values)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, _ModelArg):
        return value.model
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# ------------------------------------------------------------------------------ model options
def register_model_source(prefix: str, loader: Callable[[str], Any], *, overwrite: bool = False) -> None:
    """Returns None after making ``"PREFIX:NAME"`` model options resolve to ``loader(NAME)`` (a Model or
    ``(params, cfg)``). Layers above the losses (``tokjax.pretrained``) register their sources here."""
    if not isinstance(prefix, str) or not prefix.isidentifier():
        raise ValueError(f"a model source prefix must be an identifier such as 'pretrained', got {prefix!r}")
    if not callable(loader):
        raise ValueError(f"loader must be callable name -> Model, got {loader!r}")
    if prefix in _MODEL_SOURCES and _MODEL_SOURCES[prefix] is not loader and not overwrite:
        raise ValueError(f"a model source {prefix!r} is already registered (pass overwrite=True to replace it)")
    _MODEL_SOURCES[prefix] = loader
    for key in [k for k in _BUILT if any(isinstance(v, str) and v.startswith(prefix + ":") for _, v in k[1])]:
        del _BUILT[key]  # losses built from the old loader's models


def model_sources() -> tuple[str, ...]:
    """Returns the registered model source prefixes (``"pretrained"`` once tokjax.pretrained is imported)."""
    return tuple(sorted(_MODEL_SOURCES))


def _pair(model: Any, option: str) -> tuple[Any, Any] | None:
    """Returns (params, cfg) of a Model or a ``(params, cfg)`` pair, else None."""
    if hasattr(model, "params") and hasattr(model, "cfg"):
        return model.params, model.cfg
    if isinstance(model, tuple) and len(model) == 2 and hasattr(model[1], "vocab_size"):
        return model
    return None


def resolve_model(value: Any, option: str, *, allow_batch: bool = False) -> tuple[Any, Any] | None:
    """Returns the ``(params, cfg)`` a model option names, or None for ``"batch"`` (when ``allow_batch``).

    ``value`` is a Model, a ``(params, cfg)`` pair, or ``"SOURCE:NAME"`` for a source registered with
    :func:`register_model_source`. Raises ValueError naming ``option`` and the accepted forms.
    """
    if isinstance(value, _ModelArg):
        value = value.model
    if allow_batch and value == "batch":
        return None
    pair = _pair(value, option)
    if pair is not None:
        return pair
    if isinstance(value, str) and ":" in value:
        prefix, name = value.split(":", 1)
        if prefix not in _MODEL_SOURCES:
            raise ValueError(f"{option} {value!r}: no model source {prefix!r} is registered (registered: "
                             f"{list(model_sources())}); `import tokjax.pretrained` registers 'pretrained', or pass "
                             "the model itself")
        loaded = _MODEL_SOURCES[prefix](name)
        pair = _pair(loaded, option)
        if pair is None:
            raise ValueError(f"{option} {value!r}: the {prefix!r} source returned {type(loaded).__name__}, not a "
                             "Model or (params, cfg)")
        return pair
    batch = "'batch' (batch['ref_logp'] [B, T]), " if allow_batch else ""
    raise ValueError(f"{option} must be {batch}a Model or (params, cfg) pair, or a 'SOURCE:NAME' model reference "
                     f"such as 'pretrained:tiny-pydocs'; got {value!r}")


@dataclasses.dataclass(frozen=True)
class RegisteredLoss:
    """A loss built from the registry, callable as ``(params, cfg, batch, rng) -> (loss, metrics)``.

    Equality and hashing use (name, options) only. ``__qualname__`` is a stable description,
    which is what the train loop records in ``run.json`` to refuse resuming with another loss.
    """

    name: str
    options: tuple  # sorted ((option, frozen value), ...) as given (defaults not filled in)
    fn: Callable = dataclasses.field(compare=False, hash=False, repr=False)

    def __getattr__(self, attr):
        # Built on first use: showing a model option hashes its parameters, which only a run record needs.
        if attr != "__qualname__":
            raise AttributeError(attr)
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options)
        qualname = f"RegisteredLoss[{self.name}]({opts})"
        object.__setattr__(self, "__qualname__", qualname)
        return qualname

    def __call__(self, params, cfg, batch, rng=None):
        return self.fn(params, cfg, batch, rng)

    def spec(self) -> dict:
        """Returns the ``{"name": ..., **options}`` mapping this loss was built from (YAML-serialisable)."""
        return {"name": self.name, **{k: _thaw(v) for k, v in self.options}}


def register_loss(name: str, factory: Callable[..., Callable], defaults: Mapping[str, Any], *, doc: str = "",
                  overwrite: bool = False, models: tuple[str, ...] = ()) -> None:
    """Returns None after registering ``factory`` under ``name``; ``defaults`` lists every option it accepts and
    ``models`` those that take a model (the factory resolves them with :func:`resolve_model`)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a loss name must be a non-empty string without surrounding spaces, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(factory):
        raise ValueError(f"factory must be callable, got {factory!r}")
    if "name" in defaults:
        raise ValueError("'name' is reserved and cannot be a loss option")
    models = (models,) if isinstance(models, str) else tuple(models)
    if set(models) - set(defaults):
        raise ValueError(f"models {sorted(set(models) - set(defaults))} must be options of {name!r}")
    _REGISTRY[name] = LossEntry(name, factory, tuple(defaults.items()), doc, models)
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
    return equal objects (the same object when every option is a plain value). A model option given
    as a Model or ``(params, cfg)`` compares by identity.
    """
    entry = _entry(name)
    valid = [k for k, _ in entry.defaults]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for loss {name!r}; valid options: {valid}")
    models = {k for k in entry.models if not isinstance(options.get(k), (str, type(None), _ModelArg))}
    frozen = tuple(sorted((k, _ModelArg(v) if k in models else v if isinstance(v, _ModelArg) else _freeze(v))
                          for k, v in options.items()))
    key = (name, frozen)
    try:
        hash(key)
    except TypeError:
        raise ValueError(f"options of loss {name!r} must be plain values (numbers, strings, lists; models for "
                         f"{list(entry.models)}), got {options!r}") from None
    cache = not any(isinstance(v, _ModelArg) for _, v in frozen)  # do not keep passed-in models alive
    if not cache or key not in _BUILT:
        kwargs = {**dict(entry.defaults), **{k: _thaw(v) if isinstance(v, _ModelArg) else v for k, v in options.items()}}
        try:
            fn = entry.factory(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"loss {name!r}: {e}") from None
        built = RegisteredLoss(name, frozen, fn)
        if not cache:
            return built
        _BUILT[key] = built
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


def _reference(reference: Any):
    """Returns (ref_params, ref_cfg), or None for ``"batch"`` (the batch carries ``ref_logp``)."""
    return resolve_model(reference, "reference", allow_batch=True)


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
    return resolve_model(reference, option)


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


def _batch_or_model(value, option: str):
    """Returns (params, cfg) of a model option, or None for ``"batch"`` (the batch carries what it gives)."""
    return resolve_model(value, option, allow_batch=True)


def _cdpo_factory(beta, reference, positive, negative, beta_c, chunk, method, block_size):
    from tokjax.losses.critical_tokens import make_cdpo_loss

    return make_cdpo_loss(beta=float(beta), ref=_reference(reference), positive=_batch_or_model(positive, "positive"),
                          negative=_batch_or_model(negative, "negative"), beta_c=float(beta_c), chunk=int(chunk),
                          method=method, block_size=int(block_size))


def _tgdpo_factory(beta, alpha, reference, reward_model, method, block_size):
    from tokjax.losses.tgdpo import make_tgdpo_loss

    return make_tgdpo_loss(beta=float(beta), alpha=float(alpha), ref=_reference(reference),
                           reward_model=_batch_or_model(reward_model, "reward_model"), method=method,
                           block_size=int(block_size))


def _t_reg_factory(beta, alpha, reference, evaluator, method, block_size):
    from tokjax.losses.t_reg import make_t_reg_loss

    return make_t_reg_loss(beta=float(beta), alpha=float(alpha), ref=_reference(reference),
                           evaluator=_batch_or_model(evaluator, "evaluator"), method=method, block_size=int(block_size))


def _inverse_rl_factory(lam, gamma, method, block_size, reduction):
    from tokjax.losses.inverse_rl import make_inverse_rl_loss

    return make_inverse_rl_loss(lam=float(lam), gamma=float(gamma), method=method, block_size=int(block_size),
                                reduction=reduction)


def _fourier_head_factory(num_bins, gamma, key):
    from tokjax.losses.fourier_head import fourier_head_loss

    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be an int >= 1 (the number of ordered bins the head predicts), got {num_bins!r}")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be the params entry holding the head, got {key!r}")
    gamma = float(gamma)

    def loss_fn(params, cfg, batch, rng=None):
        """P41: CE of batch['labels'] (bin ids) under the Fourier head on the model's final hidden states."""
        del rng
        if not isinstance(params, dict) or key not in params:
            raise ValueError(f"params has no {key!r} entry: add the head, e.g. params[{key!r}] = "
                             "tokjax.losses.fourier_head_init(rng, cfg.d_model, num_frequencies)")
        if not isinstance(batch, dict) or "labels" not in batch:
            raise ValueError("the fourier_head loss needs batch['labels'] int [B, T] (bin ids) and the model input "
                             "batch['inputs'] int [B, T] or batch['embeds'] [B, T, D] (batch['features'] [..., D] "
                             "with cfg=None)")
        if cfg is None:  # a plain pytree: the features are the head's input
            hidden = batch["features"]
        else:
            from tokjax.model.forward import Inputs, forward

            x = Inputs(embeds=batch["embeds"]) if "embeds" in batch else Inputs(tokens=batch["inputs"])
            hidden = forward(params, cfg, x, compute_logits=False).hidden
        return fourier_head_loss(params[key], hidden, batch["labels"], num_bins, gamma=gamma, mask=batch.get("mask"))

    return loss_fn


def _register_builtins() -> None:
    from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE

    register_loss("next_token", _next_token_factory,
                  {"method": "cut", "block_size": DEFAULT_BLOCK_SIZE, "reduction": "token_mean", "z_loss": 0.0,
                   "softcap": None},
                  doc="next-token cross-entropy (method 'cut' = P29 cut cross-entropy, 'naive' = logits)")
    register_loss("prior", _prior_factory,
                  {"alpha": 1.0, "normalize": "sequence", "reference": "batch", "method": "cut",
                   "block_size": DEFAULT_BLOCK_SIZE, "reduction": "token_mean"},
                  doc="P78 PRIOR token weights (1 - P_ref)^alpha; reference 'batch' (batch['ref_logp']) or a model",
                  models=("reference",))
    register_loss("text2token", _text2token_factory,
                  {"pooling": "mean", "stop_ids": [], "min_count": 1, "method": "data"},
                  doc="P71 Text2Token: KL(target token distribution || LM head of the pooled hidden state)")
    register_loss("scheduled_sampling", _self_generated_factory,
                  {"prob": 0.25, "sample": False, "temperature": 1.0, "method": "cut", "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P49 batch-scheduled sampling: inputs mixed with the model's own tokens with probability prob "
                      "(batch['ss_prob'] overrides it per step)")
    register_loss("fourier_head", _fourier_head_factory, {"num_bins": None, "gamma": 0.0, "key": "fourier_head"},
                  doc="P41 Fourier head over num_bins ordered bins: CE of batch['labels'] + gamma * the Fourier "
                      "regulariser; params[key] from tokjax.losses.fourier_head_init")
    # --- distillation (teachers are models: a Model, (params, cfg) or "SOURCE:NAME", loaded once per spec) ----
    register_loss("kd", _kd_factory,
                  {"teacher": "pretrained:tiny-pydocs", "ce_weight": 1.0, "kd_weight": 1.0, "temperature": 1.0,
                   "reduction": "token_mean"},
                  doc="plain logit distillation: ce_weight * CE + kd_weight * KL(teacher || student)",
                  models=("teacher",))
    register_loss("gld", _gld_factory,
                  {"teacher": "pretrained:tiny-pydocs", "k": 10, "gld_weight": 1.0, "kd_weight": 1.0,
                   "ce_weight": 1.0, "temperature": 1.0, "values": "logits", "method": "shared_vocab",
                   "reduction": "token_mean"},
                  doc="P12 InfiGFusion: CE + KD + Graph-on-Logits distillation (co-activation graphs over "
                      "vocabulary channels)",
                  models=("teacher",))
    register_loss("dual_head_kd", _dual_head_kd_factory,
                  {"teacher": "pretrained:tiny-pydocs", "gamma": 1.0, "alpha": 1.0, "temperature": 2.0,
                   "grad": "sum", "reduction": "token_mean"},
                  doc="P34 Dual-Head KD; params need the auxiliary head first "
                      "(tokjax.losses.dual_head_kd.init_aux_head)",
                  models=("teacher",))
    register_loss("aligndistil", _aligndistil_factory,
                  {"dpo": None, "reverse": None, "beta": 0.1, "beta2": 10.0, "temperature": 1.0,
                   "adaptive": True, "reduction": "seq_mean"},
                  doc="P15 AlignDistil: KL to the token-adaptively extrapolated DPO / reverse-DPO teacher; "
                      "dpo and reverse are models",
                  models=("dpo", "reverse"))
    # --- preferences ------------------------------------------------------------------------------
    register_loss("dpo", _dpo_factory,
                  {"beta": 0.1, "reference": "batch", "method": "cut", "block_size": DEFAULT_BLOCK_SIZE},
                  doc="sequence DPO (TRL sigmoid form; P65 implicit token rewards in tokjax.losses.dpo); tokens "
                      "[2B, T+1] = B chosen rows then B rejected rows; reference 'batch' (batch['ref_logp'] "
                      "[2B, T]) or a model",
                  models=("reference",))
    register_loss("cdpo", _cdpo_factory,
                  {"beta": 0.1, "reference": "batch", "positive": "batch", "negative": "batch", "beta_c": 1.0,
                   "chunk": 256, "method": "cut", "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P17 cDPO: token-weighted DPO, weight 1 - softmax((1+beta_c) z_pos - beta_c z_neg)[y] on rejected "
                      "tokens, 1 on chosen; positive/negative models, or 'batch' (batch['weights'] [2B, T])",
                  models=("reference", "positive", "negative"))
    register_loss("tgdpo", _tgdpo_factory,
                  {"beta": 0.1, "alpha": 0.5, "reference": "batch", "reward_model": "batch", "method": "cut",
                   "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P48 TGDPO: DPO with token weights 1 +/- alpha*beta*(log pi_rm - log pi_ref); reward_model a "
                      "DPO-trained model or 'batch' (batch['rm_logp'] [2B, T])",
                  models=("reference", "reward_model"))
    register_loss("t_reg", _t_reg_factory,
                  {"beta": 0.1, "alpha": 0.25, "reference": "batch", "evaluator": "batch", "method": "cut",
                   "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P51 T-REG: DPO + alpha * token reward regulariser from contrastive prompting "
                      "(batch['token_rewards'] [2B, T], or batch['better_tokens'] / ['worse_tokens'] scored by the "
                      "evaluator, default the reference model)",
                  models=("reference", "evaluator"))
    # --- imitation ---------------------------------------------------------------------------------
    register_loss("inverse_rl", _inverse_rl_factory,
                  {"lam": 0.1, "gamma": 1.0, "method": "cut", "block_size": DEFAULT_BLOCK_SIZE,
                   "reduction": "token_mean"},
                  doc="P60 offline IQLearn as TD-regularised MLE: -log pi + lam * (log pi + V(s) - gamma V(s'))^2, "
                      "Q = logits, V = logsumexp (lam 0 = next-token MLE)")


_register_builtins()
