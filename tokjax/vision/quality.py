"""Download-free image quality measures: a small JAX MLP classifier, class consistency and an FD proxy.

FID and FVD need an Inception network that tokjax cannot download, so image generators are
judged, as in the notes' "quality proxies", by a small classifier trained on real images:

* class consistency -- the fraction of class-conditional samples that the classifier assigns to
  the class they were generated for (:func:`class_consistency`);
* an FD proxy -- the Fréchet distance between the classifier's penultimate features of two image
  sets (:func:`fd_proxy`, on :func:`tokjax.metrics.frechet.frechet_distance`);
* a reward -- log p(class | image) under a second classifier (other seed, other half of the data),
  :func:`class_logprob`.

The classifier is an MLP on the flattened pixels: x = 2 * image - 1,

    f1 = gelu(x W1 + b1),  f2 = gelu(f1 W2 + b2) (the features),  logits = f2 W_out + b_out,

trained with mean softmax cross-entropy (:func:`classifier_loss`, a ``loss_fn`` for
``tokjax.train.train(None, ...)``); the one-call fit with on-disk caching is
:func:`tokjax.train.recipes.vision_classifier.train_classifier`. Images are ``[B, H, W]`` or
``[B, H, W, C]`` floats in [0, 1]; a parameter set fits one pixel count H*W*C. Every function is
pure and jit-compatible; called with concrete arrays they first check values (pixels in [0, 1]
and finite, labels in range) and raise ValueError.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "class_consistency", "class_logprob", "classifier_batch_fn", "classifier_features", "classifier_init",
    "classifier_logits", "classifier_loss", "fd_proxy",
]

_KEYS = ("w1", "b1", "w2", "b2", "w_out", "b_out")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def classifier_init(key, image_shape, num_classes: int, hidden: int = 256) -> dict:
    """Returns fresh classifier params ``{"w1", "b1", "w2", "b2", "w_out", "b_out"}`` (float32).

    ``image_shape`` is (H, W) or (H, W, C); weights are N(0, 1/fan_in), biases 0 (lecun normal).

    Raises:
      ValueError: ``image_shape`` not 2 or 3 positive ints, ``num_classes`` < 2 or ``hidden`` < 1.
    """
    try:
        shape = tuple(operator.index(s) for s in image_shape)
    except TypeError:
        raise ValueError(f"image_shape must be (H, W) or (H, W, C) ints, got {image_shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (H, W, C) positive ints, got {image_shape!r}")
    for name, v, lo in (("num_classes", num_classes, 2), ("hidden", hidden, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    f = math.prod(shape)
    k1, k2, k3 = jax.random.split(key, 3)
    normal = lambda k, a, b: jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a)  # noqa: E731
    return {
        "w1": normal(k1, f, hidden), "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": normal(k2, hidden, hidden), "b2": jnp.zeros((hidden,), jnp.float32),
        "w_out": normal(k3, hidden, num_classes), "b_out": jnp.zeros((num_classes,), jnp.float32),
    }


def _check_params(params) -> tuple[int, int]:
    """Returns (pixels per image, classes) after checking the params' keys and shapes."""
    if not isinstance(params, dict) or set(params) != set(_KEYS):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"classifier params must be a dict with keys {list(_KEYS)} (classifier_init), got {got}")
    f, h = np.shape(params["w1"])
    k = np.shape(params["w_out"])[-1]
    want = {"w1": (f, h), "b1": (h,), "w2": (h, h), "b2": (h,), "w_out": (h, k), "b_out": (k,)}
    for name, shape in want.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(f"classifier params[{name!r}] must have shape {shape}, got {np.shape(params[name])}")
    return f, k


