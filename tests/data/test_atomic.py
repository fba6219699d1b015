"""Atomic replacement (weather/data/atomic.py): readers see the old or the new, never a torn
file; a failed write leaves the target as it was and no temporary behind."""

from __future__ import annotations

import os

import pytest

from weather.data.atomic import replacing, write_bytes


def test_target_keeps_old_content_until_the_block_ends(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    with replacing(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # a reader during the write sees the old file
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_failed_write_leaves_target_and_no_temporary(tmp_path):
    target = tmp_path / "state.npz"
    target.write_bytes(b"kept")
    with pytest.raises(RuntimeError, match="disk full"), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


def test_stale_temporary_from_a_crash_is_replaced(tmp_path):
    target = tmp_path / "store.zarr"
    stale = tmp_path / "store.zarr.creating"
    (stale / "half").mkdir(parents=True)
    with replacing(target, ".creating") as tmp:
        assert not tmp.exists()  # the crash's leftovers are gone before writing starts
        (tmp / "zarr.json").parent.mkdir()
        (tmp / "zarr.json").write_text("{}")
    assert (target / "zarr.json").read_text() == "{}"
    assert not stale.exists()


def test_unique_temporary_names_the_process(tmp_path):
    target = tmp_path / "worker.prom"
    with replacing(target, unique=True) as tmp:
        assert tmp.name == f"worker.prom.{os.getpid()}.tmp"
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_write_bytes_with_sync(tmp_path):
    target = tmp_path / "a" / "b.bin"
    target.parent.mkdir()
    assert write_bytes(target, b"\x00\x01", sync=True) == target
    assert target.read_bytes() == b"\x00\x01"
    write_bytes(target, b"\x02")
    assert target.read_bytes() == b"\x02"
