"""Store and disk errors are one clear line (exit 2), never a traceback, and never lose a result:
a results path that cannot be created, a checkpoint folder that cannot be written, a store that
turns read-only mid-sweep, checkpoints that cannot be removed. (The suite may run as root, whom
file modes do not stop: the errors come from real paths that no one can write, or are injected.)"""

from __future__ import annotations

import sqlite3

import pytest
from conftest import tiny_manifest
from test_executors import results

from bnbench.checkpoint import Checkpoints
from bnbench.cli import main
from bnbench.errors import StoreError
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest


def test_a_results_path_under_a_file_is_a_clear_error_before_any_training(write_manifest, tmp_path, capsys):
    (tmp_path / "not-a-folder").write_text("")
    path = write_manifest(tiny_manifest().replace("results.sqlite", "not-a-folder/results.sqlite"))
    assert main(["run", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "cannot create results store" in err and "not-a-folder" in err and "Traceback" not in err


def test_a_results_path_on_a_read_only_file_system_is_a_clear_error(write_manifest, capsys):
    path = write_manifest(tiny_manifest().replace("results.sqlite", "/proc/bnbench/results.sqlite"))
    assert main(["run", str(path), "--no-report"]) == 2
    assert "cannot create results store /proc/bnbench/results.sqlite" in capsys.readouterr().err


def test_an_unwritable_checkpoint_folder_stops_the_sweep_before_training(write_manifest, tmp_path, capsys):
    path = write_manifest(tiny_manifest())
    (tmp_path / "results.sqlite.checkpoints").write_text("a file where the folder belongs")
    assert main(["run", str(path), "--no-report"]) == 2
    assert "cannot write checkpoints in" in capsys.readouterr().err
    with Store(tmp_path / "results.sqlite") as store:
        assert set(store.statuses(r.run_id for r in open_session(path).manifest.runs()).values()) <= {"interrupted"}


def test_a_store_that_turns_read_only_mid_sweep_stops_it_keeping_every_recorded_result(
    write_manifest, monkeypatch, capsys
):
    manifest = open_session(write_manifest(tiny_manifest(seeds="[0, 1]"))).manifest
    written = []
    original = Store.record

    def record_once(self, planned, result):
        if written:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        original(self, planned, result)
        written.append(planned.run_id)

    monkeypatch.setattr(Store, "record", record_once)
    with pytest.raises(StoreError, match=r"cannot write the results store .*attempt to write a readonly database"):
        run_manifest(manifest)
    monkeypatch.setattr(Store, "record", original)
    stored = results(manifest)
    assert stored[written[0]][0] == "done"  # the result recorded before the failure is kept
    summary = run_manifest(manifest)  # writable again: the same command finishes the sweep
    assert summary.skipped == 1 and summary.statuses == {"done": 3}


def test_checkpoints_that_cannot_be_removed_are_a_warning_and_the_result_is_kept(write_manifest, monkeypatch, capsys):
    manifest = open_session(write_manifest(tiny_manifest())).manifest

    def refuse(self, run_id):
        raise PermissionError(13, "Permission denied", str(self.directory / run_id))

    monkeypatch.setattr(Checkpoints, "discard", refuse)
    summary = run_manifest(manifest)
    assert summary.statuses == {"done": 2}
    assert "warning: cannot remove the checkpoints of" in capsys.readouterr().err
    assert {status for status, _ in results(manifest).values()} == {"done"}
