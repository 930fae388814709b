"""Chat templates: rendering, message validation, ChatBPETokenizer persistence, and load_hf reading them."""

import json
import pickle

import jax
import pytest

pytest.importorskip("jinja2")

from tokjax.io import ChatBPETokenizer, load_hf, render_chat, save_hf  # noqa: E402
from tokjax.model import Model, ModelConfig  # noqa: E402
from tokjax.tokenizers import BPETokenizer  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('system must come first') }}{% endif %}"
    "{{ bos_token + m['role'] + ': ' + m['content'] + eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'assistant: ' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    bpe = BPETokenizer.train(["hello there, user and assistant: how are you? " * 20], 300, min_frequency=1)
    return ChatBPETokenizer.from_bpe(bpe, TEMPLATE)


def test_render_matches_the_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|bos|>system: Be brief.<|eos|>\n<|bos|>user: Hi<|eos|>\n<|bos|>assistant: "
    assert tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False).endswith("Hi<|eos|>\n")
    ids = tok.apply_chat_template(msgs)
    assert ids.count(tok.bos_id) == 3 and ids.count(tok.eos_id) == 2  # specials in the template are special ids
    assert tok.encode(text).count(tok.bos_id) == 0  # plain encode stays literal
    # trim_blocks / lstrip_blocks and loop controls behave as in transformers' environment
    t = "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n{{ m['content'] | tojson }}{% endfor %}"
    assert render_chat(t, [{"role": "u", "content": "é<"}, {"role": "u", "content": "x"}]) == '"é<"'


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"content": "no role"}], r"messages\[0\] needs a str 'role'.*role is missing"),
        ([{"role": "user"}], r"messages\[0\] needs a str 'content'.*content is missing"),
        ([{"role": "user", "content": "ok"}, {"role": 3, "content": "x"}], r"messages\[1\] needs a str 'role'.*int 3"),
        ([{"role": "", "content": "x"}], r"messages\[0\] has an empty 'role'"),
        (["just text"], r"messages\[0\] must be a dict"),
        ("hello", "messages must be a list"),
        ({"role": "user", "content": "x"}, "messages must be a list"),
    ],
)
def test_bad_messages(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(messages)


def test_template_errors(tok):
    bad = [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]
    with pytest.raises(ValueError, match="chat template refused the messages: system must come first"):
        tok.apply_chat_template(bad)
    with pytest.raises(ValueError, match="Jinja syntax error"):
        ChatBPETokenizer.from_bpe(tok, "{% for m in messages %}")
    with pytest.raises(ValueError, match="has no chat template"):
        ChatBPETokenizer.from_bpe(tok, None).apply_chat_template([{"role": "user", "content": "x"}])
    # The sandbox refuses attribute escapes a malicious template might try.
    with pytest.raises(ValueError, match="unsafe"):
        render_chat("{{ messages.__class__.__mro__ }}", [])


def test_pickle_save_load(tok, tmp_path):
    assert pickle.loads(pickle.dumps(tok)).chat_template == TEMPLATE
    tok.save(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == TEMPLATE
    back = ChatBPETokenizer.load(tmp_path)
    assert back.chat_template == TEMPLATE and back.encode("hello there") == tok.encode("hello there")


def test_load_hf_reads_chat_template(tok, tmp_path):
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_len=32)
    model = Model.init(cfg, jax.random.PRNGKey(0))
    bpe = BPETokenizer.from_hf(tok.hf)
    save_hf(model, tmp_path / "plain", bpe)
    assert not isinstance(load_hf(tmp_path / "plain")[1], ChatBPETokenizer)
    root = save_hf(model, tmp_path / "chat", bpe)
    tc = json.loads((root / "tokenizer_config.json").read_text())
    (root / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": TEMPLATE}))
    _, loaded = load_hf(root)
    assert isinstance(loaded, ChatBPETokenizer) and loaded.chat_template == TEMPLATE
    # transformers' list-of-named-templates form, and the chat_template.jinja file
    (root / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": [{"name": "default", "template": "X"}]}))
    assert load_hf(root)[1].chat_template == "X"
    (root / "tokenizer_config.json").write_text(json.dumps(tc))
    (root / "chat_template.jinja").write_text("{{ 'J' }}")
    assert load_hf(root)[1].apply_chat_template([], tokenize=False) == "J"
    (root / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": 5}))
    with pytest.raises(ValueError, match="chat_template must be a string"):
        load_hf(root)
