"""Shared glyph pipeline of the discrete visual-token experiments (issue 24: P31 NAR, P13 NBP, and the other
image papers): data, models, training through tokjax.train, sampling through tokjax.generate, and the
download-free quality measures with their uncertainty.

* Data: class-conditional ``tokjax.data.glyphs`` on the canonical 8 x 8 grid at 8 levels
  (``PixelQuantizer(8)``); every real set used for quality goes through the same round trip
  (encode -> decode) as generated codes, so the classifier judges like with like.
* Quality: one classifier (``train_classifier`` on ``CLF_N`` round-tripped glyphs of their own seed,
  cached on disk by content), ``fd_proxy`` of generated images against ``REF_N`` held-out real images,
  ``class_consistency`` of the samples, the real-vs-real floor (``n`` fresh real images against the same
  reference) and a bootstrap SE of each FD.
* Models: ``model_config(vocab, n_layers)``: d = 64, 4 heads, axial 2-D RoPE (pos_dims = 2), the issue's
  "d = 64 x 2" model; ``train_arm`` trains one through ``experiments._harness.train_model``.
* Figure: :func:`fd_vs_passes` (FD of every arm against its forward passes per sample, with the floor).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

GRID, LEVELS, CLASSES = 8, 8, 10
CLF_N, CLF_STEPS, REF_N, TRAIN_N = 6000, 1000, 2000, 6000
# seeds of the data sets (disjoint draws of the glyph generator): model training, classifier, reference, floor
TRAIN_SEED, CLF_SEED, REF_SEED, FLOOR_SEED = 100, 101, 102, 103
BATCH, LR, CLASS_DROPOUT = 64, 3e-3, 0.1


@dataclasses.dataclass(frozen=True)
class GlyphSet:
    """Codes int32 [N, 8, 8] in [0, 8), their round-tripped images float32 [N, 8, 8] and labels int [N]."""

    codes: np.ndarray
    images: np.ndarray
    labels: np.ndarray


def quantizer():
    from tokjax.vision.tokenizers import PixelQuantizer

    return PixelQuantizer(LEVELS)


def vocab():
    from tokjax.vision.image_lm import ImageVocab

    return ImageVocab(num_codes=LEVELS, num_classes=CLASSES)


def to_images(codes) -> np.ndarray:
    """Returns float32 images [N, 8, 8]: the pixel-quantizer decode (bin centres) of codes."""
    return np.asarray(quantizer().decode(np.asarray(codes)), np.float32)


@functools.lru_cache(maxsize=None)
def glyph_set(n: int, seed: int) -> GlyphSet:
    """Returns ``n`` glyphs of data seed ``seed`` on the 8 x 8 grid at 8 levels (labels = digit)."""
    from tokjax.data import glyphs

    g = glyphs(n, size=GRID, seed=seed)
    codes = np.asarray(quantizer().encode(g.images), np.int32)
    return GlyphSet(codes=codes, images=to_images(codes), labels=np.asarray(g.labels))


@functools.lru_cache(maxsize=None)
def classifier():
    """Returns the quality classifier's params (cached on disk by data and settings)."""
    from tokjax.train.recipes.vision_classifier import train_classifier

    s = glyph_set(CLF_N, CLF_SEED)
    return train_classifier(s.images, s.labels, steps=CLF_STEPS, seed=0, num_classes=CLASSES)


def features(images) -> np.ndarray:
    from tokjax.vision.quality import classifier_features

    return np.asarray(classifier_features(classifier(), np.asarray(images, np.float32)), np.float64)


@functools.lru_cache(maxsize=None)
def _ref_features() -> np.ndarray:
    return features(glyph_set(REF_N, REF_SEED).images)


def fd_with_se(images, *, n_boot: int = 50) -> tuple[float, float]:
    """Returns (FD, bootstrap SE) of ``images`` against the reference set, in classifier feature space."""
    from tokjax.metrics.frechet import bootstrap_se, frechet_distance

    f = features(images)
    ref = _ref_features()
    return float(frechet_distance(f, ref)), float(bootstrap_se(frechet_distance, f, ref, n_boot=n_boot))


