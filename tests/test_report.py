"""Reports on a store with known contents: aggregation over seeds, statuses, formats."""

from __future__ import annotations

import csv
import io
import re

import pytest
from conftest import TINY_STUDY, tiny_manifest

from bnbench import report
from bnbench.progress import Progress
from bnbench.records import EpochRecord, RunResult
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest, summarize

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
    stream = io.StringIO()
    progress = Progress(2, stream=stream, bars=False)
    probe = RunResult("p", "done", started_at=1.0, finished_at=3.8, measurements={"norm": 1.0})
    trained = RunResult("t", "done", [EpochRecord(1, 4, {"test_accuracy": 0.9})], started_at=1.0, finished_at=2.0)
    progress.start_run("probe", 1)
    progress.end_run("done", summarize(probe, ("train_loss", "test_accuracy")))
    progress.start_run("train", 1)
    progress.end_run("done", summarize(trained, ("train_loss", "test_accuracy")))
    assert stream.getvalue().splitlines() == [
        "[1/2] probe: done (2.8s)",
        "[2/2] train: done — test_accuracy=0.9 (1.0s)",
    ]


# -- the terminal report and progress (issue #26) ----------------------------------------------
CLAIMABLE = """
from bnbench import hookimpl
from bnbench.analysis import over_seeds
from bnbench.api import AnalysisResult


@hookimpl
def bnbench_register_analyses(register):
    def claimable(study, options):
        \"\"\"Values with long names, one of them undecided.\"\"\"
        gain = over_seeds([9.1, 11.3, 10.2], unit="points")
        return AnalysisResult(values={
            "normalization_gain_in_points.with_batchnorm_at_every_layer.lr=0.05": gain,
            "settled": over_seeds([1.0, 1.1, 0.9], unit="x"),
        })

    register("claimable", claimable)
"""

LONG_CLAIMS = """
[[claims]]
claim = "with batch normalization at every layer the test accuracy is at least eight points higher than without it, at the same learning rate and with every other setting held fixed"
study = "tiny"
value = "normalization_gain_in_points.with_batchnorm_at_every_layer.lr=0.05"
at_least = 8
source = "Fig. 1 (read off): BN at 0.1 ~93% vs no BN at 1e-4 ~82% (11 points); 3 points allowed for reading off"

[[claims]]
claim = "a value that none of the study's analyses reports, so that the verdict lists every value they do report"
study = "tiny"
value = "a_value_nobody_reports_with_a_rather_long_name"
at_most = 3

[[checks]]
id = "settled"
check = "the ratio is settled near one"
kind = "guard"
study = "tiny"
value = "settled"
at_least = 0.5
"""  # noqa: E501 - claims as long as the bundled manifest's


def test_the_compact_claims_tables_fit_120_columns_and_verbose_keeps_the_claim_text(write_manifest, tmp_path, capsys):
    from bnbench.cli import main

    (tmp_path / "claimable.py").write_text(CLAIMABLE)
    text = tiny_manifest(extra=LONG_CLAIMS).replace('device = "cpu"\n', 'device = "cpu"\nplugins = ["claimable.py"]\n')
    path = write_manifest(
        text.replace('normalizer = "batchnorm"\n', 'normalizer = "batchnorm"\nanalyses = ["claimable"]\n')
    )
    assert main(["run", str(path), "--no-report"]) == 0
    capsys.readouterr()
    for fmt in ("github", "plain"):
        assert main(["report", str(path), "--format", fmt]) == 0
        compact = capsys.readouterr().out
        claims = compact[compact.index("Key findings") :]
        assert max(len(line) for line in claims.splitlines()) <= 120, claims
        assert "with batch normalization" not in claims and "Fig. 1" not in claims  # no claim text, no source
        assert "inconclusive (the interval straddles the" in claims  # verdicts keep their reasons, wrapped
        assert "not measured (its analyses report no value" in claims
    assert main(["report", str(path), "--verbose"]) == 0
    verbose = capsys.readouterr().out
    claims_table = verbose[verbose.index("## Claims") : verbose.index("## Checks")]
    assert "| claim " in claims_table and "| source " in claims_table
    assert LONG_CLAIMS.split('claim = "')[1].split('"')[0] in claims_table  # the whole text, on one line


def test_wrapped_cells_break_at_spaces_and_separators_never_inside_a_number():
    assert report.wrap_cell("learned_share.none.lr=0.1", 14) == "learned_share.\nnone.lr=0.1"
    assert report.wrap_cell("[0.0812, 0.1234] (95% t, n=3)", 8) == "[0.0812,\n0.1234]\n(95% t,\nn=3)"
    assert report.wrap_cell("abcdefghij", 4) == "abcd\nefgh\nij"  # a word longer than the column is cut
    assert report.wrap_cell("short", 40) == "short"


def test_one_seed_reads_n_equals_1_rather_than_a_spread_of_zero(known_store):
    from bnbench.analysis import pm

    assert pm([0.5], 100, 2, fixed=True) == "50.00 (n = 1)" and pm([0.5, 0.5], 100, 2, fixed=True) == "50.00 ± 0.00"
    with Store(known_store.results_path) as store:
        text = report.from_manifest(known_store, store, load_registry()).render("github")
    none = next(line for line in text.splitlines() if line.startswith("| none "))
    assert "50.00 (n = 1)" in none and "± 0.00" not in text


