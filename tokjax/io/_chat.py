"""Chat templates: the Jinja programs checkpoints ship to turn a list of messages into a prompt.

:func:`render_chat` renders one the way transformers' ``apply_chat_template`` does (a sandboxed
Jinja environment with ``trim_blocks``/``lstrip_blocks``, loop controls, a non-escaping
``tojson`` and ``raise_exception``), so the same template gives the same string in both.
:class:`ChatBPETokenizer` is a :class:`~tokjax.tokenizers.BPETokenizer` carrying such a template;
``load_gguf`` and ``load_hf`` return one when the checkpoint has a template.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import tokenizers as hf_tokenizers

from tokjax.tokenizers import BPETokenizer

TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.5x saves a tokenizer's template


@functools.lru_cache(maxsize=16)
def compile_template(template: str):
    """Returns the compiled Jinja template; ValueError for a template with a syntax error."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which would change the prompt.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"chat template has a Jinja syntax error (line {err.lineno}): {err.message}") from None


def check_messages(messages: Any) -> list[dict]:
    """Returns ``messages`` as a list of plain dicts after checking each has a str role and content."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, got "
            f"{type(messages).__name__}"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else f"{type(m[key]).__name__} {m[key]!r}"
                raise ValueError(
                    f"messages[{i}] needs a str {key!r} (e.g. {{'role': 'user', 'content': 'Hi'}}); {key} is {got}"
                )
        if not m["role"]:
            raise ValueError(f"messages[{i}] has an empty 'role'")
        out.append(dict(m))
    return out


def render_chat(template: str, messages: Any, *, add_generation_prompt: bool = True, **variables: Any) -> str:
    """Returns the prompt string ``template`` renders for ``messages`` (plus template ``variables``).

    ValueError for a malformed message (no str role/content), a template syntax error, or an
    error the template itself raises (``raise_exception``, e.g. roles out of order).
    """
    import jinja2

    msgs = check_messages(messages)
    compiled = compile_template(template)
    try:
        return compiled.render(
            messages=msgs, tools=None, documents=None, add_generation_prompt=bool(add_generation_prompt), **variables
        )
    except jinja2.TemplateError as err:
        raise ValueError(f"chat template refused the messages: {err}") from None


class ChatBPETokenizer(BPETokenizer):
    """A BPETokenizer with the checkpoint's Jinja chat template (``apply_chat_template``)."""

    chat_template: str | None = None

    @classmethod
    def from_bpe(cls, tokenizer: BPETokenizer, chat_template: str | None) -> ChatBPETokenizer:
        """Returns a ChatBPETokenizer with ``tokenizer``'s vocabulary and roles and the given template."""
        if chat_template is not None:
            if not isinstance(chat_template, str):
                raise ValueError(f"chat_template must be a str, got {type(chat_template).__name__}")
            compile_template(chat_template)  # fail now, not at the first chat
        out = cls.__new__(cls)
        out.__setstate__({**tokenizer.__getstate__(), "chat_template": chat_template})
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "chat_template": self.chat_template}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        template = state.pop("chat_template", None)
        super().__setstate__(state)
        self.chat_template = template

    def __repr__(self) -> str:
        return super().__repr__().replace("BPETokenizer(", "ChatBPETokenizer(", 1)

    @cached_property
    def _hf_with_specials(self) -> hf_tokenizers.Tokenizer:
        """A copy of the backend that reads special-token spellings as the special ids (for rendered chats)."""
        hf = hf_tokenizers.Tokenizer.from_str(self.hf.to_str())
        hf.encode_special_tokens = False
        return hf

    def template_variables(self) -> dict[str, str]:
        """Returns the special-token strings a template may use (bos_token, eos_token, pad_token)."""
        out = {}
        for role in ("bos", "eos", "pad"):
            i = getattr(self, f"{role}_id")
            if i is not None:
                out[f"{role}_token"] = self.hf.id_to_token(i)
        return out

    def apply_chat_template(
        self, messages: Any, add_generation_prompt: bool = True, *, tokenize: bool = True
    ) -> list[int] | str:
        """Returns the ids (``tokenize=True``) or the string of ``messages`` rendered by the chat template.

        ``messages``: a list of ``{"role": str, "content": str}``. ``add_generation_prompt`` appends
        the header that opens the assistant's turn. Special-token spellings the template writes
        (``<|im_start|>``) become their special ids, as in transformers; text inside the message
        contents is template text too, so a user typing ``<|im_end|>`` is read as the token (as
        transformers does). ValueError for a message without role/content or when the tokenizer
        has no template.
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (the checkpoint did not ship one)")
        text = render_chat(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt, **self.template_variables()
        )
        if not tokenize:
            return text
        return self._hf_with_specials.encode(text, add_special_tokens=False).ids

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ChatBPETokenizer:
        """Returns the tokenizer saved at ``path`` with the ``chat_template.jinja`` beside it, if any."""
        tok = super().load(path)
        p = Path(path)
        template = (p if p.is_dir() else p.parent) / TEMPLATE_FILE
        if template.is_file():
            tok.chat_template = template.read_text(encoding="utf-8")
            compile_template(tok.chat_template)
        return tok

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Returns the tokenizer.json path written; the template goes to ``chat_template.jinja`` beside it."""
        json_path = super().save(path)
        if self.chat_template is not None:
            (json_path.parent / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        return json_path


def _config_template(root: Path) -> str | None:
    """Returns the chat template of a checkpoint directory, or None (``tokenizer_config.json``, then the .jinja file)."""
    cfg_path = root / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None
        t = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(t, list):  # several named templates (transformers' format): the default one
            t = next((d.get("template") for d in t if isinstance(d, dict) and d.get("name") == "default"), None)
        if t is not None and not isinstance(t, str):
            raise ValueError(f"{cfg_path}: chat_template must be a string, got {type(t).__name__}")
        if t is not None:
            return t
    jinja = root / TEMPLATE_FILE
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def with_chat_template(root: str | os.PathLike[str], tokenizer: BPETokenizer) -> BPETokenizer:
    """Returns ``tokenizer`` as a ChatBPETokenizer when checkpoint directory ``root`` has a chat template, else as is."""
    root = Path(root)
    template = _config_template(root)
    if template is None:
        return tokenizer
    try:
        return ChatBPETokenizer.from_bpe(tokenizer, template)
    except ValueError as err:
        raise ValueError(f"{root}: chat template: {err}") from None