@functools.lru_cache(maxsize=None)
def real_floor(n: int) -> tuple[float, float]:
    """Returns (FD, SE) of ``n`` fresh real (round-tripped) glyphs against the reference: the floor."""
    return fd_with_se(glyph_set(n, FLOOR_SEED).images)


def consistency(images, labels) -> float:
    from tokjax.vision.quality import class_consistency

    return float(class_consistency(classifier(), np.asarray(images, np.float32), np.asarray(labels)))


def model_config(n_layers: int = 2, *, max_len: int = 80):
    """Returns the experiments' ModelConfig: d = 64, 4 heads, 2-D axial RoPE, ``n_layers`` layers."""
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=vocab().size, d_model=64, n_layers=n_layers, n_heads=4, max_len=max_len,
                       pos_dims=2)


def train_arm(cfg, batch_fn, *, steps: int, seed: int, loss_fn=None, params=None):
    """Returns (Model, seconds): ``cfg`` trained ``steps`` steps on ``batch_fn`` through tokjax.train."""
    from experiments._harness import train_model

    t0 = time.perf_counter()
    model, _ = train_model(cfg, steps=steps, batch_fn=batch_fn, loss_fn=loss_fn, params=params, lr=LR, seed=seed,
                           weight_decay=0.0)
    return model, time.perf_counter() - t0


def sample_labels(n: int) -> np.ndarray:
    """Returns the class of each of ``n`` samples: 0, 1, ..., 9, 0, 1, ... (balanced)."""
    return (np.arange(n) % CLASSES).astype(np.int32)


def evaluate(model, strategy, *, n: int, seed: int, chunk: int = 500) -> dict:
    """Returns the quality of ``n`` class-conditional samples of ``model`` decoded by ``strategy`` (guidance 1,
    temperature 1): ``fd``, ``se``, ``consistency``, ``passes`` (forward calls per sample), ``seconds``."""
    import jax

    from tokjax.vision.image_lm import sample_images

    labels = sample_labels(n)
    codes, passes, t0 = [], None, time.perf_counter()
    for i, s in enumerate(range(0, n, chunk)):
        out = sample_images(model, strategy, labels[s:s + chunk], jax.random.fold_in(jax.random.key(seed), i))
        codes.append(out.codes)
        passes = int(out.stats["forward_calls"])
    seconds = time.perf_counter() - t0
    images = to_images(np.concatenate(codes))
    fd, se = fd_with_se(images)
    return {"fd": fd, "se": se, "consistency": consistency(images, labels), "passes": passes, "seconds": seconds}


