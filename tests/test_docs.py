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
