"""``BPETokenizer``: byte-level BPE trained and run by Hugging Face ``tokenizers``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers as hf_tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

from ._base import (
    SpecialIdsMixin,
    DEFAULT_SPECIAL_TOKENS,
    INFER,
    add_bos_eos,
    batch_rows,
    build_bytes_to_id,
    check_ids,
    check_special_tokens,
    check_text,
    check_texts,
    resolve_role,
)
from ._digits import DIGIT_PATTERNS, DigitPolicy, check_digit_policy, digit_policy_from_pattern

TOKENIZER_FILE = "tokenizer.json"
SIDECAR_SUFFIX = ".tokjax.json"
_SIDECAR_FORMAT = "tokjax.tokenizer"
_SIDECAR_VERSION = 1


class TokenizerFileNotFoundError(FileNotFoundError, ValueError):
    """A tokenizer file is missing; also a ValueError so callers validating input catch it."""


def _hf_version() -> tuple[int, ...]:
    """Return the installed ``tokenizers`` version as a tuple of ints."""
    return tuple(int(p) for p in re.findall(r"\d+", hf_tokenizers.__version__)[:3])


# ``[["a", "b"], ...]`` merges were introduced in tokenizers 0.20; older
# releases only read ``["a b", ...]``.
_HF_READS_PAIR_MERGES = _hf_version() >= (0, 20)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Return GPT-2's printable-char -> byte map used by the ByteLevel pre-tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_values = printable[:]
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(byte_values, chars)}


def sidecar_path(json_path: str | os.PathLike[str]) -> Path:
    """Return where the tokjax sidecar for ``json_path`` lives (``tokenizer.json`` -> ``tokenizer.tokjax.json``)."""
    p = Path(json_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def _normalize_merges(merges: Any, source: str) -> list[Any]:
    """Return ``merges`` in the format the installed ``tokenizers`` reads, accepting both on-disk formats."""
    if not isinstance(merges, list):
        raise ValueError(f"{source}: model.merges must be a list, got {type(merges).__name__}")
    pairs: list[list[str]] = []
    for k, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{source}: merges[{k}] = {m!r} is not of the form 'left right'")
            pairs.append(parts)
        elif isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(x, str) and x for x in m):
            pairs.append([m[0], m[1]])
        else:
            raise ValueError(f"{source}: merges[{k}] = {m!r} is neither 'left right' nor [left, right]")
    if _HF_READS_PAIR_MERGES:
        return pairs
    if any(" " in x for pair in pairs for x in pair):
        raise ValueError(
            f"{source}: merges contain tokens with spaces; reading them needs tokenizers>=0.20 "
            f"(installed {hf_tokenizers.__version__})"
        )
    return [f"{a} {b}" for a, b in pairs]


def _find_digit_policy(pre_tokenizer: Any) -> str:
    """Return the tokjax digit policy applied by a pre-tokenizer JSON node ('none' if none is)."""
    if not isinstance(pre_tokenizer, dict):
        return "none"
    if pre_tokenizer.get("type") == "Sequence":
        for child in pre_tokenizer.get("pretokenizers", []):
            found = _find_digit_policy(child)
            if found != "none":
                return found
        return "none"
    if pre_tokenizer.get("type") == "Split" and pre_tokenizer.get("behavior") == "Isolated":
        pattern = pre_tokenizer.get("pattern", {})
        if isinstance(pattern, dict) and not pre_tokenizer.get("invert", False):
            policy = digit_policy_from_pattern(pattern.get("Regex", ""))
            if policy is not None:
                return policy
    return "none"


def _json_types(node: Any) -> set[str]:
    """Return every ``"type"`` value found anywhere in a JSON node."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        for v in node.values():
            found |= _json_types(v)
    elif isinstance(node, list):
        for v in node:
            found |= _json_types(v)
    return found


