"""Host-side tokenizers: text <-> ids, plus byte tables for byte-level methods.

* :class:`Tokenizer` -- the protocol every tokenizer satisfies.
* :class:`BPETokenizer` -- byte-level BPE trained/run by Hugging Face ``tokenizers``.
* :class:`ByteTokenizer` -- one token per UTF-8 byte.
* :func:`split_digits` -- the digit pre-tokenization policies used by BPE training.
* :func:`pad_batch` -- ragged id lists -> padded int32 array + lengths.
"""

from ._base import DEFAULT_SPECIAL_TOKENS, INFER, Tokenizer, pad_batch
from ._bpe import BPETokenizer, TokenizerFileNotFoundError
from ._bytes import ByteTokenizer
from ._digits import DIGIT_PATTERNS, DIGIT_POLICIES, DigitPolicy, split_digits

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "DEFAULT_SPECIAL_TOKENS",
    "DIGIT_PATTERNS",
    "DIGIT_POLICIES",
    "DigitPolicy",
    "INFER",
    "Tokenizer",
    "TokenizerFileNotFoundError",
    "pad_batch",
    "split_digits",
]
