"""The product documents itself: every bundled claim is documented, nothing points outside the repository."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_bundled_claim_names_its_source_and_is_documented():
    manifest = tomllib.loads((ROOT / "benchmarks.toml").read_text())
    studies_doc = (ROOT / "docs" / "studies.md").read_text()
    for claim in manifest["claims"]:
        assert claim.get("source"), f"claim {claim['value']!r} of {claim['study']} names no source"
        assert f"`{claim['value']}`" in studies_doc, f"docs/studies.md does not document {claim['value']!r}"
        assert claim["claim"] in studies_doc, f"docs/studies.md does not list the claim {claim['claim']!r}"


def test_nothing_in_the_repository_points_outside_it():
    files = [ROOT / "README.md", ROOT / "benchmarks.toml", *ROOT.glob("docs/*.md")]
    files += [*ROOT.glob("harness/*.py"), *ROOT.glob("plugins/**/*.py")]
    leaks = [str(f.relative_to(ROOT)) for f in files if "../shared" in f.read_text() or "STUDIES.md" in f.read_text()]
    assert not leaks, f"these files point at ../shared, which users do not have: {leaks}"


def test_the_readme_manifest_example_is_a_valid_manifest_showing_every_study_field(tmp_path):
    from bnbench.session import open_session
    from bnbench.spec import STUDY_ONLY_FIELDS, RunSpec

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme[readme.index("## Manifests") :].split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.toml"
    path.write_text(example)
    manifest = open_session(path).manifest
    assert len(manifest.runs()) == 90 and manifest.claims[0].value == "best_lr_ratio"
    shown = {line.split("=")[0].strip() for line in example.splitlines() if "=" in line}
    tables = {"optimizer", "schedule"}  # written as [studies.optimizer] and [studies.schedule]
    assert set(STUDY_ONLY_FIELDS) | (set(RunSpec.model_fields) - {"seed", "probe", "steps"} - tables) <= shown
    assert all(f"[studies.{table}]" in example for table in tables)


def documented_files(doc: str) -> dict[str, str]:
    """The code blocks of a doc that start ``# plugin file: NAME`` or ``# manifest file: NAME``."""
    import re

    blocks = re.findall(r"```(?:python|toml)\n(# (?:plugin|manifest) file: (\S+)[^\n]*\n.*?)```", doc, re.S)
    return {name: body for body, name in blocks}


def test_every_plugin_kind_has_a_documented_example_and_they_run_together(tmp_path, registry):
    """docs/writing-plugins.md has a complete plugin of every kind; written out as files, the
    documented manifest loads them all, sweeps (on the example executor, with the example tracker),
    runs the probe, and reports the example analysis."""
    from bnbench.hookspecs import KINDS
    from bnbench.registry import load_registry
    from bnbench.report import from_manifest
    from bnbench.session import open_session
    from bnbench.sweep import run_manifest

    files = documented_files((ROOT / "docs" / "writing-plugins.md").read_text())
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    plugins = [name for name in files if name.endswith(".py")]
    documented = load_registry(plugins, base_dir=tmp_path, entry_points=False)
    kinds = {kind for kind in KINDS if documented.entries(kind)}
    assert kinds == set(KINDS), f"no documented example of {sorted(set(KINDS) - kinds)}"

    session = open_session(tmp_path / "examples.toml")
    summary = run_manifest(session.manifest, registry=session.registry)
    assert summary.statuses == {"done": 5}, summary
    with session.store(read_only=True) as store:
        report = from_manifest(session.manifest, store, session.registry)
        records = store.load(r.run_id for r in session.manifest.runs())
    text = report.render("plain")
    table = text.split("Final weight norm")[1].split("\n\n")[1]
    assert [line.split()[:2] for line in table.splitlines()[1:]] == [["batchnorm", "2"], ["scalenorm", "2"]], text
    probe = next(r for r in records.values() if r.measurements)
    assert 0 < probe.measurements["top_class_share"] <= 1 and probe.measurements["logit_std"] > 0
    logged = list((tmp_path / "examples.sqlite.csvlog").iterdir())
    assert len(logged) == 4 and all(len(f.read_text().splitlines()) > 2 for f in logged)