def test_off_a_terminal_each_run_line_estimates_the_time_left():
    now = [100.0]
    stream = io.StringIO()
    progress = Progress(4, stream=stream, bars=False, clock=lambda: now[0])
    for elapsed in (20.0, 60.0, 300.0, 400.0):
        now[0] = 100.0 + elapsed
        progress.start_run("run", 1)
        progress.end_run("done", "(1.0s)")
    assert stream.getvalue().splitlines() == [
        "[1/4] run: done (1.0s); about 60s left",  # 20 s per run so far, 3 runs left
        "[2/4] run: done (1.0s); about 60s left",
        "[3/4] run: done (1.0s); about 2 min left",  # 100 s per run, 1 left
        "[4/4] run: done (1.0s)",  # nothing left
    ]
    bar = io.StringIO()
    on_a_terminal = Progress(2, stream=bar, bars=True, clock=lambda: now[0])
    now[0] += 60
    on_a_terminal.start_run("run", 1)
    on_a_terminal.end_run("done", "(1.0s)")
    assert on_a_terminal.time_left() == "" and " left" not in bar.getvalue()  # the bar shows tqdm's estimate


def test_a_resumed_run_says_from_which_step_it_resumed(write_manifest, registry):
    from conftest import run_until_stopped

    from bnbench.checkpoint import Checkpoints

    manifest = open_session(write_manifest(tiny_manifest(placement='"none"')), registry=registry).manifest
    (planned,) = manifest.runs()
    stopped = run_until_stopped(registry, planned, manifest.base_dir, Checkpoints.beside(manifest.results_path), 3)
    assert stopped.step == 3 and stopped.path is not None
    stream = io.StringIO()
    assert run_manifest(manifest, registry=registry, progress=Progress(1, stream=stream, bars=False)).statuses == {
        "done": 1
    }
    (line,) = stream.getvalue().splitlines()
    assert re.fullmatch(r"\[1/1\] tiny seed=0: done — .* \(\d+\.\ds, resumed from step 3\)", line), line
    failed = RunResult("r", "failed", error="RuntimeError: kaboom\nmore", info={"resumed_from_step": 8})
    assert summarize(failed) == "RuntimeError: kaboom (resumed from step 8)"


def test_the_report_of_a_probe_study_shows_why_its_runs_failed(registry):
    from bnbench.records import RunRecord

    probe = {"probe": {"name": "loss_landscape"}, "seed": 0}
    stored = {
        f"r{seed}": RunRecord(f"r{seed}", {"placement": "none"}, seed, probe, "failed", None, [], {}, error=error)
        for seed, error in ((0, "RuntimeError: kaboom\nTraceback (most recent call last): ..."), (1, None))
    }
    planned = [(run_id, r.axes, r.seed) for run_id, r in stored.items()]
    study = report.StudyRuns("probes", ["placement"], planned, stored)
    assert not study.is_training
    rendered = report.Report([study], registry).analyze().render("github")
    failed = rendered.split("### Failed runs")[1]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in failed.strip().splitlines()[2:]]
    assert rows == [["none", "0", "RuntimeError: kaboom"], ["none", "1", "no error recorded"]], failed


def test_a_standard_analysis_run_again_on_other_metrics_gets_its_own_csv_columns(write_manifest, registry):
    analyses = 'analyses = [{ name = "results_table", loss = "test_loss", accuracy = "train_accuracy" }]\n'
    text = tiny_manifest(seeds="[0, 1]").replace('normalizer = "batchnorm"\n', 'normalizer = "batchnorm"\n' + analyses)
    manifest = open_session(write_manifest(text), registry=registry).manifest
    run_manifest(manifest, registry=registry, progress=Progress(4, stream=io.StringIO(), bars=False))
    with Store(manifest.results_path) as store:
        text = report.from_manifest(manifest, store, registry).render("csv")
        runs = store.load(r.run_id for r in manifest.runs())
    blocks = re.split(r"\r?\n\r?\n", text)
    rows = list(csv.DictReader(io.StringIO(blocks[0])))
    assert [r["placement"] for r in rows] == ["all", "none"]  # one row per configuration, not two
    placements = {r.run_id: r.axes["placement"] for r in manifest.runs()}
    for row in rows:
        losses = [r.final("train_loss") for r in runs.values() if placements[r.run_id] == row["placement"]]
        assert float(row["final_train_loss_mean"]) == pytest.approx(sum(losses) / 2, rel=1e-5)
    (again,) = [block for block in blocks if "results_table(" in block]
    title, headers = list(csv.reader(io.StringIO(again)))[:2]
    assert title == ["# tiny: Results (results_table(accuracy=train_accuracy, loss=test_loss))"]
    assert headers[:4] == ["placement", "final train_accuracy %", "best train_accuracy %", "final test_loss"]


def test_the_results_tables_records_are_named_after_the_metrics_they_hold():
    from bnbench.plugins.analyses.results_table import ResultsTableOptions, csv_measures

    default = csv_measures(ResultsTableOptions())
    assert default[:6] == (
        "final_test_acc_mean", "final_test_acc_std", "best_test_acc_mean", "best_test_acc_std",
        "final_train_loss_mean", "final_train_loss_std",
    )  # fmt: skip
    other = csv_measures(ResultsTableOptions(accuracy="train_accuracy", loss="test_loss"))
    assert other[:6] == (
        "final_train_accuracy_mean", "final_train_accuracy_std", "best_train_accuracy_mean",
        "best_train_accuracy_std", "final_test_loss_mean", "final_test_loss_std",
    )  # fmt: skip
    assert other[6:] == default[6:] and len(set(other)) == len(other)
