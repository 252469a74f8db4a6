"""The delta format: bundles, array patches, deltas, Kafka chunks, checksums and signatures."""

from __future__ import annotations

import json
import struct
import tempfile
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.publishing.array_bundle import decode_bundle, encode_bundle
from pipeline.publishing.array_patch import ArrayPatch, apply_update, diff
from pipeline.publishing.chunks import ChunkAssembler, Signer, encode_chunks, parse_chunk
from pipeline.publishing.delta import ModelDelta, TableDelta, split_state, state_arrays
from pipeline.publishing.errors import (
    ChecksumError,
    DeltaFormatError,
    SignatureError,
    SigningKeyError,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_delta(rng: np.random.Generator, rows: int = 50, dim: int = 4) -> ModelDelta:
    ids = rng.choice(10_000, size=rows, replace=False).astype(np.int64)
    emb = rng.standard_normal((rows, dim)).astype(np.float32)
    prev = rng.standard_normal((3, 40, 5))
    cur = prev.copy()
    cur[:, 7] += 1.0
    return ModelDelta(
        version=9,
        base=8,
        created_at=T0,
        step_time=T0,
        store_version=321,
        tables=(
            TableDelta("ads", ids, emb, np.array([5, 6], np.int64)),
            TableDelta("empty", np.empty(0, np.int64), np.empty((0, 2), np.float32), ids[:0]),
        ),
        state={
            "dense/top.0.weight": rng.standard_normal((8, 3)).astype(np.float32),
            "featurizer/agg.c.stats": diff(prev, cur),
        },
    )


def test_delta_roundtrip_keeps_every_value() -> None:
    delta = make_delta(np.random.default_rng(0))
    back = ModelDelta.from_bytes(delta.to_bytes())
    assert (back.version, back.base, back.store_version) == (9, 8, 321)
    assert back.created_at == T0 and back.step_time.tzinfo is not None
    assert [t.name for t in back.tables] == ["ads", "empty"]
    for a, b in zip(delta.tables, back.tables, strict=True):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.emb, b.emb)
        assert np.array_equal(a.tombstones, b.tombstones) and a.dim == b.dim
    assert back.rows == 50 and back.tombstones == 2
    patch = back.state["featurizer/agg.c.stats"]
    assert isinstance(patch, ArrayPatch) and patch.index.tolist() == [7]
    assert np.array_equal(back.state["dense/top.0.weight"], delta.state["dense/top.0.weight"])


def test_reset_marker_has_no_base() -> None:
    marker = ModelDelta(version=1, base=None, created_at=T0, step_time=T0, store_version=0)
    back = ModelDelta.from_bytes(marker.to_bytes())
    assert back.is_reset and back.rows == 0 and back.describe() == "delta v1 (base None)"


def test_bundle_refuses_object_arrays_and_bad_dtypes() -> None:
    with pytest.raises(TypeError, match="only bool, int and float"):
        encode_bundle({}, {"x": np.array([object()], dtype=object)})
    blob = encode_bundle({}, {"x": np.zeros(2, np.int64)})
    forged = blob.replace(b'"I64"', b'"OBJ"')
    with pytest.raises(DeltaFormatError, match="not a valid safetensors bundle"):
        decode_bundle(forged, "forged")
    legacy = bytes.fromhex(FORMAT_1_BUNDLE).replace(b'"<i8"', b'"|O8"')
    with pytest.raises(DeltaFormatError, match=r"not allowed|bad dtype"):
        decode_bundle(legacy, "forged")


def test_bundles_are_safetensors_with_metadata_in_the_header() -> None:
    from safetensors import safe_open
    from safetensors.numpy import load

    arrays = {"ids": np.array([5, 7], np.int64), "w": np.ones((2, 3), np.float32)}
    blob = encode_bundle({"version": 4, "note": "é"}, arrays)
    size = struct.unpack_from("<Q", blob)[0]
    header = json.loads(blob[8 : 8 + size])
    assert header["__metadata__"]["freshet.format"] == "bundle/2"
    assert json.loads(header["__metadata__"]["freshet.meta"]) == {"version": 4, "note": "é"}
    assert {k: v.tolist() for k, v in load(blob).items()} == {
        k: v.tolist() for k, v in arrays.items()
    }
    meta, back = decode_bundle(blob, "b")
    assert meta == {"version": 4, "note": "é"}
    assert all(back[k].flags.writeable and np.array_equal(back[k], arrays[k]) for k in arrays)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as fh:  # a file any tool opens
        fh.write(blob)
        fh.flush()
        with safe_open(fh.name, framework="numpy") as f:
            assert f.metadata()["freshet.format"] == "bundle/2"
            assert f.get_tensor("ids").tolist() == [5, 7]