def _check_images(images, pixels: int) -> jax.Array:
    """Returns images as float32 [B, pixels] after checking shape and (when concrete) values."""
    if _concrete(images):
        a = np.asarray(images)
        if a.dtype.kind not in "fiub":
            raise ValueError(f"images must be numeric, got dtype {a.dtype}")
        if a.ndim not in (3, 4):
            raise ValueError(f"images must be [B, H, W] or [B, H, W, C], got shape {a.shape}")
        if a.size and not np.isfinite(a).all():
            raise ValueError("images contain NaN or inf; pixels must be finite values in [0, 1]")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"pixels must lie in [0, 1], got values in [{a.min()}, {a.max()}]")
    shape = jnp.shape(images)
    if len(shape) not in (3, 4):
        raise ValueError(f"images must be [B, H, W] or [B, H, W, C], got shape {shape}")
    if math.prod(shape[1:]) != pixels:
        raise ValueError(f"images of shape {shape[1:]} have {math.prod(shape[1:])} pixels per image; "
                         f"this classifier takes {pixels} (H*W*C of its training images)")
    if isinstance(images, np.ndarray):  # stay on the host: no eager device op per call
        return images.astype(np.float32, copy=False).reshape(shape[0], pixels)
    return jnp.asarray(images, jnp.float32).reshape(shape[0], pixels)