def fd_vs_passes(pid: str, name: str, arms: dict, floor: tuple[float, float], title: str):
    """Writes the FD-vs-passes figure (one point per arm: mean over seeds, error bar = the largest of the
    seed spread and 2 bootstrap SE; dashed line = real-vs-real floor) and returns its path, or None
    without matplotlib. ``arms``: {label: [evaluate() dicts, one per seed]}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from experiments._harness import figure_path

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, runs in arms.items():
        fd = np.array([r["fd"] for r in runs])
        err = max(float(fd.std(ddof=1)) if len(fd) > 1 else 0.0, 2 * max(r["se"] for r in runs))
        ax.errorbar([runs[0]["passes"]], [fd.mean()], yerr=[err], fmt="o", capsize=4, label=f"{label}")
        ax.annotate(label, (runs[0]["passes"], fd.mean()), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(floor[0], ls="--", c="gray", lw=1, label="real vs real floor")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("forward passes per image")
    ax.set_ylabel("classifier FD (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = figure_path(pid, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary(runs: list[dict]) -> str:
    """Returns 'FD m (SE s), consistency c, P passes' averaged over seeds (for notes)."""
    fd = np.mean([r["fd"] for r in runs])
    se = np.mean([r["se"] for r in runs])
    cc = np.mean([r["consistency"] for r in runs])
    return f"FD {fd:.3f} (SE {se:.3f}), consistency {cc:.2f}, {runs[0]['passes']} passes"


# ------------------------------------------------------------------ video (P13's video arm)
# Class-conditional 4-frame videos of one glyph moving at constant velocity (tokjax.data.moving_glyphs) on the
# same 8 x 8 grid at 8 levels (same quantizer round trip); class = digit. The quality classifier is the image one
# (``classifier``), applied frame by frame. Seeds: disjoint draws of the video generator.
FRAMES = 4
VIDEO_TRAIN_N, VIDEO_REF_N = 6000, 2000
VIDEO_TRAIN_SEED, VIDEO_REF_SEED, VIDEO_FLOOR_SEED = 200, 202, 203


@dataclasses.dataclass(frozen=True)
class VideoSet:
    """Codes int32 [N, FRAMES, 8, 8] in [0, 8), their round-tripped frames float32 [N, FRAMES, 8, 8], labels [N]."""

    codes: np.ndarray
    videos: np.ndarray
    labels: np.ndarray


@functools.lru_cache(maxsize=None)
def video_set(n: int, seed: int) -> VideoSet:
    """Returns ``n`` moving-glyph videos of data seed ``seed``: FRAMES frames on the 8 x 8 grid at 8 levels."""
    from tokjax.data import moving_glyphs

    m = moving_glyphs(n, frames=FRAMES, size=GRID, seed=seed)
    codes = np.asarray(quantizer().encode(m.videos), np.int32)
    return VideoSet(codes=codes, videos=to_images(codes), labels=np.asarray(m.labels))


def video_order():
    """Returns the raster order of the FRAMES x 8 x 8 video grid (frame-major)."""
    from tokjax.vision.orders import raster

    return raster(GRID, GRID, frames=FRAMES)


def video_model_config(n_layers: int = 2):
    """Returns the video ModelConfig: :func:`model_config`'s d = 64, 4 heads, but 3-D axial RoPE (pos_dims = 3:
    frame, row, col), which needs a head width divisible by 2 * 3, so head_dim = 24 (attention width 96; the
    residual stream, MLP and layers as the image model) and max_len for the 1 + FRAMES * 64 slots (+ 1 pad)."""
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=vocab().size, d_model=64, n_layers=n_layers, n_heads=4, head_dim=24,
                       max_len=FRAMES * GRID * GRID + 8, pos_dims=3)


def init_model(cfg, seed: int):
    """Returns an untrained Model of ``cfg`` (for decode-only smoke checks: passes and speed)."""
    import jax

    from tokjax.model import Model, init_params

    return Model(init_params(cfg, jax.random.key(seed)), cfg)


def _video_features(videos) -> np.ndarray:
    """Returns float64 [N, FRAMES * F]: the classifier features of every frame, frames side by side."""
    v = np.asarray(videos, np.float32)
    return features(v.reshape(-1, *v.shape[2:])).reshape(v.shape[0], -1)


def _per_frame_fd(x: np.ndarray, y: np.ndarray) -> float:
    from tokjax.metrics.frechet import frechet_distance

    xs, ys = np.split(x, FRAMES, axis=1), np.split(y, FRAMES, axis=1)
    return float(np.mean([frechet_distance(a, b) for a, b in zip(xs, ys)]))


@functools.lru_cache(maxsize=None)
def _video_ref_features() -> np.ndarray:
    return _video_features(video_set(VIDEO_REF_N, VIDEO_REF_SEED).videos)


def video_fd_with_se(videos, *, n_boot: int = 50) -> tuple[float, float]:
    """Returns (FD proxy, bootstrap SE) of ``videos`` [N, FRAMES, 8, 8]: the mean over frames t of the classifier
    FD of frame t of the samples against frame t of VIDEO_REF_N held-out real videos; the bootstrap resamples
    whole videos (all frames of a video together) on both sides."""
    from tokjax.metrics.frechet import bootstrap_se

    f, ref = _video_features(videos), _video_ref_features()
    return _per_frame_fd(f, ref), float(bootstrap_se(_per_frame_fd, f, ref, n_boot=n_boot))


def centroids(videos) -> np.ndarray:
    """Returns float64 [N, FRAMES, 2]: the ink-weighted (row, col) centroid of every frame (the canvas centre for
    a blank frame)."""
    v = np.asarray(videos, np.float64)
    mass = v.sum(axis=(2, 3))
    idx = np.arange(v.shape[-1], dtype=np.float64)
    r = (v.sum(axis=3) * idx).sum(-1)
    c = (v.sum(axis=2) * idx).sum(-1)
    centre = (v.shape[-1] - 1) / 2
    safe = np.maximum(mass, 1e-9)
    return np.stack([np.where(mass > 0, r / safe, centre), np.where(mass > 0, c / safe, centre)], -1)


def video_temporal(videos, labels) -> dict:
    """Returns the temporal measures of ``videos`` [N, FRAMES, 8, 8] made for class ``labels`` [N]:
    ``consistency`` (fraction of frames the classifier assigns to the label), ``constant`` (fraction of videos
    whose per-frame classifier label is the same in every frame), ``step_var`` (mean over videos of the
    variance over t of the centroid step c_{t+1} - c_t, summed over row and col, px^2; 0 for constant motion)."""
    from tokjax.vision.quality import classifier_logits

    v = np.asarray(videos, np.float32)
    n = v.shape[0]
    pred = np.asarray(classifier_logits(classifier(), v.reshape(-1, *v.shape[2:]))).argmax(-1).reshape(n, -1)
    steps = np.diff(centroids(v), axis=1)  # [N, FRAMES - 1, 2]
    return {"consistency": float(np.mean(pred == np.asarray(labels)[:, None])),
            "constant": float(np.mean((pred == pred[:, :1]).all(1))),
            "step_var": float(np.mean(steps.var(axis=1).sum(-1)))}


@functools.lru_cache(maxsize=None)
def video_real_floor(n: int) -> dict:
    """Returns the measures of ``n`` fresh real (round-tripped) videos: ``fd``, ``se`` against the reference (the
    floor) and :func:`video_temporal` with their true labels."""
    s = video_set(n, VIDEO_FLOOR_SEED)
    fd, se = video_fd_with_se(s.videos)
    return {"fd": fd, "se": se, **video_temporal(s.videos, s.labels)}


def evaluate_video(model, strategy, *, n: int, seed: int, chunk: int = 500) -> dict:
    """Returns the quality of ``n`` class-conditional videos of ``model`` decoded by ``strategy`` (guidance 1,
    temperature 1): ``fd``, ``se`` (:func:`video_fd_with_se`), :func:`video_temporal`'s measures, ``passes``
    (forward calls per video) and ``seconds``."""
    import jax

    from tokjax.vision.image_lm import sample_images

    labels = sample_labels(n)
    codes, passes, t0 = [], None, time.perf_counter()
    for i, s in enumerate(range(0, n, chunk)):
        out = sample_images(model, strategy, labels[s:s + chunk], jax.random.fold_in(jax.random.key(seed), i))
        codes.append(np.asarray(out.codes))
        passes = int(out.stats["forward_calls"])
    seconds = time.perf_counter() - t0
    videos = to_images(np.concatenate(codes))
    fd, se = video_fd_with_se(videos)
    return {"fd": fd, "se": se, **video_temporal(videos, labels), "passes": passes, "seconds": seconds}


def decode_rate(arms: dict, *, batch: int, reps: int = 3, seed: int = 0) -> dict:
    """Returns {name: samples per second} of each ``arms[name] = (model, strategy)`` decoding ``batch``
    class-conditional samples through ``sample_images``: one untimed compile call per arm, then ``reps`` timed
    rounds interleaved across the arms (so a load change hits every arm alike); the median round per arm."""
    import jax

    from tokjax.vision.image_lm import sample_images

    labels = sample_labels(batch)
    for model, strategy in arms.values():
        jax.block_until_ready(sample_images(model, strategy, labels, jax.random.key(seed)).codes)
    times = {name: [] for name in arms}
    for r in range(reps):
        for name, (model, strategy) in arms.items():
            t0 = time.perf_counter()
            jax.block_until_ready(sample_images(model, strategy, labels, jax.random.key(seed + 1 + r)).codes)
            times[name].append(time.perf_counter() - t0)
    return {name: batch / float(np.median(t)) for name, t in times.items()}