# a bundle written by Freshet 0.1.0's own format (magic FSHB), before safetensors
FORMAT_1_BUNDLE = (
    "4653484201000000b00000007b22617272617973223a5b7b226474797065223a223c6938222c226e616d65223a"
    "22696473222c226e6279746573223a31362c226f6666736574223a302c227368617065223a5b325d7d2c7b2264"
    "74797065223a223c6634222c226e616d65223a2277222c226e6279746573223a382c226f6666736574223a3136"
    "2c227368617065223a5b312c325d7d5d2c226d657461223a7b226b696e64223a2264656c7461222c2276657273"
    "696f6e223a337d7d00000000050000000000000007000000000000000000003f000080bf"
)


def test_bundles_of_the_format_before_safetensors_are_still_read() -> None:
    meta, arrays = decode_bundle(bytes.fromhex(FORMAT_1_BUNDLE), "old")
    assert meta == {"version": 3, "kind": "delta"}
    assert arrays["ids"].tolist() == [5, 7] and arrays["w"].tolist() == [[0.5, -1.0]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:4], "too short"),
        (lambda b: struct.pack("<Q", 10**9) + b[8:], "runs past the end"),
        (lambda b: b[:-3], "not a valid safetensors bundle"),
        (lambda b: b.replace(b"bundle/2", b"bundle/9"), "bundle format 'bundle/9'"),
        (lambda b: b.replace(b"freshet.meta", b"freshet.xxxx"), "no Freshet metadata"),
        (lambda b: b[:8] + b"\xff" + b[9:], "no Freshet metadata"),
    ],
)
def test_bundle_rejects_damage(mutate: object, message: str) -> None:
    blob = encode_bundle({"a": 1}, {"x": np.arange(4, dtype=np.float32)})
    with pytest.raises(DeltaFormatError, match=message):
        decode_bundle(mutate(blob), "blob")  # type: ignore[operator]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:4] + b"\x02" + b[5:], "format version 2"),
        (lambda b: b[:10], "too short"),
        (lambda b: b[:20], "runs past the end"),
        (lambda b: b[:-3], "runs past the end of the data"),
        (lambda b: b[:8] + struct.pack("<I", 10**9) + b[12:], "runs past the end"),
    ],
)
def test_format_1_bundle_rejects_damage(mutate: object, message: str) -> None:
    blob = bytes.fromhex(FORMAT_1_BUNDLE)
    with pytest.raises(DeltaFormatError, match=message):
        decode_bundle(mutate(blob), "blob")  # type: ignore[operator]


def test_state_arrays_split_back() -> None:
    import torch

    arrays = state_arrays({"w": torch.ones(2)}, {"agg.k": np.arange(3)})
    dense, feats = split_state(arrays)
    assert dense["w"].tolist() == [1.0, 1.0] and feats["agg.k"].tolist() == [0, 1, 2]


# -- patches -------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    prev=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)),
    grow=st.integers(0, 3),
    flips=st.lists(st.integers(0, 200), max_size=6),
)
def test_patch_reproduces_the_new_array_bit_for_bit(
    prev: np.ndarray, grow: int, flips: list[int]
) -> None:
    axis = int(np.argmax(prev.shape))
    shape = list(prev.shape)
    shape[axis] += grow
    cur = np.zeros(shape, np.float64)
    lead = [slice(None)] * prev.ndim
    lead[axis] = slice(0, prev.shape[axis])
    cur[tuple(lead)] = prev
    flat = cur.reshape(-1)
    for f in flips:
        if flat.size:
            flat[f % flat.size] = np.nan if f % 3 == 0 else f
    upd = diff(prev, cur, max_ratio=10.0)
    out = apply_update(prev, upd)
    assert out.shape == cur.shape
    assert out.tobytes() == cur.tobytes()


def test_patch_only_when_it_pays() -> None:
    prev = np.zeros((1000, 4))
    cur = prev.copy()
    cur[3] = 1.0
    small = diff(prev, cur)
    assert isinstance(small, ArrayPatch) and small.index.tolist() == [3]
    assert small.nbytes < cur.nbytes / 10
    everything = prev + 1.0
    assert diff(prev, everything) is everything  # a full patch does not pay
    shrunk = cur[:5]
    assert diff(prev[:10], shrunk) is shrunk  # shrank: whole array
    assert diff(None, cur) is cur


def test_patch_refuses_a_mismatched_base() -> None:
    prev, cur = np.zeros((10, 2)), np.zeros((12, 2))
    cur[11] = 1
    patch = diff(prev, cur)
    assert isinstance(patch, ArrayPatch)
    with pytest.raises(ValueError, match="does not fit"):
        apply_update(np.zeros((10, 3)), patch)
    with pytest.raises(ValueError, match="needs the previous array"):
        apply_update(None, patch)


# -- chunks ----------------------------------------------------------------------
def chunks_of(payload: bytes, signer: Signer | None = None, size: int = 4096) -> list[bytes]:
    return encode_chunks(
        payload, version=4, base=3, created_at=T0, max_message_bytes=size, signer=signer
    )


