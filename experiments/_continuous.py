"""The 16 x 16 glyph protocol of the continuous-token experiments (P10 xAR, P19 DiSA): 2 x 2 pixel patches as
64 continuous 4-dim tokens, the glyph data, the FD / class-consistency quality measures on the shared classifier
(``experiments._vision``'s protocol: floor, bootstrap SE), the 2-layer d = 64 backbone config and the inits of its
continuous-token models (MAR, continuous raster AR, xAR cells: :func:`continuous_params`). At the end,
the 8 x 8 register-tokenizer setting shared by P32 FlexTok and P33 D-AR."""

from __future__ import annotations

import functools

import numpy as np

from experiments import _vision as V

SIZE, PATCH, CLASSES = 16, 2, 10
GRID = SIZE // PATCH


def to_tokens(images) -> np.ndarray:
    """[N, 16, 16] in [0, 1] -> float32 [N, 64, 4]: 2x2 patches in raster order, scaled to [-1, 1]."""
    x = np.asarray(images, np.float32) * 2.0 - 1.0
    n = x.shape[0]
    return x.reshape(n, GRID, PATCH, GRID, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, GRID * GRID, PATCH * PATCH)


def to_images(tokens) -> np.ndarray:
    t = np.asarray(tokens, np.float32).reshape(-1, GRID, GRID, PATCH, PATCH).transpose(0, 1, 3, 2, 4)
    return np.clip((t.reshape(-1, SIZE, SIZE) + 1.0) / 2.0, 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def glyph_set(n: int, seed: int):
    from tokjax.data import glyphs

    g = glyphs(n, size=SIZE, seed=seed)
    return np.asarray(g.images, np.float32), np.asarray(g.labels)


@functools.lru_cache(maxsize=None)
def classifier():
    from tokjax.train.recipes.vision_classifier import train_classifier

    x, y = glyph_set(V.CLF_N, V.CLF_SEED)
    return train_classifier(x, y, steps=V.CLF_STEPS, seed=0, num_classes=CLASSES)


def features(images) -> np.ndarray:
    from tokjax.vision.quality import classifier_features

    return np.asarray(classifier_features(classifier(), np.asarray(images, np.float32)), np.float64)


@functools.lru_cache(maxsize=None)
def _ref() -> np.ndarray:
    return features(glyph_set(V.REF_N, V.REF_SEED)[0])


def fd_with_se(images) -> tuple[float, float]:
    from tokjax.metrics.frechet import bootstrap_se, frechet_distance

    f = features(images)
    return float(frechet_distance(f, _ref())), float(bootstrap_se(frechet_distance, f, _ref(), n_boot=50))


def quality(images, labels, passes: int, head_evals: int, seconds: float) -> dict:
    from tokjax.vision.quality import class_consistency

    fd, se = fd_with_se(images)
    cc = float(class_consistency(classifier(), np.asarray(images, np.float32), np.asarray(labels)))
    return {"fd": fd, "se": se, "consistency": cc, "passes": passes, "head_evals": head_evals, "seconds": seconds}


def model_config():
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=CLASSES + 1, d_model=64, n_layers=2, n_heads=4, max_len=1 + GRID * GRID)


XAR_CELL = 4  # xAR's entity in the 16 x 16 setting: 4 x 4-token cells, K = 4 entities (P10's reported arm)


def xar_cells():
    """The :class:`tokjax.vision.xar.XarLayout` of P10's reported arm: 4 x 4-token cells on the 8 x 8 grid."""
    from tokjax.vision.xar import xar_layout

    return xar_layout((GRID, GRID), "cell", XAR_CELL)


def continuous_params(cfg, key, kind: str, *, head_width: int = 64, head_depth: int = 3) -> dict:
    """Returns backbone params (``init_params`` from ``split(key)[0]``) plus the continuous-token entry of
    ``kind`` from ``split(key)[1]``: "mar" (``mar_init``), "flow" (``continuous_init``, continuous raster AR) or
    "xar" (``xar_init``: the velocity read-out, no head MLP), the inits of P10 / P19."""
    import jax

    from tokjax.model.params import init_params
    from tokjax.vision.flow import continuous_init
    from tokjax.vision.mar import mar_init
    from tokjax.vision.xar import xar_init

    k1, k2 = jax.random.split(key)
    params = dict(init_params(cfg, k1))
    if kind == "mar":
        params["mar"] = mar_init(k2, cfg, PATCH * PATCH, width=head_width, depth=head_depth)
    elif kind == "flow":
        params["flow"] = continuous_init(k2, cfg, PATCH * PATCH, width=head_width, depth=head_depth)
    elif kind == "xar":
        params["xar"] = xar_init(k2, cfg, PATCH * PATCH)
    else:
        raise ValueError(f"kind must be 'mar', 'flow' or 'xar', got {kind!r}")
    return params


# ------------------------------------------------------------------ 8 x 8 register tokenizers (P32, P33)
def register_tok_config():
    """The tokenizer backbone of P32 / P33: d = 64 x 2 layers over [16 patches][16 registers]."""
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=4, d_model=64, n_layers=2, n_heads=4, max_len=32)


def register_lm_config():
    """The stage-2 class-conditional LM over the 16 register ids (``tokjax.vision.flextok.register_vocab``)."""
    from tokjax.model import ModelConfig
    from tokjax.vision.flextok import register_vocab

    return ModelConfig(vocab_size=register_vocab().size, d_model=64, n_layers=2, n_heads=4, max_len=24)


def register_pixels(x):
    """Returns (continuous images [N, 8, 8], their 8-level round trip) of 2 x 2 patch tokens."""
    from tokjax.vision.flextok import token_images

    img = token_images(x)
    return img, V.to_images(V.quantizer().encode(img))


def z_score(a: float, sa: float, b: float, sb: float) -> float:
    """(a - b) / sqrt(sa^2 + sb^2): a difference in combined standard errors."""
    return (a - b) / max((sa ** 2 + sb ** 2) ** 0.5, 1e-12)
