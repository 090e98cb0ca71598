"""Reports on a store with known contents: aggregation over seeds, statuses, formats."""

from __future__ import annotations

import csv
import io
import re

import pytest
from conftest import TINY_STUDY, tiny_manifest

from bnbench import report
from bnbench.records import EpochRecord, RunResult
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

# (placement, seed) → final-epoch test accuracy, or a status
KNOWN = {
    ("all", 0): [0.80, 0.90],
    ("all", 1): [0.70, 0.70],
    ("none", 0): "diverged",
    ("none", 1): [0.40, 0.50],
}


@pytest.fixture
def known_store(write_manifest, registry):
    manifest = open_session(write_manifest(tiny_manifest(seeds="[0, 1]")), registry=registry).manifest
    with Store(manifest.results_path) as store:
        store.link(manifest.runs())
        for planned in manifest.runs():
            outcome = KNOWN[(planned.axes["placement"], planned.spec.seed)]
            if outcome == "diverged":
                result = RunResult(planned.run_id, "diverged", diverged_step=7)
            else:
                epochs = [
                    EpochRecord(i + 1, 4 * (i + 1), {"test_accuracy": acc, "train_loss": 1.0 - acc})
                    for i, acc in enumerate(outcome)
                ]
                result = RunResult(
                    planned.run_id,
                    "done",
                    epochs=epochs,
                    started_at=1.0,
                    finished_at=3.0,
                    environment={"device": "cpu"},
                    info={"total_steps": 8},
                )
            store.record(planned, result)
    return manifest


def test_table_aggregates_seeds(known_store):
    with Store(known_store.results_path) as store:
        text = report.from_manifest(known_store, store, load_registry()).render("github")
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    # all: final 0.90 and 0.70 → 80.00 ± 14.14; best 0.90 and 0.70 → same
    assert "80.00 ± 14.14" in lines["all"]
    assert "| 2/2 " in lines["all"] and "0.2000 ± 0.1414" in lines["all"]
    # none: one diverged (step 7), the other 50%
    assert "50.00 (n = 1)" in lines["none"] and "1 (step 7)" in lines["none"]  # one finished seed: no spread
    assert "## tiny" in text
    # cost: 2 s per run; 8 steps x batch 32 / 2 s = 128 images/s; on the CPU
    cells = [c.strip() for c in lines["all"].split("|")]
    assert cells[-4:-1] == ["2.0s", "128", "cpu"]


def test_report_from_the_database_alone_matches(known_store):
    with Store(known_store.results_path) as store:
        from_db = report.from_store(store, load_registry()).render("plain")
        from_manifest = report.from_manifest(known_store, store, load_registry()).render("plain")
    assert from_db.split("\n\n")[-1] == from_manifest.split("\n\n")[-1]


