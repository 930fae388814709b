"""The tokenizer a GGUF file describes in its metadata, rebuilt as a Hugging Face ``tokenizers`` BPE.

llama.cpp stores a byte-level BPE (``tokenizer.ggml.model = "gpt2"``) as the token strings in
GPT-2's byte alphabet (``tokenizer.ggml.tokens``), the merges (``"Ġ t"``), a type per token
(1 normal, 3 control = special, 4 user-defined = added text) and the name of the pre-tokenizer
(``tokenizer.ggml.pre``), which llama.cpp maps to its splitting regexes. We rebuild the same
pipeline from ``tokenizers`` parts:

* ``smollm`` and the other names llama.cpp handles with the StarCoder rules cut every digit
  apart (``\\p{N}``) before GPT-2's regex: ``Digits(individual_digits=True)`` + ``ByteLevel``,
  which is also the pre-tokenizer in SmolLM2's own ``tokenizer.json``.
* ``gpt2`` / ``default``: GPT-2's regex alone (``ByteLevel(use_regex=True)``).

Other pre-tokenizers (Llama 3, Qwen2, ...) and SentencePiece vocabularies raise ValueError
rather than tokenizing differently from the model's training.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from tokjax.io._chat import ChatBPETokenizer, compile_template

# llama.cpp's LLAMA_VOCAB_PRE_TYPE_{STARCODER,REFACT,COMMAND_R,SMOLLM,CODESHELL,EXAONE,MINERVA}:
# split "\p{N}" first, then the GPT-2 regex.
_DIGIT_SPLIT = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("gpt2", "default")
PRE_TOKENIZERS = _DIGIT_SPLIT + _GPT2
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str, source: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in _GPT2:
        return byte_level
    raise ValueError(
        f"{source}: unsupported tokenizer.ggml.pre {pre!r}; tokjax rebuilds {list(PRE_TOKENIZERS)} "
        "(other pre-tokenizers split text differently and would change the ids)"
    )


def tokenizer_from_gguf(f) -> ChatBPETokenizer | None:
    """Returns the ChatBPETokenizer described by a :class:`~tokjax.io._gguf.GGUFFile`'s metadata, or None.

    None when the file has no tokenizer. bos/eos/pad come from ``tokenizer.ggml.*_token_id``
    (a role whose id is not a control token is left unset); the chat template from
    ``tokenizer.chat_template``. ValueError naming the file for a non-BPE vocabulary, an
    unknown pre-tokenizer, malformed merges or duplicate tokens.
    """
    src = str(f.path)
    kind = f.meta("tokenizer.ggml.model")
    if kind is None:
        return None
    if kind != "gpt2":
        raise ValueError(
            f"{src}: tokenizer.ggml.model {kind!r} is not supported; tokjax rebuilds byte-level BPE ('gpt2') only"
        )
    tokens = f.require("tokenizer.ggml.tokens")
    types = f.meta("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges_raw = f.require("tokenizer.ggml.merges")
    if len(types) != len(tokens):
        raise ValueError(f"{src}: {len(types)} token types for {len(tokens)} tokens")
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise ValueError(f"{src}: token {t!r} appears twice (ids {vocab[t]} and {i})")
        vocab[t] = i
    merges = []
    for k, m in enumerate(merges_raw):
        parts = m.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
            raise ValueError(f"{src}: tokenizer.ggml.merges[{k}] = {m!r} is not two vocabulary tokens")
        merges.append((parts[0], parts[1]))

    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    hf.pre_tokenizer = _pre_tokenizer(f.meta("tokenizer.ggml.pre", "default"), src)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, ty in zip(tokens, types) if ty == _CONTROL]
    user = [t for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    if control:
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if user:
        hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    specials = {vocab[t] for t in control}
    roles = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        i = f.meta(f"tokenizer.ggml.{key}")
        roles[f"{role}_token"] = int(i) if i is not None and int(i) in specials else None
    tok = ChatBPETokenizer.from_hf(hf, **roles)
    template = f.meta("tokenizer.chat_template")
    if template is not None:
        try:
            compile_template(template)
        except ValueError as err:
            raise ValueError(f"{src}: tokenizer.chat_template: {err}") from None
        tok.chat_template = template
    return tok