def _byte_scheme(spec: Mapping[str, Any]) -> str:
    """Return how token strings map to bytes: 'bytelevel', 'sentencepiece' or 'generic'."""
    decoder_types = _json_types(spec.get("decoder"))
    if "ByteLevel" in decoder_types or "ByteLevel" in _json_types(spec.get("pre_tokenizer")):
        return "bytelevel"
    model = spec.get("model") or {}
    if "Metaspace" in decoder_types or "ByteFallback" in decoder_types or model.get("byte_fallback"):
        return "sentencepiece"
    return "generic"


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class BPETokenizer(SpecialIdsMixin):
    """Byte-level BPE tokenizer backed by a Hugging Face ``tokenizers.Tokenizer``.

    Build one with :meth:`train`, :meth:`load` or :meth:`from_hf`. Encoding is
    literal (special-token spellings in the text are encoded as text) and
    never adds special tokens unless ``add_bos``/``add_eos`` ask for them.
    """

    def __init__(
        self,
        hf: hf_tokenizers.Tokenizer,
        spec: Mapping[str, Any],
        *,
        bos_token: Any = INFER,
        eos_token: Any = INFER,
        pad_token: Any = INFER,
        expected_digits: str | None = None,
        source: str = "<tokenizers.Tokenizer>",
    ) -> None:
        """Wrap ``hf`` (owned from now on) whose JSON form is ``spec``; prefer the classmethod constructors."""
        self._hf = hf
        # Literal encoding is what makes decode(encode(s)) == s hold for text
        # that happens to spell a special token.
        self._hf.encode_special_tokens = True
        # A checkpoint's tokenizer.json may carry padding/truncation settings
        # that would silently change encode's output.
        self._hf.no_padding()
        self._hf.no_truncation()

        self.digits: str = _find_digit_policy(spec.get("pre_tokenizer"))
        if expected_digits is not None and expected_digits != self.digits:
            raise ValueError(
                f"{source}: sidecar says digits={expected_digits!r} but the tokenizer's "
                f"pre-tokenizer applies digits={self.digits!r}"
            )
        self._scheme = _byte_scheme(spec)

        added = self._hf.get_added_tokens_decoder()
        specials = {tok.content: int(i) for i, tok in sorted(added.items()) if tok.special}
        self._added_ids = frozenset(int(i) for i in added)
        self.special_tokens: tuple[str, ...] = tuple(specials)
        self._special_ids = frozenset(specials.values())
        self._bos_id = resolve_role("bos", bos_token, specials)
        self._eos_id = resolve_role("eos", eos_token, specials)
        self._pad_id = resolve_role("pad", pad_token, specials)
        vocab = self._hf.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, digits={self.digits!r}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id})"
        )

    # Pickling goes through JSON: the Rust object's pickle drops the
    # encode_special_tokens flag, and cached byte tables are cheap to rebuild.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "json": self._hf.to_str(),
            "bos": self._bos_id,
            "eos": self._eos_id,
            "pad": self._pad_id,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        hf = hf_tokenizers.Tokenizer.from_str(state["json"])
        self.__init__(  # type: ignore[misc]
            hf, json.loads(state["json"]), bos_token=state["bos"], eos_token=state["eos"], pad_token=state["pad"]
        )

    # ------------------------------------------------------------------ build

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        digits: DigitPolicy = "none",
        min_frequency: int = 2,
        max_words: int | None = None,
        bos_token: Any = INFER,
        eos_token: Any = INFER,
        pad_token: Any = INFER,
        show_progress: bool = False,
    ) -> BPETokenizer:
        """Return a byte-level BPE tokenizer trained on ``texts`` with at most ``vocab_size`` ids.

        Ids are laid out as: special tokens (in the order given), the 256
        byte tokens, then merges. ``digits`` cuts digit runs before BPE (see
        :func:`split_digits`), at training and at encode time alike.
        ``max_words``: pre-tokenize into runs of up to that many words (each with its leading
        space) instead of single words, so merges may cross word boundaries and multi-word
        *supertokens* can be learned (TokenAdapt, P24); incompatible with a digit policy.
        ``bos_token``/``eos_token``/``pad_token`` pick the roles among
        ``special_tokens`` (default: by well-known names such as ``<|bos|>``).
        The vocabulary may come out smaller than ``vocab_size`` when the corpus
        has too few pairs reaching ``min_frequency``; a run that learns no merge
        at all raises ValueError (use :class:`ByteTokenizer` for that).
        """
        check_digit_policy(digits)
        specials = check_special_tokens(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
        floor = 256 + len(specials)
        if vocab_size < floor:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than 256 byte tokens + {len(specials)} special tokens = {floor}"
            )
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, (int, np.integer)) or min_frequency < 0:
            raise ValueError(f"min_frequency must be a non-negative int, got {min_frequency!r}")
        if isinstance(texts, (str, bytes)):
            raise ValueError("texts must be an iterable of str, not a single str")
        try:
            iterator = iter(texts)
        except TypeError:
            raise ValueError(f"texts must be an iterable of str, got {type(texts).__name__}") from None

        if max_words is not None:
            if isinstance(max_words, bool) or not isinstance(max_words, (int, np.integer)) or max_words < 1:
                raise ValueError(f"max_words must be an int >= 1 or None, got {max_words!r}")
            if digits != "none":
                raise ValueError(f"max_words (multi-word tokens) cannot be combined with digits={digits!r}")

        hf = hf_tokenizers.Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if max_words is not None:
            # Runs of up to max_words words (letters only, each with one leading space); digits,
            # punctuation and other whitespace stay separate pieces. "isolated" keeps every
            # character, so decoding stays exact.
            runs = pre_tokenizers.Split(Regex(rf"(?: ?\p{{L}}+){{1,{int(max_words)}}}"), behavior="isolated")
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [runs, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
        elif digits == "none":
            hf.pre_tokenizer = byte_level
        else:
            # Digit groups are cut first so that neither the GPT-2 regex nor
            # BPE ever joins digits across a group boundary.
            split = pre_tokenizers.Split(Regex(DIGIT_PATTERNS[digits]), behavior="isolated")
            hf.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        hf.decoder = decoders.ByteLevel()
        # trim_offsets=False keeps offsets covering the leading-space byte.
        hf.post_processor = processors.ByteLevel(trim_offsets=False)

        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=int(min_frequency),
            special_tokens=list(specials),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        seen = {"chars": 0}

        def checked() -> Iterator[str]:
            for k, t in enumerate(iterator):
                if not isinstance(t, str):
                    raise ValueError(f"training texts must be str, item {k} is {type(t).__name__}")
                seen["chars"] += len(t)
                yield t

        hf.train_from_iterator(checked(), trainer=trainer)
        if seen["chars"] == 0:
            raise ValueError("empty training corpus: texts yielded no characters")
        spec = json.loads(hf.to_str())
        if not spec["model"].get("merges"):
            raise ValueError(
                f"BPE training learned no merges (corpus of {seen['chars']} chars, "
                f"min_frequency={min_frequency}, vocab_size={vocab_size}); use ByteTokenizer for a byte-only vocab"
            )
        return cls(hf, spec, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token)

    @classmethod
    def from_hf(
        cls,
        tokenizer: hf_tokenizers.Tokenizer,
        *,
        bos_token: Any = INFER,
        eos_token: Any = INFER,
        pad_token: Any = INFER,
    ) -> BPETokenizer:
        """Return a BPETokenizer wrapping a copy of an existing ``tokenizers.Tokenizer``.

        The caller's object is not modified. Roles default to well-known
        special-token names (``<s>``, ``</s>``, ``<|endoftext|>``, ...); pass a
        token string, an id or None to override. Only tokenizers trained by
        :meth:`train` are guaranteed exact round trips; a checkpoint's own
        normalizer may change text.
        """
        if not isinstance(tokenizer, hf_tokenizers.Tokenizer):
            raise ValueError(f"from_hf expects a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        return cls._from_spec(
            json.loads(tokenizer.to_str()),
            source="<tokenizers.Tokenizer>",
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Return the tokenizer saved at ``path`` (a directory holding ``tokenizer.json``, or the json file).

        Reads both merges formats (``"a b"`` strings and ``["a", "b"]`` pairs).
        A ``<stem>.tokjax.json`` sidecar next to the file, if present, supplies
        the bos/eos/pad roles and is cross-checked against the digit policy
        found in the pre-tokenizer. Raises ValueError naming the path for a
        missing file (:class:`TokenizerFileNotFoundError`), malformed JSON, or a
        BPE model with no merges.
        """
        p = Path(path)
        json_path = p / TOKENIZER_FILE if p.is_dir() else p
        if not json_path.is_file():
            raise TokenizerFileNotFoundError(2, "tokenizer file not found", str(json_path))
        spec = _read_json(json_path)
        meta = _read_sidecar(sidecar_path(json_path))
        roles = {}
        for role in ("bos", "eos", "pad"):
            if f"{role}_token" in meta:
                roles[f"{role}_token"] = meta[f"{role}_token"]
        return cls._from_spec(spec, source=str(json_path), expected_digits=meta.get("digits"), **roles)

    @classmethod
    def _from_spec(cls, spec: Any, *, source: str, **kwargs: Any) -> BPETokenizer:
        """Return a BPETokenizer built from a parsed ``tokenizer.json`` after validating it."""
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise ValueError(f"{source}: not a tokenizers JSON file (no 'model' object)")
        model = spec["model"]
        is_bpe = model.get("type") == "BPE" or ("type" not in model and "merges" in model)
        if is_bpe:
            if not model.get("merges"):
                raise ValueError(f"{source}: BPE model has an empty merges list")
            model["merges"] = _normalize_merges(model["merges"], source)
        try:
            hf = hf_tokenizers.Tokenizer.from_str(json.dumps(spec))
        except Exception as err:  # the Rust side raises plain Exception subclasses
            raise ValueError(f"{source}: tokenizers could not load it: {err}") from err
        return cls(hf, spec, source=source, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Return the path of the ``tokenizer.json`` written under ``path``.

        ``path`` is a directory (created if needed) or a ``.json`` file name.
        The json is standard (``tokenizers.Tokenizer.from_file`` reads it; the
        digit policy lives in its pre-tokenizer); a ``.tokjax.json`` sidecar
        next to it records the bos/eos/pad roles.
        """
        p = Path(path)
        if p.suffix == ".json" and not p.is_dir():
            json_path = p
            json_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            p.mkdir(parents=True, exist_ok=True)
            json_path = p / TOKENIZER_FILE
        self._hf.save(str(json_path), pretty=True)
        meta = {
            "format": _SIDECAR_FORMAT,
            "version": _SIDECAR_VERSION,
            "digits": self.digits,
            "bos_token": self._token_name(self._bos_id),
            "eos_token": self._token_name(self._eos_id),
            "pad_token": self._token_name(self._pad_id),
        }
        sidecar_path(json_path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return json_path

    def _token_name(self, i: int | None) -> str | None:
        """Return the token string of id ``i``, or None when ``i`` is None."""
        return None if i is None else self._hf.id_to_token(i)

    # ------------------------------------------------------------ properties

    @property
    def hf(self) -> hf_tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (treat as read-only)."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Number of ids (max id + 1, special tokens included)."""
        return self._vocab_size

    @cached_property
    def id_to_bytes(self) -> list[bytes]:
        """Bytes each id decodes to; ``b""`` for special tokens and unused ids."""
        table = [b""] * self._vocab_size
        vocab = self._hf.get_vocab(with_added_tokens=True)
        byte_decoder = _byte_decoder()
        for token, i in vocab.items():
            if i in self._special_ids:
                continue
            if i in self._added_ids:
                # Added tokens are stored as raw text, not in the byte alphabet.
                table[i] = token.encode("utf-8")
            elif self._scheme == "bytelevel":
                table[i] = b"".join(
                    bytes([byte_decoder[c]]) if c in byte_decoder else c.encode("utf-8") for c in token
                )
            elif self._scheme == "sentencepiece":
                m = _BYTE_FALLBACK.fullmatch(token)
                table[i] = bytes([int(m.group(1), 16)]) if m else token.replace("\u2581", " ").encode("utf-8")
            else:
                table[i] = self._hf.decode([i], skip_special_tokens=False).encode("utf-8")
        return table

    @cached_property
    def bytes_to_id(self) -> dict[bytes, int]:
        """Inverse of ``id_to_bytes`` over non-special tokens (smallest id wins on duplicates)."""
        return build_bytes_to_id(self.id_to_bytes, self._special_ids)

    def token_bytes(self, id: int) -> bytes:
        """Return the bytes token ``id`` decodes to (``b""`` for special tokens)."""
        (i,) = check_ids([id], self._vocab_size, what="id")
        return self.id_to_bytes[i]

    def token_to_id(self, token: str) -> int | None:
        """Return the id of a vocabulary string (byte-level spelling, e.g. ``"Ġthe"``), or None."""
        return self._hf.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """Return the vocabulary string of ``id`` (byte-level spelling), or None."""
        (i,) = check_ids([id], self._vocab_size, what="id")
        return self._hf.id_to_token(i)

    # ------------------------------------------------------------- encoding

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Return the ids of ``text``, optionally wrapped in bos/eos."""
        check_text(text)
        try:
            ids = self._hf.encode(text, add_special_tokens=False).ids
        except TypeError:
            raise ValueError(_unencodable(text)) from None
        return add_bos_eos(ids, self._bos_id, self._eos_id, add_bos, add_eos)

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """Return ``[encode(t) for t in texts]``, computed in parallel by the Rust backend."""
        items = check_texts(texts)
        if not items:
            return []
        try:
            encodings = self._hf.encode_batch(items, add_special_tokens=False)
        except TypeError:
            bad = next((t for t in items if _has_surrogates(t)), "")
            raise ValueError(_unencodable(bad)) from None
        return [add_bos_eos(e.ids, self._bos_id, self._eos_id, add_bos, add_eos) for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Return the text for ``ids``; special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
        out = check_ids(ids, self._vocab_size)
        return self._hf.decode(out, skip_special_tokens=True)

    def decode_batch(self, batch: Iterable[Sequence[int]] | np.ndarray) -> list[str]:
        """Return ``[decode(ids) for ids in batch]``."""
        rows = [check_ids(r, self._vocab_size, what=f"batch[{k}]") for k, r in enumerate(batch_rows(batch))]
        if not rows:
            return []
        return self._hf.decode_batch(rows, skip_special_tokens=True)


def _has_surrogates(text: str) -> bool:
    """Return True if ``text`` cannot be encoded as UTF-8 (it holds a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unencodable(text: str) -> str:
    """Return the error message for text that is not encodable as UTF-8."""
    return f"text is not encodable as UTF-8 (contains a lone surrogate?): {text[:40]!r}"


def _read_json(path: Path) -> Any:
    """Return the parsed JSON at ``path``; ValueError naming the path if it is not valid UTF-8 JSON."""
    try:
        raw = path.read_text(encoding="utf-8")
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed JSON in {path}: {err}") from err


def _read_sidecar(path: Path) -> dict[str, Any]:
    """Return the sidecar's contents, ``{}`` if there is none; ValueError naming the path if it is bad."""
    if not path.is_file():
        return {}
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != _SIDECAR_FORMAT:
        raise ValueError(f"{path}: not a tokjax tokenizer sidecar (expected format {_SIDECAR_FORMAT!r})")
    if meta.get("version") != _SIDECAR_VERSION:
        raise ValueError(f"{path}: unsupported sidecar version {meta.get('version')!r}")
    if "digits" in meta:
        check_digit_policy(meta["digits"])
    return meta
