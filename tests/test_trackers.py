"""The built-in trackers, read back by their own readers: TensorBoard's ``EventAccumulator`` and
MLflow's ``MlflowClient``; a run killed midway and resumed continues its curves without
repeating an epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_manifest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from bnbench.errors import BnbenchError
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

KILL_PLUGIN = Path(__file__).parent / "kill_plugin.py"
CURVES = ("train_loss", "test_accuracy")


def stored(path: Path, registry=None) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Run id → metric → ``(epoch, value)`` of the runs in the store of the manifest at ``path``."""
    manifest = open_session(path).manifest
    with Store(manifest.results_path, read_only=True) as store:
        runs = store.load(r.run_id for r in manifest.runs())
    return {
        run_id: {m: [(e.epoch, e.metrics[m]) for e in record.epochs] for m in CURVES} for run_id, record in runs.items()
    }


def tensorboard_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {m: [(s.step, s.value) for s in events.Scalars(m)] for m in CURVES}


def mlflow_runs(store: Path, experiment: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id])


def mlflow_curves(store: Path, mlflow_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    return {m: sorted((p.step, p.value) for p in client.get_metric_history(mlflow_id, m)) for m in CURVES}


def close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Same epochs in order, values within float32 rounding (TensorBoard stores float32)."""
    if [e for e, _ in a] != [e for e, _ in b]:
        return False
    return all(abs(x - y) <= 1e-6 * max(1, abs(y)) for (_, x), (_, y) in zip(a, b, strict=True))


def test_tensorboard_holds_every_epoch_of_every_run_and_its_axes_as_hparams(write_manifest, tmp_path):
    text = tiny_manifest().replace('device = "cpu"\n', 'device = "cpu"\ntrackers = ["tensorboard"]\n')
    path = write_manifest(text)
    assert run_manifest(open_session(path).manifest).statuses == {"done": 2}
    expected = stored(path)
    folders = sorted((tmp_path / "results.sqlite.tensorboard" / "tiny").iterdir())
    assert len(folders) == 2  # one folder per run
    for folder in folders:
        run_id = folder.name.rsplit("-", 1)[1]
        assert folder.name.startswith(("placement=all,seed=0", "placement=none,seed=0"))
        curves = tensorboard_curves(folder)
        assert all(close(curves[m], expected[run_id][m]) for m in CURVES), (curves, expected[run_id])
        events = EventAccumulator(str(folder))
        events.Reload()
        started = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(started).session_start_info.hparams
        assert hparams["study"].string_value == "tiny" and hparams["run_id"].string_value == run_id
        assert hparams["placement"].string_value in ("all", "none") and hparams["seed"].number_value == 0


def test_mlflow_holds_params_metrics_status_and_the_run_id(write_manifest, tmp_path):
    path = write_manifest(tiny_manifest())
    assert run_manifest(open_session(path, trackers=["mlflow"]).manifest).statuses == {"done": 2}
    expected = stored(path)
    runs = mlflow_runs(tmp_path / "results.sqlite.mlflow.db", "tiny")
    assert sorted(r.data.tags["bnbench.run_id"] for r in runs) == sorted(expected)
    for found in runs:
        run_id = found.data.tags["bnbench.run_id"]
        assert found.info.status == "FINISHED" and found.data.tags["bnbench.status"] == "done"
        assert found.data.params["placement"] in ("all", "none") and found.data.params["seed"] == "0"
        assert found.data.params["spec.model.name"] == "mlp"
        assert found.data.params["spec.model.options.widths"] == "[16]"  # MLflow refuses "[0]" in names
        curves = mlflow_curves(tmp_path / "results.sqlite.mlflow.db", found.info.run_id)
        assert all(close(curves[m], expected[run_id][m]) for m in CURVES)


@pytest.mark.slow
def test_track_names_a_tracker_from_the_command_line_and_an_unknown_one_is_one_line(write_manifest, tmp_path):
    path = write_manifest(tiny_manifest(placement='"none"'))
    unknown = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(path), "--track", "wandb"], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "tracker" in unknown.stderr and "mlflow" in unknown.stderr and "tensorboard" in unknown.stderr
    assert not (tmp_path / "results.sqlite").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_run_killed_midway_and_resumed_continues_its_curves_without_repeating_an_epoch(
    write_manifest, tmp_path, tracker
):
    # checkpoints every 2 epochs; the kill comes in epoch 4, after epoch 3 was tracked: the resumed run
    # trains epoch 3 again from the epoch-2 checkpoint, and must not track it twice
    text = tiny_manifest(placement='"none"', epochs=4).replace(
        'device = "cpu"\n',
        f'device = "cpu"\ncheckpoint_every = 2\ntrackers = ["{tracker}"]\nplugins = ["{KILL_PLUGIN}"]\n',
    )
    path = write_manifest(text)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "BNBENCH_TEST_KILL_AT_STEP": "14", "BNBENCH_TEST_KILL_MARKERS": str(markers)}
    command = [sys.executable, "-m", "bnbench", "run", str(path), "--no-report"]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    ((run_id, expected),) = stored(path).items()
    with Store(tmp_path / "results.sqlite", read_only=True) as store:
        assert store.load([run_id])[run_id].info["resumed_from_step"] == 8
    if tracker == "tensorboard":
        (folder,) = (tmp_path / "results.sqlite.tensorboard" / "tiny").iterdir()
        curves = tensorboard_curves(folder)
    else:
        (found,) = mlflow_runs(tmp_path / "results.sqlite.mlflow.db", "tiny")
        assert found.info.status == "FINISHED"
        curves = mlflow_curves(tmp_path / "results.sqlite.mlflow.db", found.info.run_id)
    for metric in CURVES:
        assert [epoch for epoch, _ in curves[metric]] == [1, 2, 3, 4], (metric, curves[metric])
        assert close(curves[metric], expected[metric])


def test_a_tracker_without_its_extra_stops_the_sweep_before_anything_is_recorded(write_manifest, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    path = write_manifest(tiny_manifest())
    with pytest.raises(BnbenchError, match=r"pip install 'bnbench\[tensorboard\]'"):
        run_manifest(open_session(path, trackers=["tensorboard"]).manifest)
    assert not (tmp_path / "results.sqlite").exists()
