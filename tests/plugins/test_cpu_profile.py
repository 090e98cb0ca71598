"""The `cpu` profile of the bundled manifest: the MNIST studies on MNIST-format files, with
enough seeds and noise levels for its claims to be decided by intervals."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import write_mnist

from bnbench.session import open_session

pytestmark = pytest.mark.slow  # every test here spawns processes or starts an engine

ROOT = Path(__file__).parents[2]


def test_cpu_profile_runs_only_the_mnist_studies_on_the_real_loader(registry):
    manifest = open_session(ROOT / "benchmarks.toml", "cpu", registry=registry).manifest
    assert [s.name for s in manifest.studies] == ["mlp_mnist", "mnist_noise_bn_vs_l2"]
    runs = [r for s in manifest.studies for r in s.runs]
    assert len(runs) == 36 + 144 and all(r.spec.dataset.name == "mnist" for r in runs)
    assert all(r.spec.dataset.all_options["download"] for r in runs)  # fetched when missing
    assert all(r.spec.validation_size == 5000 for r in runs)
    assert all(r.pack == 24 for r in runs)  # packed on every core (docs/packing.md)
    noise = {r.spec.input_transform.options["std"] for r in manifest.studies[1].runs}
    assert len(noise) >= 3  # a trend over fewer levels cannot be decided
    assert min(len({r.spec.seed for r in s.runs}) for s in manifest.studies) >= 3  # an exact test needs 3
    decays = {r.spec.optimizer.weight_decay for r in manifest.studies[1].runs}
    assert max(decays) >= 0.1  # up to where L2 moves accuracy
    assert len({r.spec.optimizer.lr for r in manifest.studies[1].runs}) >= 2  # each arm tunes its rate
    assert {c.study for c in manifest.claims} == {"mlp_mnist", "mnist_noise_bn_vs_l2"}
    full = open_session(ROOT / "benchmarks.toml", registry=registry).manifest
    assert len(full.studies) > 2  # the full protocol keeps every study


def test_cpu_profile_end_to_end_on_mnist_format_files(tmp_path):
    rng = np.random.default_rng(0)
    prototypes = rng.uniform(0, 255, (10, 28, 28))

    def split(size: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.integers(0, 10, size)
        images = np.clip(0.6 * prototypes[labels] + rng.normal(0, 60, (size, 28, 28)), 0, 255)
        return images.astype(np.uint8), labels.tolist()

    write_mnist(tmp_path / "data", split(400), split(100))
    text = (ROOT / "benchmarks.toml").read_text()
    # the same profile, at the size of the generated files (the real one holds out 5,000 images)
    small = "dataset = { download = false, train_size = 400, test_size = 100 }\nvalidation_size = 100\nbatch_size = 32"
    text, count = re.subn(
        r"(\[profiles\.cpu\.\"\*\"\]\nenabled = false\n)dataset = \{ download = true \}", rf"\1{small}", text
    )
    assert count == 1
    (tmp_path / "benchmarks.toml").write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", "benchmarks.toml", "--profile", "cpu", "--study", "mlp_mnist"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    assert "36 runs planned" in run.stderr and "36 done" in run.stderr
    claims = run.stdout[run.stdout.index("## Claims (cpu scale") :]
    (row,) = [line for line in claims.splitlines() if "| final_layer_share " in line]
    verdict = row.rsplit("|", 2)[-2].strip()
    assert verdict.split(" (")[0] in ("holds", "does not hold", "inconclusive", "not measured"), verdict
    assert "one seed" not in verdict  # four seeds: decided on an interval (or not measured), never on a point
    assert "### Accuracy against learning rate" in run.stdout and "failed:" not in run.stdout
    shutil.rmtree(tmp_path / "results")
