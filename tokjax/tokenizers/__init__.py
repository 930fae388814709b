"""Host-side tokenizers: text <-> ids, plus byte tables for byte-level methods.

* :class:`Tokenizer` -- the protocol every tokenizer satisfies.
* :class:`BPETokenizer` -- byte-level BPE trained/run by Hugging Face ``tokenizers``.
* :class:`ByteTokenizer` -- one token per UTF-8 byte.
* :func:`split_digits` -- the digit pre-tokenization policies used by BPE training.
* :func:`pad_batch` -- ragged id lists -> padded int32 array + lengths.

Tokenizer transforms (one module per paper): :mod:`~tokjax.tokenizers.stochastok` (P36),
:mod:`~tokjax.tokenizers.right_to_left_digits` (P70), :mod:`~tokjax.tokenizers.setrec` (P55),
:mod:`~tokjax.tokenizers.dynamic_tokenization` (P39), :mod:`~tokjax.tokenizers.zett` (P26,
``zett_transfer``; fitting in :mod:`tokjax.train.recipes.zett`), :mod:`~tokjax.tokenizers.tokenadapt` (P24),
:mod:`~tokjax.tokenizers.exact_byte_probs` (P11: exact next-byte probabilities of a token LM),
:mod:`~tokjax.tokenizers.kronos` (P52: BSQ K-line tokens with coarse/fine bits and a dual head; registers "kronos").
:class:`WrappedTokenizer` is the base of the ``Tokenizer -> Tokenizer`` transforms.
"""

from ._base import DEFAULT_SPECIAL_TOKENS, INFER, Tokenizer, WrappedTokenizer, pad_batch
from ._bpe import BPETokenizer, TokenizerFileNotFoundError
from ._bytes import ByteTokenizer
from ._streamer import TextStreamer, stream_text
from ._digits import DIGIT_PATTERNS, DIGIT_POLICIES, DigitPolicy, split_digits
from ._vocab_transfer import decompose_vocab, mean_of_parts
from .dynamic_tokenization import (
    DynamicBatch, apply_merges, dynamic_embeddings, dynamic_merges, dynamic_tokenize, hypernet_dynamic_embeddings,
    joinable_mask, new_token_bias,
)
from .exact_byte_probs import (
    END, ByteVocab, byte_conditionals, byte_generate, byte_logprobs, byte_prefix_logprob, byte_text_logprob, is_canonical,
    naive_byte_logprobs, token_healing,
)
from . import kronos
from .kronos import (
    BSQConfig, KronosDecode, KronosHead, init_kronos_head, init_tokenizer, kline_features, kronos_joint_logprobs,
    kronos_logits, kronos_loss, make_kronos_loss, make_tokenizer_loss, tokenizer_decode, tokenizer_encode,
    tokenizer_loss,
)
from .right_to_left_digits import DigitGroupedTokenizer, encode_arithmetic, group_digits, right_to_left_digits
from .setrec import (
    SetRecParams, init_setrec, item_tokens, setrec_layout, setrec_loss, setrec_query_states, setrec_scores,
)
from .stochastok import (
    ExpansionTable, StochasTokTokenizer, build_expansions, expand_ids, expansion_table, stochastok, stochastok_loss,
    stochastok_split,
)
from .tokenadapt import tokenadapt_embeddings, tokenadapt_transfer
from .zett import (
    Hypernet, HypernetConfig, TokenizerPool, hypernet_embeddings, init_hypernet, make_tokenizer_pool, zett_batch_fn,
    zett_loss, zett_warmup_batch_fn, zett_warmup_loss,
)
from .zett import transfer as zett_transfer

__all__ = [
    # P11
    "END", "ByteVocab", "byte_conditionals", "byte_generate", "byte_logprobs", "byte_prefix_logprob", "byte_text_logprob", "is_canonical",
    "naive_byte_logprobs", "token_healing",
    "BPETokenizer",
    "ByteTokenizer",
    "DEFAULT_SPECIAL_TOKENS",
    "DIGIT_PATTERNS",
    "DIGIT_POLICIES",
    "DigitPolicy",
    "INFER",
    "Tokenizer",
    "TokenizerFileNotFoundError",
    "WrappedTokenizer",
    "pad_batch",
    "TextStreamer", "stream_text",
    "split_digits",
    # P70
    "DigitGroupedTokenizer", "encode_arithmetic", "group_digits", "right_to_left_digits",
    # P55
    "SetRecParams", "init_setrec", "item_tokens", "setrec_layout", "setrec_loss", "setrec_query_states",
    "setrec_scores",
    # P36
    "ExpansionTable", "StochasTokTokenizer", "build_expansions", "expand_ids", "expansion_table", "stochastok",
    "stochastok_loss", "stochastok_split",
    # vocabulary transfer: P39, P26, P24
    "decompose_vocab", "mean_of_parts",
    "DynamicBatch", "apply_merges", "dynamic_embeddings", "dynamic_merges", "dynamic_tokenize",
    "hypernet_dynamic_embeddings", "joinable_mask", "new_token_bias",
    "Hypernet", "HypernetConfig", "TokenizerPool", "hypernet_embeddings", "init_hypernet", "make_tokenizer_pool",
    "zett_batch_fn", "zett_loss", "zett_warmup_batch_fn", "zett_warmup_loss", "zett_transfer",
    "tokenadapt_embeddings", "tokenadapt_transfer",
    # P52
    "kronos", "BSQConfig", "KronosDecode", "KronosHead", "init_kronos_head", "init_tokenizer", "kline_features",
    "kronos_joint_logprobs", "kronos_logits", "kronos_loss", "make_kronos_loss", "make_tokenizer_loss",
    "tokenizer_decode", "tokenizer_encode", "tokenizer_loss",
]
