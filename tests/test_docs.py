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
