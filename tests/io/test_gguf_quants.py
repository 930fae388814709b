"""tokjax's numpy dequantisers against the gguf package (llama.cpp's own Python reference), bit for bit."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tokjax.io._gguf_quants import GGML_TYPES, SUPPORTED, dequantize, nbytes, type_name  # noqa: E402

T = gguf.GGMLQuantizationType


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("shape", [(1, 32), (5, 64), (3, 2, 96)])
def test_dequantize_matches_gguf_on_random_blocks(name, shape):
    rng = np.random.default_rng(abs(hash((name, shape))) % 2**32)
    # Mixed scales and an offset so Q4_1's min and the f16 scales both matter.
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 20.0, shape[:-1] + (1,)) + rng.normal()).astype(np.float32)
    q = gguf.quants.quantize(x, T[name])
    ours = dequantize(q, T[name].value, shape)
    ref = gguf.quants.dequantize(q, T[name]).reshape(shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert q.nbytes == nbytes(T[name].value, x.size)
    # And the values are a faithful reconstruction (catches a shared bug in both, e.g. nibble order).
    step = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q4_0": 0.2, "Q4_1": 0.2}[name]
    assert np.abs(ours - x).max() <= step * np.abs(x).max() + 1e-6


def test_dequantize_known_blocks():
    """Hand-built blocks pin the layouts (scale first; low nibbles are values 0-15, high nibbles 16-31)."""
    d = np.array([0.5], np.float16).view(np.uint8).tolist()
    m = np.array([-1.0], np.float16).view(np.uint8).tolist()
    packed = [(j % 16) | ((15 - j % 16) << 4) for j in range(16)]
    qs = np.array(list(range(16)) + list(range(15, -1, -1)), np.float32)
    np.testing.assert_array_equal(dequantize(np.array(d + m + packed, np.uint8), T.Q4_1.value, (32,)), 0.5 * qs - 1.0)
    np.testing.assert_array_equal(dequantize(np.array(d + packed, np.uint8), T.Q4_0.value, (32,)), 0.5 * (qs - 8))
    q80 = np.array(d + list(np.arange(-16, 16, dtype=np.int8).view(np.uint8)), np.uint8)
    np.testing.assert_array_equal(dequantize(q80, T.Q8_0.value, (32,)), 0.5 * np.arange(-16, 16, dtype=np.float32))
    bf = np.array([1.5, -2.25], np.float32).view(np.uint32) >> 16
    np.testing.assert_array_equal(dequantize(bf.astype(np.uint16), T.BF16.value, (2,)), [1.5, -2.25])


def test_dequantize_rejects_bad_input():
    with pytest.raises(ValueError, match="unsupported GGML type Q5_K"):
        dequantize(np.zeros(176, np.uint8), T.Q5_K.value, (256,))
    with pytest.raises(ValueError, match="type 999"):
        dequantize(np.zeros(4, np.uint8), 999, (1,))
    with pytest.raises(ValueError, match="not a multiple of the block size 32"):
        dequantize(np.zeros(34, np.uint8), T.Q8_0.value, (1, 33))
    with pytest.raises(ValueError, match="expected 68"):
        dequantize(np.zeros(34, np.uint8), T.Q8_0.value, (2, 32))
    assert type_name(T.Q6_K.value) == "Q6_K" and type_name(12345) == "type 12345"
    assert set(SUPPORTED) == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"}
    for tid, (name, block, size) in GGML_TYPES.items():  # our table agrees with ggml's
        assert T(tid).name == name and gguf.GGML_QUANT_SIZES[T(tid)] == (block, size)
