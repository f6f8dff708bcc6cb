"""MlpRanker model files: round trip, safetensors layout, corruption and schema errors."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from ranker_ref import random_mlp

from fyp_core import CorruptFileError, MlpRanker


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    ws, bs = random_mlp(rng, [10, 16, 3])
    cross = [(rng.standard_normal((10, 10)).astype(np.float32) * 0.1, np.zeros(10, np.float32))]
    return MlpRanker(
        ws,
        bs,
        "silu",
        ["sigmoid", "softplus", "identity"],
        version="2026-11-23.1",
        task_names=["p_finish", "watch_s", "raw"],
        cross_layers=cross,
        input_schema=[("user_emb", 4), ("item_emb", 4), ("ctx", 2)],
    )


def read_header(raw: bytes) -> tuple[dict, int]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n


def rewrite(raw: bytes, header: dict) -> bytes:
    """Re-serialises a header and recomputes the crc as a writer would (test helper)."""
    _, start = read_header(raw)
    header["__metadata__"]["crc32"] = "00000000"
    h = json.dumps(header, separators=(",", ":"))
    h += " " * ((-len(h)) % 8)
    out = struct.pack("<Q", len(h)) + h.encode() + raw[start:]
    crc = zlib.crc32(out)
    return out.replace(b'"crc32":"00000000"', f'"crc32":"{crc:08x}"'.encode())


def test_round_trip(tmp_path, model):
    p = tmp_path / "m.safetensors"
    model.save(p)
    back = MlpRanker.load(p)
    x = np.random.default_rng(1).standard_normal((50, 10)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    for attr in ["version", "task_names", "outputs", "activation", "input_schema"]:
        assert getattr(back, attr) == getattr(model, attr), attr
    assert MlpRanker.load(str(p), kernel="scalar").kernel == "scalar"


def test_file_is_safetensors_with_crc(tmp_path, model):
    p = tmp_path / "m.safetensors"
    model.save(p)
    raw = p.read_bytes()
    header, start = read_header(raw)
    assert start % 8 == 0
    meta = header["__metadata__"]
    assert meta["format"] == "fyp_core.mlp" and meta["version"] == "2026-11-23.1"
    assert json.loads(meta["task_names"]) == ["p_finish", "watch_s", "raw"]
    assert json.loads(meta["input_schema"]) == [["user_emb", 4], ["item_emb", 4], ["ctx", 2]]
    t = header["layers.0.weight"]
    assert t["dtype"] == "F32" and t["shape"] == [10, 16]
    a, b = t["data_offsets"]
    w = np.frombuffer(raw[start + a : start + b], "<f4").reshape(10, 16)
    np.testing.assert_array_equal(w, model.weights()[0])
    zeroed = raw.replace(meta["crc32"].encode(), b"00000000", 1)
    assert f"{zlib.crc32(zeroed):08x}" == meta["crc32"]


def test_corrupt_files_raise_corrupt_file_error(tmp_path, model):
    p = tmp_path / "m.safetensors"
    model.save(p)
    raw = p.read_bytes()
    rng = np.random.default_rng(2)
    cuts = [0, 5, 8, 100, len(raw) // 2, len(raw) - 1]
    flips = [1, 9, 40, 200] + list(rng.integers(0, len(raw), 20))
    for i, data in enumerate(
        [raw[:c] for c in cuts]
        + [raw[:f] + bytes([raw[f] ^ 0x04]) + raw[f + 1 :] for f in flips]
        + [raw + b"\0\0\0\0", b"not a model at all"]
    ):
        bad = tmp_path / f"bad{i}"
        bad.write_bytes(data)
        with pytest.raises(CorruptFileError):
            MlpRanker.load(bad)
    assert issubclass(CorruptFileError, ValueError)


def test_schema_width_mismatch_is_a_value_error(tmp_path, model):
    p = tmp_path / "m.safetensors"
    model.save(p)
    raw = p.read_bytes()
    header, _ = read_header(raw)
    header["__metadata__"]["input_schema"] = json.dumps([["user_emb", 4], ["item_emb", 5]])
    bad = tmp_path / "schema.safetensors"
    bad.write_bytes(rewrite(raw, header))
    with pytest.raises(ValueError, match="input_schema widths sum to 9.*input width is 10") as e:
        MlpRanker.load(bad)
    assert not isinstance(e.value, CorruptFileError)
    # the helper itself writes valid files
    ok = tmp_path / "ok.safetensors"
    ok.write_bytes(rewrite(raw, read_header(raw)[0]))
    MlpRanker.load(ok)


def test_missing_file_is_os_error(tmp_path):
    with pytest.raises(OSError):
        MlpRanker.load(tmp_path / "nope.safetensors")
