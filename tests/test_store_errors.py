"""Damaged, read-only and empty stores: clear errors, never a traceback; commands that only read
never write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import tiny_manifest
from test_cli import bnbench

from bnbench.errors import StoreError
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest


@pytest.fixture
def finished(write_manifest, registry, tmp_path) -> Path:
    """A manifest whose tiny sweep has run: its store holds results."""
    path = write_manifest(tiny_manifest())
    assert run_manifest(open_session(path, registry=registry).manifest).statuses == {"done": 2}
    return path


@pytest.mark.slow
def test_plan_and_report_read_a_read_only_store_without_writing(finished, tmp_path):
    store = tmp_path / "results.sqlite"
    before = store.read_bytes()
    store.chmod(0o444)
    try:
        for command in ("plan", "report"):
            result = bnbench(command, str(finished), cwd=tmp_path)
            assert result.returncode == 0, result.stderr
        assert "2 runs, 0 to run" in bnbench("plan", str(finished), cwd=tmp_path).stdout
        assert bnbench("report", str(store), cwd=tmp_path).returncode == 0
    finally:
        store.chmod(0o644)
    assert store.read_bytes() == before


@pytest.mark.slow
def test_plan_leaves_an_empty_file_empty(write_manifest, tmp_path):
    path = write_manifest(tiny_manifest())
    (tmp_path / "results.sqlite").write_bytes(b"")
    result = bnbench("plan", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "is not a bnbench results store" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "results.sqlite").read_bytes() == b""


def test_a_damaged_store_is_a_clear_error_in_every_command(finished, tmp_path):
    store = tmp_path / "results.sqlite"
    with Store(store) as opened:  # fold the write-ahead log into the file first
        opened.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(store.read_bytes())
    page = 4096
    data[page : page * 3] = os.urandom(page * 2)  # random bytes over the tables' pages
    store.write_bytes(bytes(data))
    for args in (("plan", str(finished)), ("report", str(finished)), ("report", str(store)), ("run", str(finished))):
        result = bnbench(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and "results store" in result.stderr, (args, result.stderr)


def test_a_store_with_a_damaged_header_is_not_read_as_a_manifest(finished, tmp_path):
    store = tmp_path / "results.sqlite"
    data = bytearray(store.read_bytes())
    data[:16] = b"x" * 16
    store.write_bytes(bytes(data))
    result = bnbench("report", str(store), cwd=tmp_path)
    assert result.returncode == 2 and "not a SQLite database" in result.stderr and "TOML" not in result.stderr


def test_read_only_store_refuses_a_missing_file(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nothing.sqlite", read_only=True)
    assert not (tmp_path / "nothing.sqlite").exists()


def test_checkpoints_left_by_a_kill_after_recording_are_cleaned_up_on_the_next_run(finished, registry):
    from bnbench.checkpoint import Checkpoints

    manifest = open_session(finished, registry=registry).manifest
    done = manifest.runs()[0].run_id
    checkpoints = Checkpoints.beside(manifest.results_path)
    checkpoints.save(done, {"step": 3})  # as if killed between recording the result and discarding these
    checkpoints.save("0123abcd", {"step": 1})  # a run this store has no result of: kept
    summary = run_manifest(manifest)
    assert summary.skipped == 2 and not summary.statuses
    assert checkpoints.run_ids() == ["0123abcd"]