def test_csv_has_numbers(known_store):
    with Store(known_store.results_path) as store:
        text = report.from_manifest(known_store, store, load_registry()).render("csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    by_placement = {r["placement"]: r for r in rows}
    assert float(by_placement["all"]["final_test_acc_mean"]) == pytest.approx(0.8)
    assert float(by_placement["all"]["best_test_acc_std"]) == pytest.approx(0.1414, abs=1e-4)
    assert by_placement["none"]["diverged"] == "1" and by_placement["none"]["finished"] == "2"


def test_csv_of_studies_with_different_axes_has_every_axis_column(write_manifest, registry):
    second = TINY_STUDY.format(placement='"all"', lr="[0.01, 0.05]", seeds="[0]", epochs=1).replace("tiny", "lrs")
    manifest = open_session(write_manifest(tiny_manifest(epochs=1) + second), registry=registry).manifest
    run_manifest(manifest)
    with Store(manifest.results_path) as store:
        text = report.from_manifest(manifest, store, load_registry()).render("csv")
    results = re.split(r"\r?\n\r?\n", text)[0]  # the standard results table, before the other tables
    rows = list(csv.DictReader(io.StringIO(results)))
    assert list(rows[0])[:3] == ["study", "placement", "optimizer.lr"]
    assert [(r["study"], r["placement"], r["optimizer.lr"]) for r in rows] == [
        ("tiny", "all", ""),
        ("tiny", "none", ""),
        ("lrs", "", "0.01"),
        ("lrs", "", "0.05"),
    ]
    assert all(r["finished"] == "1" for r in rows)


def test_latex_and_pending_runs(write_manifest, registry, known_store):
    with Store(known_store.results_path) as store:
        latex = report.from_manifest(known_store, store, load_registry()).render("latex")
    assert "\\toprule" in latex and "80.00 ± 14.14" in latex
    bigger = open_session(write_manifest(tiny_manifest(seeds="[0, 1, 2]")), registry=registry).manifest
    with Store(bigger.results_path) as store:
        text = report.from_manifest(bigger, store, load_registry()).render("github")
    assert "(2 of 6 runs not yet run)" in text and "| 2/3 " in text


def test_the_standard_table_is_an_analysis_and_a_plugin_can_add_a_standard_one(known_store):
    from bnbench import hookimpl
    from bnbench.api import AnalysisResult, Table
    from bnbench.errors import PluginError

    class Seeds:
        @hookimpl
        def bnbench_register_analyses(self, register):
            def seed_count(study, options):
                """How many seeds the study stored."""
                return AnalysisResult(tables=[Table("Seeds", ["seeds"], [[len({r.seed for r in study.runs})]])])

            register("seed_count", seed_count, standard=True)

    registry = load_registry(objects=[("seeds", Seeds())])
    assert registry.get("analysis", "results_table").extras["standard"] is True  # the built-in table, by declaration
    assert registry.get("analysis", "other_metrics").extras == {"standard": "after"}
    with Store(known_store.results_path) as store:
        text = report.from_manifest(known_store, store, registry).render("github")
    assert "### Results" in text and "### Seeds" in text and "80.00 ± 14.14" in text

    class Bad:
        @hookimpl
        def bnbench_register_analyses(self, register):
            register("odd", lambda study, options: AnalysisResult(), standard="yes")

    with pytest.raises(PluginError, match="invalid standard: 'yes' is not true, false or 'after'"):
        load_registry(objects=[("bad", Bad())])


def test_an_analysis_declares_what_it_reads_as_names_or_a_function_of_its_options():
    from bnbench import hookimpl
    from bnbench.api import AnalysisResult
    from bnbench.errors import PluginError

    registry = load_registry()
    results = registry.get("analysis", "results_table")
    reads = results.extras["reads"](results.options.model_validate({"accuracy": "validation_accuracy"}))
    assert reads == ("validation_accuracy", "train_loss")

    class Bad:
        @hookimpl
        def bnbench_register_analyses(self, register):
            register("odd", lambda study, options: AnalysisResult(), reads=5)

    with pytest.raises(PluginError, match="invalid reads: 5 is neither metric names nor a function"):
        load_registry(objects=[("bad", Bad())])


def test_the_report_shows_why_a_run_failed(write_manifest, tmp_path):
    import fault_plugins

    text = tiny_manifest(placement='"none"', seeds="[0, 1]").replace(
        'device = "cpu"\n', f'device = "cpu"\nplugins = ["{fault_plugins.__file__}"]\n'
    )
    text = text.replace('model = { name = "mlp", widths = [16] }', 'model = ["crash", { name = "mlp", widths = [16] }]')
    manifest = open_session(write_manifest(text)).manifest
    registry = load_registry([fault_plugins.__file__])
    assert run_manifest(manifest, registry=registry).statuses == {"failed": 2, "done": 2}
    with Store(manifest.results_path) as store:
        rendered = report.from_manifest(manifest, store, registry).render("github")
    failed = rendered.split("### Failed runs")[1].split("\n### ")[0]
    rows = [line for line in failed.splitlines() if line.startswith("| crash ")]
    assert len(rows) == 2 and all("RuntimeError: kaboom" in row for row in rows), failed
    assert "| mlp" not in failed  # the runs that finished are not listed


def test_a_line_for_a_run_without_headline_metrics_has_no_dangling_dash():
    import io

    from bnbench.progress import Progress

    stream = io.StringIO()
    progress = Progress(2, stream=stream, bars=False)
    progress.start_run("probe", 1)
    progress.end_run("done", "(2.8s)")
    progress.start_run("train", 1)
    progress.end_run("done", "test_accuracy=0.9 (1.0s)")
    assert stream.getvalue().splitlines() == [
        "[1/2] probe: done (2.8s)",
        "[2/2] train: done — test_accuracy=0.9 (1.0s)",
    ]
