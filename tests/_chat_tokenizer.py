"""A byte-level toy tokenizer with a chat template, for tests of prompt-building methods (P3, P20)."""


class CharTok:
    """Bytes as ids 3..258; chat template = per message 1 + content bytes + 2, then 1 to open the answer; no eos."""

    eos_id = None

    def encode(self, text):
        return [3 + b for b in text.encode()]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        ids = []
        for m in messages:
            ids += [1] + self.encode(m["content"]) + [2]
        return ids + ([1] if add_generation_prompt else [])
