"""Vision for tokjax: image tokenizers, token orders and download-free quality measures.

* :mod:`tokjax.vision.tokenizers` -- ``PixelQuantizer``, ``patchify`` / ``unpatchify``, an EMA k-means ``VQ``
  (``train_vq``, dead-code restart) and ``codebook_usage``.
* :mod:`tokjax.vision.quality` -- a small JAX MLP classifier (trained by
  :func:`tokjax.train.recipes.vision_classifier.train_classifier`), ``class_consistency``,
  ``class_logprob`` (a reward) and ``fd_proxy`` (Frechet distance of its features).
* :mod:`tokjax.vision.orders` -- raster / diagonal / window-raster / cell (Z-order) token orders with exact
  inverses and the 2-D/3-D coordinates a ``pos_dims`` model reads.
* :mod:`tokjax.vision.image_lm` -- ``ImageVocab``, ``image_batch`` for ``tokjax.train``, and
  classifier-free-guided decoding through ``tokjax.generate`` (``sample_images``); ``CanvasStrategy``, the base of
  decoders that fill several tokens per pass.
* :mod:`tokjax.vision.nar` -- P31 neighbouring autoregression (one anti-diagonal per pass, right and below heads).
* :mod:`tokjax.vision.nbp` -- P13 next-block prediction (one block of k raster tokens per pass; k = 1 is NTP).
* :mod:`tokjax.vision.token_shuffle` -- P64 Token-Shuffle (s x s windows merged into one position; s = 1 is NTP).
* :mod:`tokjax.vision.flow` -- continuous tokens: MAR's flow head, rectified-flow loss and sampler (traced step
  count), time conditioning at the residual hooks, and continuous raster AR as a ``tokjax.generate`` Strategy.
* :mod:`tokjax.vision.xar` -- P10 xAR (next-entity prediction with noisy context on the flow foundation).
* :mod:`tokjax.vision.mar` -- masked-set continuous AR (MAR) on the shared forward: random order, cosine fill
  schedule, flow head per filled token, as a ``tokjax.generate`` Strategy (``tokjax.vision.mar.mar(...)``; the
  package attribute ``mar`` is the module).
* :mod:`tokjax.vision.disa` -- P19 DiSA (inner flow steps annealed over the AR steps, the official arithmetic).
* :mod:`tokjax.vision.fsq` -- finite scalar quantization (straight-through rounding, codes <-> ids), nested dropout
  with FlexTok's keep samplers, register encoders (the shared forward under ``Prefix``); the package attribute
  ``fsq`` is the module (``tokjax.vision.fsq.fsq(levels)`` builds a quantizer).
* :mod:`tokjax.vision.flextok` -- P32 FlexTok (1-D register tokenizer with nested dropout and a flow decoder).
* :mod:`tokjax.vision.tokenflex` -- P61 TokenFLEX (a captioner whose visual prefix is pooled to any n x n tokens).
* :mod:`tokjax.vision.masked_set` -- discrete masked-set decoding (MaskGIT's ``parallel_decode``: cosine fill,
  Gumbel top-k or order choice, linear CFG) as a ``tokjax.generate`` Strategy, its loss and teacher-forced replay.
* :mod:`tokjax.vision.himar` -- P5 Hi-MAR (low-resolution pivots, then dense codes reading the pivots' hidden states).
* :mod:`tokjax.vision.uni3dar` -- P53 Uni-3DAR (compressed octree / quadtree tokens, masked next-token prediction).
* :mod:`tokjax.vision.x_omni` -- P28 X-Omni (GRPO on a discrete image LM with a classifier reward, via ``rl_train``).
* :mod:`tokjax.vision.d_ar` -- P33 D-AR (flow decoder whose step g reads token group g; streaming previews).
* :mod:`tokjax.vision.tokenunify` -- P9 TokenUnify (a per-batch mixture of random-token, next-token and next-all
  prediction; registered loss ``"tokenunify"``).
* :mod:`tokjax.vision.ming_univision` -- P74 MingTok (continuous latents, a causal semantic decoder feeding one LM for
  understanding and generation).

Paper modules whose main function shares the module's name (``himar``, ``uni3dar``, ``x_omni``, ``d_ar``,
``ming_univision``, ``masked_set``, ``tokenunify``) are package attributes as modules: call ``tokjax.vision.himar.himar(...)``.
"""