def test_chunks_respect_the_limit_and_reassemble_in_any_order() -> None:
    payload = np.random.default_rng(1).bytes(50_000)
    msgs = chunks_of(payload)
    assert len(msgs) == -(-50_000 // (4096 - 1024)) and all(len(m) <= 4096 for m in msgs)
    assembler = ChunkAssembler()
    order = np.random.default_rng(2).permutation(len(msgs))
    results = [assembler.add(msgs[i]) for i in order]
    assert all(r is None for r in results[:-1])
    done = results[-1]
    assert done is not None and done.payload == payload and done.header.version == 4
    assert assembler.pending_versions == []


def test_duplicate_chunks_are_harmless() -> None:
    payload = b"abc" * 5000
    msgs = chunks_of(payload)
    assembler = ChunkAssembler()
    assert assembler.add(msgs[0]) is None and assembler.add(msgs[0]) is None
    for m in msgs[1:-1]:
        assert assembler.add(m) is None
    done = assembler.add(msgs[-1])
    assert done is not None and done.payload == payload


def test_a_corrupted_chunk_fails_the_checksum() -> None:
    msgs = chunks_of(b"q" * 20_000)
    bad = bytearray(msgs[2])
    bad[-5] ^= 0xFF
    msgs[2] = bytes(bad)
    assembler = ChunkAssembler()
    with pytest.raises(ChecksumError, match=r"delta v4 \(base 3\): sha256 mismatch"):
        for m in msgs:
            assembler.add(m)
    assert assembler.pending_versions == []


def test_a_corrupted_header_is_a_format_error() -> None:
    msg = chunks_of(b"z" * 100)[0]
    broken = msg[:9] + b"[" + msg[10:]
    with pytest.raises(DeltaFormatError, match="delta chunk: header is not JSON"):
        ChunkAssembler().add(broken)
    renamed = msg.replace(b'"base"', b'"bose"', 1)
    with pytest.raises(DeltaFormatError, match="needs a base"):
        ChunkAssembler().add(renamed)
    with pytest.raises(DeltaFormatError, match="too short"):
        parse_chunk(b"FS")


def test_hmac_rejects_wrong_key_unsigned_and_tampered_version() -> None:
    payload = b"payload" * 100
    signer = Signer(b"k1")
    ok = ChunkAssembler(signer).add(chunks_of(payload, signer)[0])
    assert ok is not None and ok.payload == payload
    with pytest.raises(SignatureError, match="HMAC does not verify"):
        ChunkAssembler(signer).add(chunks_of(payload, Signer(b"k2"))[0])
    with pytest.raises(SignatureError, match="unsigned"):
        ChunkAssembler(signer).add(chunks_of(payload)[0])
    # claim another version for the same signed payload: the HMAC covers the version
    header, data = parse_chunk(chunks_of(payload, signer)[0])
    forged = json.loads(header.to_json())
    forged["version"] = 5
    raw = json.dumps(forged).encode()
    msg = b"FSHD" + struct.pack("<BI", 1, len(raw)) + raw + data
    with pytest.raises(SignatureError, match="delta v5"):
        ChunkAssembler(signer).add(msg)
    # without a configured key signatures are not required
    assert ChunkAssembler().add(chunks_of(payload, Signer(b"k2"))[0]) is not None


def test_incomplete_versions_are_bounded_and_dropped_by_newer_ones() -> None:
    assembler = ChunkAssembler(max_pending=2)
    for v in range(5):
        msgs = encode_chunks(
            b"x" * 9000, version=v, base=v - 1, created_at=T0, max_message_bytes=4096
        )
        assembler.add(msgs[0])
    assert assembler.pending_versions == [3, 4]
    done = encode_chunks(b"y", version=9, base=8, created_at=T0, max_message_bytes=4096)
    assert assembler.add(done[0]) is not None
    assert assembler.pending_versions == []


def test_signing_key_sources(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    monkeypatch.setenv("FRESHET_TEST_KEY", " s3cret \n")
    signer = Signer.load(env="FRESHET_TEST_KEY")
    assert signer is not None and "s3cret" not in repr(signer)
    key_file = tmp_path / "key"
    key_file.write_bytes(b"s3cret\n")
    from_file = Signer.load(path=key_file)
    assert from_file is not None and from_file.sign(1, 0, 1, "a" * 64) == signer.sign(
        1, 0, 1, "a" * 64
    )
    monkeypatch.delenv("FRESHET_TEST_KEY")
    with pytest.raises(SigningKeyError, match=r"\$FRESHET_TEST_KEY"):
        Signer.load(env="FRESHET_TEST_KEY")
    with pytest.raises(SigningKeyError, match="cannot read"):
        Signer.load(path=tmp_path / "absent")
