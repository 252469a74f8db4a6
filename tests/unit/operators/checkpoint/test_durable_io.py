"""Durable writes: what a checkpoint file's bytes, name and checksum are, and what is refused."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest

from operators.checkpoint.durable_io import (
    HashingWriter,
    fsync_dir,
    json_bytes,
    replace_atomically,
    sha256_file,
    write_bytes,
    write_npy,
)


def test_json_bytes_is_sorted_indented_by_one_and_ends_with_a_newline() -> None:
    # chains.json and world.json are compared byte for byte across writers: the layout is fixed
    got = json_bytes({"b": 1, "a": [1, 2], "c": {"z": None, "y": "x"}})
    assert got == (
        b'{\n "a": [\n  1,\n  2\n ],\n "b": 1,\n "c": {\n  "y": "x",\n  "z": null\n }\n}\n'
    )


def test_json_bytes_refuses_nan_and_infinity() -> None:
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^Out of range float values are not JSON compliant"):
            json_bytes({"x": bad})


def test_write_npy_refuses_an_object_array_and_keeps_structured_dtypes(tmp_path: Path) -> None:
    refused = r"^Object arrays cannot be saved when allow_pickle=False$"
    with pytest.raises(ValueError, match=refused):
        write_npy(str(tmp_path / "o.npy"), np.array([{"a": 1}, None], dtype=object))
    rows = np.array([(1, 2.5), (3, 4.5)], dtype=[("id", "<i8"), ("w", "<f4")])
    sha, size = write_npy(str(tmp_path / "s.npy"), rows)
    data = (tmp_path / "s.npy").read_bytes()
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    back = np.load(tmp_path / "s.npy", allow_pickle=False)
    assert back.dtype == rows.dtype and back.tolist() == rows.tolist()


def test_write_npy_writes_a_non_contiguous_array_in_c_order(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-ordered view
    write_npy(str(tmp_path / "a.npy"), a)
    back = np.load(tmp_path / "a.npy")
    assert back.flags.c_contiguous and back.tolist() == a.tolist()


def test_the_hashing_writer_counts_and_hashes_every_write() -> None:
    raw = io.BytesIO()
    w = HashingWriter(raw)
    assert (w.write(b"ab"), w.write(bytearray(b"cd")), w.write(memoryview(b"e"))) == (2, 2, 1)
    assert w.size == 5 and raw.getvalue() == b"abcde"
    assert w.hexdigest() == hashlib.sha256(b"abcde").hexdigest()


def test_write_bytes_returns_the_checksum_and_size_of_what_is_on_disk(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    assert write_bytes(path, b"hello") == (hashlib.sha256(b"hello").hexdigest(), 5)
    assert sha256_file(path) == hashlib.sha256(b"hello").hexdigest()
    assert Path(path).read_bytes() == b"hello"


def test_fsync_dir_takes_a_directory_only(tmp_path: Path) -> None:
    fsync_dir(str(tmp_path))
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(str(tmp_path / "f"))


def test_replace_atomically_leaves_the_new_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "chains.json"
    path.write_bytes(b"old")
    replace_atomically(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["chains.json"]


def test_a_failed_replace_keeps_the_old_target_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "world.json"
    target.mkdir()  # a directory cannot be replaced by a file
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        replace_atomically(str(target), b"new")
    assert sorted(os.listdir(tmp_path)) == ["world.json"]
    assert (target / "inside").read_bytes() == b"kept"