from tokjax.vision import (
    d_ar, disa, flextok, flow, fsq, himar, image_lm, mar, masked_set, ming_univision, nar, nbp, orders, quality,
    token_shuffle, tokenflex, tokenizers, tokenunify, uni3dar, x_omni, xar,
)
from tokjax.vision.image_lm import (
    CanvasDecodeState, CanvasStrategy, ImageDecodeState, ImageSamples, ImageStrategy, ImageVocab, NextTokenCFG, image_batch, image_batch_fn,
    next_token_cfg, sample_images, sequence_positions, append_block, keep_block, feed_positions,
)
from tokjax.vision.orders import ORDERS, Order, cell, diagonal, make_order, raster, to_grid, to_sequence, window_raster
from tokjax.vision.quality import (
    class_consistency, class_logprob, classifier_batch_fn, classifier_features, classifier_init, classifier_logits,
    classifier_loss, fd_proxy,
)
from tokjax.vision.nar import (
    NARDecode, make_nar_loss, nar_combine, nar_decoder, nar_heads, nar_init, nar_logits, nar_mask, nar_ranks, nar_sources,
    nar_token_logp,
)
from tokjax.vision.nbp import (
    NBPDecode, nbp_batch, nbp_batch_fn, nbp_decoder, nbp_logits, nbp_loss, nbp_positions, nbp_ranks,
)
from tokjax.vision.token_shuffle import (
    TokenShuffleDecode, make_token_shuffle_loss, token_shuffle, token_shuffle_batch_fn, token_shuffle_decoder,
    token_shuffle_init, token_shuffle_logits, token_shuffle_positions, token_unshuffle,
)
from tokjax.vision.tokenflex import (
    CAPTION_VOCAB, adaptive_avg_pool, adaptive_pool_matrix, caption_accuracy, caption_predictions, caption_text,
    caption_tokens, greedy_captions, make_tokenflex_loss, tokenflex_batch, tokenflex_batch_fn, tokenflex_hidden,
    tokenflex_init, tokenflex_loss, visual_tokens,
)
from tokjax.vision.flow import (
    ContinuousAR, ContinuousDecodeState, ContinuousSamples, FlowPathStats, cond_hooks, continuous_ar, continuous_batch,
    continuous_batch_fn, continuous_hidden, continuous_init, flow_head_apply, flow_head_init, flow_head_loss, flow_loss,
    flow_path_stats, flow_sample, flow_update, flow_velocity, make_flow_loss, sample_continuous, time_embed,
    time_embed_init,
)
from tokjax.vision.xar import (
    XarLayout, XarSamples, make_xar_loss, xar_batch_fn, xar_init, xar_layout, xar_loss, xar_positions, xar_ranks,
    xar_sample, xar_velocity, XarDecode, xar_decode,
)
from tokjax.vision.disa import ARITHMETIC, SCHEDULES, disa_steps, head_evals, inner_steps
from tokjax.vision.fsq import FSQ, KEEP_MODES, nested_dropout, register_encode, round_ste, sample_keep
from tokjax.vision.flextok import (
    FlexTokSamples, flextok_decode, flextok_encode, flextok_generate, flextok_init, flextok_loss, flextok_reconstruct,
    flextok_registers, flextok_velocity, image_tokens, make_flextok_loss, register_batch_fn, register_vocab,
    token_images, tokenizer_batch_fn,
)
from tokjax.vision.mar import (
    ATTENTION, FILLS, MAR, MarDecodeState, MarSamples, make_mar_loss, mar_fill_counts, mar_hidden, mar_init,
    mar_loss, mar_masked_counts, sample_mar,
)
from tokjax.vision.tokenizers import VQ, PixelQuantizer, codebook_usage, patchify, train_vq, unpatchify

