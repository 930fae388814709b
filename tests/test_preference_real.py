"""experiments/_preference_real.sample_pool: bad input is refused before any model call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments._preference_real import SETTING, sample_pool

MODEL = SimpleNamespace(cfg=SimpleNamespace(vocab_size=100))
TOK = SimpleNamespace(eos_id=1, vocab_size=100, apply_chat_template=lambda *a, **k: [])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_prompts=0, seed=0), "n_prompts"),
    (dict(n_prompts=2, seed=-1), "seed"),
    (dict(n_prompts=2, seed=0, samples=0), "samples"),
    (dict(n_prompts=2, seed=0, temperature=0.0), "temperature"),
    (dict(n_prompts=2, seed=0, setting={"level": 0}), "exactly the keys"),
    (dict(n_prompts=2, seed=0, setting={**SETTING, "style": "poem"}), "level/style"),
    (dict(n_prompts=2, seed=0, setting={**SETTING, "new_tokens": 0}), "new_tokens"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_pool(MODEL, TOK, **kwargs)


def test_tokenizer_and_vocabulary_mismatch_are_refused():
    with pytest.raises(ValueError, match="chat tokenizer"):
        sample_pool(MODEL, SimpleNamespace(eos_id=None, vocab_size=100), 2, 0)
    with pytest.raises(ValueError, match="vocabulary"):
        sample_pool(SimpleNamespace(cfg=SimpleNamespace(vocab_size=50)), TOK, 2, 0)
