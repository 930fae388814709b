"""The numpy-only safetensors reader/writer: round trips, bfloat16, and errors naming file and tensor."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from tokjax.io import CheckpointError, SafetensorsFile, read_safetensors, write_safetensors


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "w.f32": rng.normal(size=(3, 5)).astype(np.float32),
        "w.bf16": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
        "w.f16": rng.normal(size=(2, 2, 2)).astype(np.float16),
        "w.f64": rng.normal(size=(1,)),
        "i.i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i.u8": np.arange(4, dtype=np.uint8),
        "b.bool": np.array([True, False]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_round_trip_every_dtype(tmp_path):
    t = _tensors()
    path = write_safetensors(tmp_path / "a.safetensors", t, {"format": "pt"})
    f = SafetensorsFile(path)
    assert f.metadata == {"format": "pt"}
    assert f.keys() == sorted(t)
    back = read_safetensors(path)
    for name, arr in t.items():
        assert back[name].dtype == arr.dtype, name
        assert back[name].shape == arr.shape, name
        np.testing.assert_array_equal(back[name], arr)
    # The header is padded so the data starts 8-byte aligned, as the reference writer does.
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0


def test_big_endian_input_is_stored_little_endian(tmp_path):
    arr = np.arange(5, dtype=">f4")
    back = read_safetensors(write_safetensors(tmp_path / "be.safetensors", {"x": arr}))["x"]
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.dtype("<f4")


def test_unstorable_dtype_names_tensor(tmp_path):
    with pytest.raises(CheckpointError, match=r"'z'.*complex"):
        write_safetensors(tmp_path / "c.safetensors", {"z": np.zeros(2, np.complex64)})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        SafetensorsFile(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("cut", [1, 4, 40])
def test_truncated_file_names_file_and_tensor(tmp_path, cut):
    path = write_safetensors(tmp_path / "t.safetensors", {"a": np.ones(4, np.float32), "b": np.ones(16, np.float32)})
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    with pytest.raises(CheckpointError, match=r"t\.safetensors.*truncated.*'b'"):
        SafetensorsFile(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match=r"h\.safetensors.*truncated or corrupt"):
        SafetensorsFile(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="no header length"):
        SafetensorsFile(path)


def _raw_file(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_corrupt_header_json(tmp_path):
    path = tmp_path / "j.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CheckpointError, match="not JSON"):
        SafetensorsFile(path)


def test_offsets_disagree_with_shape(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}
    path = _raw_file(tmp_path / "o.safetensors", header, b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"'w'.*needs 16 bytes.*span 12"):
        SafetensorsFile(path)


def test_unknown_dtype_tag(tmp_path):
    header = {"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}
    path = _raw_file(tmp_path / "d.safetensors", header, b"\0\0")
    with pytest.raises(CheckpointError, match=r"'w'.*unsupported dtype 'F8_E4M3'"):
        SafetensorsFile(path)


def test_malformed_entry(tmp_path):
    path = _raw_file(tmp_path / "m.safetensors", {"w": {"dtype": "F32"}})
    with pytest.raises(CheckpointError, match=r"'w'.*malformed"):
        SafetensorsFile(path)


def test_get_unknown_name(tmp_path):
    path = write_safetensors(tmp_path / "g.safetensors", {"a": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="no tensor named 'b'"):
        SafetensorsFile(path).get("b")


def test_compatible_with_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package (hf extra) is not installed")
    t = {k: v for k, v in _tensors().items() if v.dtype != ml_dtypes.bfloat16}  # its numpy API has no bf16
    ours = write_safetensors(tmp_path / "ours.safetensors", t, {"format": "pt"})
    theirs_read = st.load_file(str(ours))
    for k in t:
        np.testing.assert_array_equal(theirs_read[k], t[k])
    st.save_file(t, str(tmp_path / "theirs.safetensors"))
    ours_read = read_safetensors(tmp_path / "theirs.safetensors")
    for k in t:
        np.testing.assert_array_equal(ours_read[k], t[k])
        assert ours_read[k].dtype == t[k].dtype