__all__ = [
    "image_lm", "orders", "ImageDecodeState", "ImageSamples", "ImageStrategy", "ImageVocab", "NextTokenCFG",
    "image_batch", "image_batch_fn", "next_token_cfg", "sample_images", "sequence_positions", "append_block",
    "keep_block", "feed_positions", "ORDERS", "Order",
    "cell", "diagonal", "make_order", "raster", "to_grid", "to_sequence", "window_raster",
    "quality", "tokenizers", "class_consistency", "class_logprob", "classifier_batch_fn", "classifier_features",
    "classifier_init", "classifier_logits", "classifier_loss", "fd_proxy", "VQ", "PixelQuantizer", "codebook_usage",
    "patchify", "train_vq", "unpatchify", "CanvasDecodeState", "CanvasStrategy",
    "nar", "NARDecode", "make_nar_loss", "nar_combine", "nar_decoder", "nar_heads", "nar_init", "nar_logits", "nar_mask",
    "nar_ranks", "nar_sources", "nar_token_logp",
    "nbp", "NBPDecode", "nbp_batch", "nbp_batch_fn", "nbp_decoder", "nbp_logits", "nbp_loss", "nbp_positions",
    "nbp_ranks",
    "token_shuffle", "TokenShuffleDecode", "make_token_shuffle_loss", "token_shuffle_batch_fn", "token_shuffle_decoder",
    "token_shuffle_init", "token_shuffle_logits", "token_shuffle_positions", "token_unshuffle",
    "tokenflex", "CAPTION_VOCAB", "adaptive_avg_pool", "adaptive_pool_matrix", "caption_accuracy", "caption_predictions",
    "caption_text", "caption_tokens", "greedy_captions", "make_tokenflex_loss", "tokenflex_batch", "tokenflex_batch_fn",
    "tokenflex_hidden", "tokenflex_init", "tokenflex_loss", "visual_tokens",
    "flow", "ContinuousAR", "ContinuousDecodeState", "ContinuousSamples", "FlowPathStats", "cond_hooks", "continuous_ar",
    "continuous_batch", "continuous_batch_fn", "continuous_hidden", "continuous_init", "flow_head_apply",
    "flow_head_init", "flow_head_loss", "flow_loss", "flow_path_stats", "flow_sample", "flow_update", "flow_velocity", "make_flow_loss",
    "sample_continuous", "time_embed", "time_embed_init",
    "xar", "XarLayout", "XarSamples", "make_xar_loss", "xar_batch_fn", "xar_init", "xar_layout", "xar_loss",
    "xar_positions", "xar_ranks", "xar_sample", "xar_velocity", "XarDecode", "xar_decode",
    "disa", "ARITHMETIC", "SCHEDULES", "disa_steps", "head_evals", "inner_steps",
    "mar", "ATTENTION", "FILLS", "MAR", "MarDecodeState", "MarSamples", "make_mar_loss", "mar_fill_counts",
    "mar_hidden", "mar_init", "mar_loss", "mar_masked_counts", "sample_mar",
    "fsq", "FSQ", "KEEP_MODES", "nested_dropout", "register_encode", "round_ste", "sample_keep",
    "flextok", "FlexTokSamples", "flextok_decode", "flextok_encode", "flextok_generate", "flextok_init",
    "flextok_loss", "flextok_reconstruct", "flextok_registers", "flextok_velocity", "image_tokens",
    "make_flextok_loss", "register_batch_fn", "register_vocab", "token_images", "tokenizer_batch_fn",
    "masked_set", "himar", "uni3dar", "x_omni", "d_ar", "ming_univision", "tokenunify",
]
