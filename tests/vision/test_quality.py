"""The download-free quality classifier: accuracy on glyphs, chance on noise, numpy oracles, FD proxy, cache."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.data._glyphs import glyphs
from tokjax.train.recipes.vision_classifier import classifier_cache_path, train_classifier
from tokjax.vision.quality import (
    class_consistency, class_logprob, classifier_batch_fn, classifier_features, classifier_init, classifier_logits,
    classifier_loss, fd_proxy,
)

STEPS = 1000


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    train = glyphs(5000, size=16, seed=0)
    test = glyphs(2000, size=16, seed=1)
    params = train_classifier(train.images, train.labels, steps=STEPS, seed=0, num_classes=10, cache=False)
    return params, train, test


def _np_gelu(x):  # jax.nn.gelu's default tanh form
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _np_logits(params, images):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = 2 * images.reshape(images.shape[0], -1).astype(np.float64) - 1
    f = _np_gelu(_np_gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])
    return f, f @ p["w_out"] + p["b_out"]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_glyph_classifier_generalises(fitted):
    params, train, test = fitted
    acc = float(class_consistency(params, test.images, test.labels))
    assert acc >= 0.95, acc
    assert float(class_consistency(params, train.images, train.labels)) >= acc - 0.005


@pytest.mark.slow
def test_chance_on_noise(fitted):
    params, _, _ = fitted
    rng = np.random.default_rng(0)
    noise = rng.random((4000, 16, 16), dtype=np.float32)
    labels = rng.integers(0, 10, 4000)
    acc = float(class_consistency(params, noise, labels))
    assert abs(acc - 0.1) < 0.025, acc  # ~5 standard errors of a fair 1-in-10 guess at n = 4000


@pytest.mark.slow
def test_consistency_logits_and_features_match_numpy(fitted):
    params, _, test = fitted
    x, y = test.images[:500], test.labels[:500]
    feats, logits = _np_logits(params, x)
    np.testing.assert_allclose(classifier_features(params, x), feats, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(classifier_logits(params, x), logits, rtol=2e-4, atol=2e-4)
    want = np.mean(np.argmax(logits, -1) == y)
    assert float(class_consistency(params, x, y)) == pytest.approx(want, abs=1e-6)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    np.testing.assert_allclose(class_logprob(params, x, y), logp[np.arange(500), y], rtol=1e-4, atol=1e-4)
    # channels-last images of the same pixel count are the same classifier input
    np.testing.assert_allclose(classifier_logits(params, x[..., None]), classifier_logits(params, x), atol=1e-6)


def test_jit_compatible(fitted):
    params, _, test = fitted
    x, y = jnp.asarray(test.images[:64]), jnp.asarray(test.labels[:64])
    np.testing.assert_allclose(jax.jit(classifier_logits)(params, x), classifier_logits(params, x), atol=1e-5)
    assert float(jax.jit(class_consistency)(params, x, y)) == pytest.approx(float(class_consistency(params, x, y)))
    loss, metrics = jax.jit(classifier_loss, static_argnums=1)(params, None, {"images": x, "labels": y})
    assert np.isfinite(float(loss)) and 0 <= float(metrics["accuracy"]) <= 1


def test_fd_proxy(fitted):
    from tokjax.metrics.frechet import frechet_distance

    params, train, test = fitted
    a, b = train.images[:2000], test.images
    assert fd_proxy(params, a, a) == pytest.approx(0.0, abs=1e-6)
    real = fd_proxy(params, a, b, batch_size=333)  # chunked (last chunk padded) = all at once
    want = frechet_distance(np.asarray(classifier_features(params, a), np.float64),
                            np.asarray(classifier_features(params, b), np.float64))
    assert real == pytest.approx(want, rel=1e-5)
    rng = np.random.default_rng(1)
    previous = real
    for sigma in (0.1, 0.3, 1.0):  # strictly rising with pixel noise
        noisy = np.clip(b + sigma * rng.standard_normal(b.shape), 0, 1).astype(np.float32)
        fd = fd_proxy(params, a, noisy)
        assert fd > previous, (sigma, fd, previous)
        previous = fd


def test_loss_weights_and_batch_fn():
    params = classifier_init(jax.random.key(0), (4, 4), 3, hidden=8)
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 4, 4), dtype=np.float32), np.array([0, 1, 2, 0, 1, 2])
    _, logits = _np_logits(params, x)
    shifted = logits - logits.max(-1, keepdims=True)
    ce = -(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))[np.arange(6), y]
    w = np.array([1.0, 0.0, 2.0, 0.5, 0.0, 1.0], np.float32)
    loss_fn = jax.jit(classifier_loss, static_argnums=1)
    loss, _ = loss_fn(params, None, {"images": x, "labels": y, "weights": w})
    assert float(loss) == pytest.approx((w * ce).sum() / w.sum(), rel=1e-5)
    loss, m = loss_fn(params, None, {"images": x, "labels": y})
    assert float(loss) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == y))
    fn = classifier_batch_fn(x, y, batch_size=4, seed=3)
    b0, again = fn(0), fn(0)
    np.testing.assert_array_equal(b0["images"], again["images"])
    assert b0["images"].shape == (4, 4, 4) and b0["labels"].dtype == np.int32
    for i, img in enumerate(b0["images"]):  # rows stay paired with their labels
        j = next(j for j in range(6) if np.array_equal(x[j], img))
        assert b0["labels"][i] == y[j]


def test_cache_is_keyed_by_data_and_settings(tmp_path):
    g = glyphs(200, size=8, seed=2)
    kw = dict(steps=20, seed=0, num_classes=10, hidden=16, batch_size=32, cache_dir=tmp_path)
    path = classifier_cache_path(g.images, g.labels, **kw)
    assert not path.exists()
    first = train_classifier(g.images, g.labels, **kw)
    assert path.is_file() and Path(path).parent == tmp_path / "vision_classifier"
    again = train_classifier(g.images, g.labels, **kw)  # read back, bit for bit
    for k in first:
        np.testing.assert_array_equal(np.asarray(first[k]), np.asarray(again[k]))
    # any change of data or of a setting is another entry
    other = g.images.copy()
    other[0, 0, 0] = 0.5 if other[0, 0, 0] != 0.5 else 0.25
    keys = {path,
            classifier_cache_path(other, g.labels, **kw),
            classifier_cache_path(g.images, (g.labels + 1) % 10, **kw),
            classifier_cache_path(g.images, g.labels, **{**kw, "steps": 21}),
            classifier_cache_path(g.images, g.labels, **{**kw, "seed": 1}),
            classifier_cache_path(g.images, g.labels, **{**kw, "lr": 1e-3}),
            classifier_cache_path(g.images, g.labels, **{**kw, "hidden": 17}),
            classifier_cache_path(g.images.astype(np.float64), g.labels, **kw)}
    assert len(keys) == 7  # float64 pixels hash as float32: the same data, the same entry
    # an unreadable file is retrained and replaced, never returned
    path.write_bytes(b"not an npz")
    fixed = train_classifier(g.images, g.labels, **kw)
    np.testing.assert_array_equal(np.asarray(fixed["w1"]), np.asarray(first["w1"]))
    with np.load(path) as z:
        assert set(z.files) >= {"w1", "b1", "w2", "b2", "w_out", "b_out"}


@pytest.mark.parametrize("make, match", [
    (lambda p, x, y: class_consistency(p, x * 2, y), r"\[0, 1\]"),
    (lambda p, x, y: class_consistency(p, np.where(x > 0.5, np.nan, x), y), "NaN"),
    (lambda p, x, y: class_consistency(p, x[:, :8], y), "pixels per image"),
    (lambda p, x, y: class_consistency(p, x[0], y), "shape"),
    (lambda p, x, y: class_consistency(p, x, y + 10), r"\[0, 10\)"),
    (lambda p, x, y: class_consistency(p, x, y[:3]), "shape"),
    (lambda p, x, y: class_consistency(p, x, y.astype(float)), "integer"),
    (lambda p, x, y: class_consistency(p, x[:0], y[:0]), "at least one"),
    (lambda p, x, y: classifier_logits({"w1": p["w1"]}, x), "keys"),
    (lambda p, x, y: classifier_logits({**p, "b2": p["b1"][:3]}, x), "shape"),
    (lambda p, x, y: classifier_loss(p, "cfg", {"images": x, "labels": y}), "plain pytree"),
    (lambda p, x, y: fd_proxy(p, x[:1], x), "at least 2 rows"),
    (lambda p, x, y: fd_proxy(p, x, x, batch_size=0), "batch_size"),
    (lambda p, x, y: classifier_init(jax.random.key(0), (16,), 10), "image_shape"),
    (lambda p, x, y: classifier_init(jax.random.key(0), (16, 16), 1), "num_classes"),
    (lambda p, x, y: classifier_init(jax.random.key(0), (16, 16), 10, hidden=0), "hidden"),
    (lambda p, x, y: classifier_batch_fn(x, y, batch_size=11), "batch_size"),
    (lambda p, x, y: train_classifier(x, y + 10, steps=1, num_classes=10, cache=False), r"\[0, num_classes=10\)"),
    (lambda p, x, y: train_classifier(x, y, steps=0, batch_size=8, cache=False), "steps"),
    (lambda p, x, y: train_classifier(x, y, steps=5, batch_size=11, cache=False), "batch_size"),
    (lambda p, x, y: train_classifier(x - 1, y, steps=5, cache=False), r"\[0, 1\]"),
    (lambda p, x, y: train_classifier(x, y, steps=5, lr=0.0, cache=False), "lr"),
])
def test_bad_input(make, match):
    params = classifier_init(jax.random.key(0), (16, 16), 10, hidden=8)
    g = glyphs(10, seed=0)
    with pytest.raises(ValueError, match=match):
        make(params, g.images, g.labels.astype(np.int64))
