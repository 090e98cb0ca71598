"""Results as data: a store as tidy DataFrames (``bnbench.frames``) and ``bnbench export``, checked
against counts read straight from the store's tables."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pandas
import pytest
from conftest import tiny_manifest
from test_cli import bnbench

from bnbench.cli import main
from bnbench.errors import BnbenchError
from bnbench.files import OutputError
from bnbench.frames import export, flatten, load_results, load_runs
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.sweep import run_manifest

WEIGHT_NORM_PLUGIN = """
from bnbench import hookimpl


def weight_norm(context, options):
    return {"total": sum(float(p.detach().norm()) ** 2 for p in context.run.model.parameters()) ** 0.5, "tensors": 4}


@hookimpl
def bnbench_register_metrics(register):
    register("weight_norm", weight_norm)
"""

METRICS = '["train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm"]'


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished sweep of 4 runs (placement × lr, 2 epochs) with a plugin's own metric (read only)."""
    tmp_path = tmp_path_factory.mktemp("swept")
    (tmp_path / "weights.py").write_text(WEIGHT_NORM_PLUGIN)
    text = tiny_manifest(lr="[0.05, 0.1]").replace('device = "cpu"\n', 'device = "cpu"\nplugins = ["weights.py"]\n')
    text = text.replace("batch_size = 32\n", f"batch_size = 32\nmetrics = {METRICS}\n")
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    registry = load_registry(["weights.py"], base_dir=tmp_path)
    assert run_manifest(open_session(path, registry=registry).manifest, registry=registry).statuses == {"done": 4}
    return path


def stored_values(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT count(*) FROM epochs JOIN study_runs USING (run_id)").fetchone()[0]


def test_the_results_frame_holds_every_run_epoch_and_metric_with_axes_seed_status_and_spec(swept):
    frame = load_results(swept)
    assert len(frame) == stored_values(swept.parent / "results.sqlite") == 4 * 2 * 6  # weight_norm has two keys
    assert list(frame.columns[:10]) == [
        "study", "run_id", "seed", "status", "placement", "optimizer.lr", "epoch", "step", "metric", "value"
    ]  # fmt: skip
    assert set(frame["metric"]) == {
        "train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm.total", "weight_norm.tensors"
    }  # fmt: skip
    assert frame.groupby(["placement", "optimizer.lr"]).size().to_dict() == {
        (p, lr): 12 for p in ("all", "none") for lr in (0.05, 0.1)
    }
    assert set(frame["status"]) == {"done"} and set(frame["epoch"]) == {1, 2}
    assert {"spec.model.name", "spec.optimizer.lr", "spec.seed"} <= set(frame.columns)
    assert (frame["spec.optimizer.lr"] == frame["optimizer.lr"]).all()  # the axis is the spec's value
    assert (frame.loc[frame.metric == "weight_norm.tensors", "value"] == 4).all()


def test_a_manifest_or_its_store_give_the_same_frame(swept):
    by_manifest = load_results(swept)
    by_store = load_results(swept.parent / "results.sqlite")
    pandas.testing.assert_frame_equal(by_manifest, by_store)
    assert load_results(swept, studies=["another"]).empty


def test_the_runs_frame_has_one_row_per_run(swept):
    runs = load_runs(swept)
    assert len(runs) == 4 and runs["run_id"].is_unique
    assert list(runs.columns[:9]) == [
        "study", "run_id", "seed", "status", "placement", "optimizer.lr", "duration_s", "diverged_step", "error"
    ]  # fmt: skip
    assert (runs["duration_s"] > 0).all() and runs["error"].isna().all()


def export_command(capsys, *args: object) -> tuple[int, str]:
    """``bnbench export ARGS`` in this process: its exit status and what it printed to stderr."""
    status = main(["export", *map(str, args)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_the_long_table_that_reads_back_whole(swept, tmp_path, suffix, capsys):
    out = tmp_path / f"results{suffix}"
    status, said = export_command(capsys, swept, out)
    assert status == 0, said
    assert f"48 values written to {out}" in said
    back = pandas.read_csv(out) if suffix == ".csv" else pandas.read_parquet(out)
    frame = load_results(swept)
    assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
    key = ["run_id", "epoch", "metric"]
    merged = frame.merge(back, on=key, suffixes=("", "_back"))
    assert len(merged) == len(frame) and (merged["value"] - merged["value_back"]).abs().max() < 1e-12


def test_export_of_runs_and_bad_targets(swept, tmp_path, capsys):
    status, said = export_command(capsys, swept, tmp_path / "runs.csv", "--runs")
    assert status == 0 and len(pandas.read_csv(tmp_path / "runs.csv")) == 4, said
    for target in (tmp_path / "results.xlsx", tmp_path / "missing" / "r.csv"):
        status, said = export_command(capsys, swept, target)
        assert status == 2 and "Traceback" not in said, said
        assert said.strip().count("\n") == 0 and str(target) in said


def test_export_refuses_an_unknown_format_before_writing(swept, tmp_path):
    with pytest.raises(OutputError, match=r"\.csv or \.parquet"):
        export(load_results(swept), tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_without_pandas_the_frames_say_which_extra_to_install(swept, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(BnbenchError, match=r"pip install 'bnbench\[data\]'"):
        load_results(swept)


def test_flatten_names_nested_values_by_dotted_paths_and_list_indices():
    nested = {"a": 1, "b": {"c": [0.5, 1.5], "d": "label"}, "e": [{"f": 2}], "g": []}
    assert dict(flatten(nested)) == {"a": 1, "b.c[0]": 0.5, "b.c[1]": 1.5, "b.d": "label", "e[0].f": 2, "g": []}
    assert dict(flatten(nested, lists=False)) == {"a": 1, "b.c": [0.5, 1.5], "b.d": "label", "e": [{"f": 2}], "g": []}


def test_a_plugins_own_metric_appears_in_the_report_with_its_curve(swept, tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    result = bnbench("report", str(swept), "--figures", str(figures), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    other = result.stdout.split("### Other metrics, final epoch")[1].split("\n\n", 2)[1]
    header = other.splitlines()[0]
    assert "weight_norm.total" in header and "weight_norm.tensors" in header and "test_loss" in header
    assert "test_accuracy" not in header and "train_loss" not in header  # the results table shows them
    assert len(other.splitlines()) == 2 + 4  # header, rule, one row per configuration
    assert (figures / "tiny__other_metrics.png").stat().st_size > 0


def test_one_seed_reads_as_its_value_and_several_as_mean_and_spread():
    from bnbench.plugins.analyses.metrics_table import _cell

    assert _cell([0.25]) == "0.25" and _cell([1.0, 3.0]) == "2 ± 1.4" and _cell([]) == "—"
