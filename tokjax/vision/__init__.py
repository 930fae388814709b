"""Vision for tokjax: image tokenizers, token orders and download-free quality measures.

* :mod:`tokjax.vision.tokenizers` -- ``PixelQuantizer``, ``patchify`` / ``unpatchify``, an EMA k-means ``VQ``
  (``train_vq``, dead-code restart) and ``codebook_usage``.
* :mod:`tokjax.vision.quality` -- a small JAX MLP classifier (trained by
  :func:`tokjax.train.recipes.vision_classifier.train_classifier`), ``class_consistency``,
  ``class_logprob`` (a reward) and ``fd_proxy`` (Frechet distance of its features).
"""

from tokjax.vision import quality, tokenizers
from tokjax.vision.quality import (
    class_consistency, class_logprob, classifier_batch_fn, classifier_features, classifier_init, classifier_logits,
    classifier_loss, fd_proxy,
)
from tokjax.vision.tokenizers import VQ, PixelQuantizer, codebook_usage, patchify, train_vq, unpatchify

__all__ = [
    "quality", "tokenizers", "class_consistency", "class_logprob", "classifier_batch_fn", "classifier_features",
    "classifier_init", "classifier_logits", "classifier_loss", "fd_proxy", "VQ", "PixelQuantizer", "codebook_usage",
    "patchify", "train_vq", "unpatchify",
]
