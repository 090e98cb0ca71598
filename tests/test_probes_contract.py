"""The probe and analysis contract: probe studies, stored measurements, analyses, claims, figures."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from bnbench import hookimpl
from bnbench.api import AnalysisResult, Figure, Options, Table
from bnbench.cli import main
from bnbench.errors import ManifestError
from bnbench.registry import load_registry
from bnbench.report import CLAIM_HEADERS, from_manifest
from bnbench.session import open_session
from bnbench.store import SCHEMA_VERSION, Store
from bnbench.sweep import run_manifest


class ScaleOptions(Options):
    scale: float = 1.0


class ProbePlugin:
    """A probe measuring the mean logit norm of a fresh model, and an analysis of it."""

    @hookimpl
    def bnbench_register_probes(self, register):
        def logit_norm(context, options):
            model = context.build_model()
            images, _ = next(context.data().train_batches(16, context.generator))
            with torch.no_grad():
                norm = model(images).norm(dim=1).mean() * options.scale
            return {"logit_norm": norm, "per_class": torch.arange(3)}

        register("logit_norm", logit_norm, options=ScaleOptions, analyses=["logit_table"])

    @hookimpl
    def bnbench_register_analyses(self, register):
        def logit_table(study, options):
            rows = [[r.axes.get("placement"), r.seed, r.measurements["logit_norm"]] for r in study.runs]
            by = {r.axes.get("placement"): r.measurements["logit_norm"] for r in study.runs}
            values = {"ratio": by["none"] / by["final"]} if {"none", "final"} <= set(by) else {}

            def draw(fig):
                ax = fig.add_subplot()
                ax.bar(range(len(rows)), [row[2] for row in rows])
                ax.set_ylabel("mean logit norm")

            return AnalysisResult(
                [Table("Logit norms", ["placement", "seed", "norm"], rows)], [Figure("logit_norms", draw)], values
            )

        register("logit_table", logit_table)

        def broken(study, options):
            raise ValueError("no data to summarize")

        register("broken", broken)


MANIFEST = """
[harness]
results = "r.sqlite"
device = "cpu"

[[studies]]
name = "logits"
probe = "logit_norm"
model = { name = "mlp", widths = [8] }
dataset = { name = "synthetic", noise = 0.15, image_shape = [1, 4, 4], num_classes = 3, train_size = 32, test_size = 8 }
normalizer = "batchnorm"
placement = ["final", "none"]

[[claims]]
claim = "unnormalized logits are larger"
study = "logits"
value = "ratio"
at_least = 1.0

[[claims]]
claim = "a value nobody reports"
study = "logits"
value = "missing"
at_most = 3
"""


@pytest.fixture
def probe_registry():
    return load_registry(objects=[("probe_plugin", ProbePlugin())])


def test_probe_study_runs_without_training_and_reports(write_manifest, probe_registry, tmp_path):
    manifest = open_session(write_manifest(MANIFEST), registry=probe_registry).manifest
    (study,) = manifest.studies
    assert [a.name for a in study.analyses] == ["logit_table"]  # the probe's default analysis
    assert all(r.spec.is_probe and r.spec.epochs is None for r in study.runs)
    summary = run_manifest(manifest, registry=probe_registry)
    assert summary.statuses == {"done": 2}
    with Store(manifest.results_path) as store:
        stored = store.load(r.run_id for r in study.runs)
        report = from_manifest(manifest, store, probe_registry)
    measured = [s.measurements for s in stored.values()]
    assert all(m["per_class"] == [0, 1, 2] and m["logit_norm"] > 0 for m in measured)
    text = report.render("github")
    assert "### Logit norms" in text and "final test acc" not in text
    (holds, missing) = (dict(zip(CLAIM_HEADERS, row, strict=True)) for row in report.claims_rows())
    assert holds["verdict"].split(" (")[0].split(" [")[0] in ("holds", "does not hold") and holds["id"] == "ratio"
    assert holds["interval"] == "point value: the analysis gave no replicates"  # a plain number
    assert holds["registered"].startswith("pre-registered ")  # the run registered the claims before any result
    assert missing["verdict"].startswith("not measured")
    figures = report.save_figures(tmp_path / "figs")
    assert [p.name for p in figures] == ["logits__logit_norms.png"]
    assert figures[0].read_bytes()[:4] == b"\x89PNG"


def test_claim_for_unknown_study_is_a_manifest_error(write_manifest, probe_registry):
    path = write_manifest(MANIFEST.replace('study = "logits"\nvalue = "ratio"', 'study = "logit"\nvalue = "ratio"'))
    with pytest.raises(ManifestError, match="Did you mean 'logits'"):
        open_session(path, registry=probe_registry)


def test_a_failing_analysis_is_reported_not_raised(write_manifest, probe_registry):
    text = MANIFEST.replace('placement = ["final", "none"]', 'placement = "none"\nanalyses = ["logit_table", "broken"]')
    manifest = open_session(write_manifest(text), registry=probe_registry).manifest
    run_manifest(manifest, registry=probe_registry)
    with Store(manifest.results_path) as store:
        rendered = from_manifest(manifest, store, probe_registry).render("plain")
    assert "Logit norms" in rendered  # one placement only: no ratio, so the claim is not measured
    assert "not measured" in rendered
    assert "analysis 'broken' failed: ValueError: no data to summarize" in rendered


def test_training_study_needs_its_components(write_manifest, registry):
    training = MANIFEST.split("[[claims]]")[0].replace('probe = "logit_norm"\n', "epochs = 1\n")  # no analyses
    path = write_manifest(training)
    manifest = open_session(path, registry=load_registry(objects=[("probe_plugin", ProbePlugin())])).manifest
    assert not manifest.studies[0].runs[0].spec.is_probe
    bare = MANIFEST.replace('probe = "logit_norm"\n', "epochs = 1\n").replace('normalizer = "batchnorm"\n', "")
    with pytest.raises(ManifestError, match="a training study needs normalizer"):
        open_session(write_manifest(bare, "bare.toml"), registry=registry)


def test_store_of_schema_1_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE runs (id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL, started_at REAL,
              finished_at REAL, duration_s REAL, diverged_step INTEGER, error TEXT, environment TEXT, info TEXT,
              owner TEXT, updated_at REAL NOT NULL);
            CREATE TABLE study_runs (study TEXT NOT NULL, run_id TEXT NOT NULL, axes TEXT NOT NULL);
            CREATE TABLE epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, step INTEGER NOT NULL,
              name TEXT NOT NULL, value REAL);
            INSERT INTO runs (id, spec, status, updated_at) VALUES ('abc', '{}', 'done', 0);"""
        )
    with Store(path) as store:
        assert store.load(["abc"])["abc"].measurements == {}
        version = store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION


def test_report_figures_option_from_the_cli(write_manifest, tmp_path, monkeypatch):
    plugin_file = tmp_path / "probe_plugin.py"
    plugin_file.write_text(
        "from test_probes_contract import ProbePlugin\n_p = ProbePlugin()\n"
        "bnbench_register_probes = _p.bnbench_register_probes\n"
        "bnbench_register_analyses = _p.bnbench_register_analyses\n"
    )
    text = MANIFEST.replace('device = "cpu"', 'device = "cpu"\nplugins = ["probe_plugin.py"]')
    path = write_manifest(text)
    assert main(["run", str(path), "--no-report"]) == 0
    assert main(["report", str(path), "--figures", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "logits__logit_norms.png").is_file()