def _check_labels(labels, batch: int, classes: int) -> jax.Array:
    if _concrete(labels):
        a = np.asarray(labels)
        if a.dtype.kind not in "iu" and a.size:
            raise ValueError(f"labels must be integer class ids, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= classes):
            raise ValueError(f"labels must lie in [0, {classes}), got values in [{a.min()}, {a.max()}]")
    if jnp.shape(labels) != (batch,):
        raise ValueError(f"labels must have shape [{batch}] (one per image), got {jnp.shape(labels)}")
    if isinstance(labels, (np.ndarray, list, tuple)):
        return np.asarray(labels).astype(np.int32)
    return jnp.asarray(labels, jnp.int32)


def _features(params, x):
    h = jax.nn.gelu((2.0 * x - 1.0) @ params["w1"] + params["b1"])
    return jax.nn.gelu(h @ params["w2"] + params["b2"])


def _logits(params, x):
    return _features(params, x) @ params["w_out"] + params["b_out"]


def _consistency(params, x, y):
    return jnp.mean(jnp.argmax(_logits(params, x), -1) == y)


def _logprob(params, x, y):
    logp = jax.nn.log_softmax(_logits(params, x), -1)
    return jnp.take_along_axis(logp, y[:, None], -1)[:, 0]


_features_jit = jax.jit(_features)
_logits_jit = jax.jit(_logits)
_consistency_jit = jax.jit(_consistency)
_logprob_jit = jax.jit(_logprob)


def classifier_features(params, images) -> jax.Array:
    """Returns float32 ``[B, hidden]``: the penultimate features f2 of each image (for an FD proxy)."""
    pixels, _ = _check_params(params)
    return _features_jit(params, _check_images(images, pixels))


def classifier_logits(params, images) -> jax.Array:
    """Returns float32 ``[B, num_classes]``: the classifier's logits for each image."""
    pixels, _ = _check_params(params)
    return _logits_jit(params, _check_images(images, pixels))


def classifier_loss(params, cfg, batch, rng=None):
    """Returns (loss, metrics): mean softmax cross-entropy of ``batch["labels"]`` given ``batch["images"]``.

    The ``tokjax.train`` loss signature for ``train(None, ...)``: ``cfg`` must be None (the
    classifier is no transformer) and ``rng`` is unused. An optional ``batch["weights"]`` [B]
    weighs the examples (the loss is then sum(w * ce) / sum(w)). Metrics: ``loss``, ``accuracy``.
    """
    del rng
    if cfg is not None:
        raise ValueError("classifier_loss trains a plain pytree: call tokjax.train.train(None, ...) (cfg=None)")
    pixels, classes = _check_params(params)
    x = _check_images(batch["images"], pixels)
    labels = _check_labels(batch["labels"], x.shape[0], classes)
    logits = _logits(params, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    w = jnp.ones_like(ce) if "weights" not in batch else jnp.asarray(batch["weights"], jnp.float32)
    if w.shape != ce.shape:
        raise ValueError(f"batch['weights'] must have shape {ce.shape}, got {w.shape}")
    denom = jnp.maximum(w.sum(), 1e-9)
    loss = (w * ce).sum() / denom
    accuracy = (w * (jnp.argmax(logits, -1) == labels)).sum() / denom
    return loss, {"loss": loss, "accuracy": accuracy}


def class_consistency(params, images, labels) -> jax.Array:
    """Returns a float32 scalar: the fraction of ``images`` whose argmax class is the intended ``labels``.

    ``labels`` int ``[B]`` in [0, num_classes) (for class-conditional samples, the class each was
    generated for; for real images this is the classifier's accuracy). Ties go to the lowest class.
    """
    pixels, classes = _check_params(params)
    x = _check_images(images, pixels)
    y = _check_labels(labels, x.shape[0], classes)
    if x.shape[0] == 0:
        raise ValueError("class_consistency needs at least one image")
    return _consistency_jit(params, x, y)


def class_logprob(params, images, labels) -> jax.Array:
    """Returns float32 ``[B]``: log p(labels[b] | images[b]) under the classifier (a per-image reward)."""
    pixels, classes = _check_params(params)
    x = _check_images(images, pixels)
    y = _check_labels(labels, x.shape[0], classes)
    return _logprob_jit(params, x, y)


def fd_proxy(params, x_images, y_images, *, batch_size: int = 4096) -> float:
    """Returns the Fréchet distance between the classifier features of two image sets (a download-free FID).

    Features are :func:`classifier_features` computed ``batch_size`` images at a time, and the
    distance is :func:`tokjax.metrics.frechet.frechet_distance` (float64; at least 2 images per
    set, and many more than ``hidden`` for a stable covariance: use >= 2000 and report the
    real-vs-real floor and a bootstrap standard error, e.g. ``tokjax.metrics.frechet.bootstrap_se``).
    """
    from tokjax.metrics.frechet import frechet_distance

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    pixels, _ = _check_params(params)
    feats = []
    for imgs in (x_images, y_images):
        x = _check_images(imgs, pixels)
        n = x.shape[0]
        size = max(1, min(batch_size, n))
        # every chunk has the same shape (the last one zero-padded), so the features compile once
        xp = np if isinstance(x, np.ndarray) else jnp
        padded = xp.concatenate([x, xp.zeros((-n % size, pixels), xp.float32)]) if n % size else x
        chunks = [np.asarray(_features_jit(params, padded[i:i + size]), np.float64) for i in range(0, n, size)]
        feats.append(np.concatenate(chunks)[:n] if chunks else np.zeros((0, np.shape(params["w2"])[1])))
    return float(frechet_distance(feats[0], feats[1]))


def classifier_batch_fn(images, labels, *, batch_size: int, seed: int = 0):
    """Returns ``batch_fn(step) -> {"images": [batch_size, ...], "labels": [batch_size]}`` for ``tokjax.train``.

    Step s takes the rows ``tokjax.data.batch_indices(N, batch_size, s, seed=seed)`` (a fresh
    permutation per epoch, a pure function of the step), so a resumed run sees the same batches.
    The arrays are checked once here (shapes, pixels in [0, 1], integer labels >= 0).
    """
    from tokjax.data import batch_indices

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
    _check_images(images, math.prod(images.shape[1:]))
    if labels.shape != (images.shape[0],) or (labels.dtype.kind not in "iu" and labels.size):
        raise ValueError(f"labels must be integer class ids of shape [{images.shape[0]}], "
                         f"got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not \
            1 <= batch_size <= images.shape[0]:
        raise ValueError(f"batch_size must be an int in [1, {images.shape[0]}] (the number of images), "
                         f"got {batch_size!r}")
    labels = labels.astype(np.int32)
    n = images.shape[0]

    def batch_fn(step: int) -> dict:
        idx = batch_indices(n, batch_size, step, seed=seed)
        return {"images": images[idx], "labels": labels[idx]}

    return batch_fn
