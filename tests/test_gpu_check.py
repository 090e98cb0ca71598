"""The prepared device check (benchmarks/gpu_check.py) in its CPU quick mode, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SECTIONS = {"cuda_tests", "precision", "throughput", "packing", "projection"}


def test_the_device_check_runs_every_section_on_a_cpu_in_quick_mode(tmp_path):
    out = tmp_path / "check.json"
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert set(results["sections"]) == SECTIONS
    assert all(section["passed"] for section in results["sections"].values())
    sections = results["sections"]
    assert not sections["cuda_tests"]["ran"] and "collected" in sections["cuda_tests"]["summary"]
    assert set(sections["precision"]["settings"]) == {"fp32", "bf16", "channels_last", "bf16 + channels_last"}
    assert sections["throughput"]["images_per_s"]["plain"][1] > 0
    assert sections["packing"]["ceiling"]["max_speedup"] > 0
    families = sections["projection"]["families"]
    assert families["resnet_cifar-110"]["runs"] > 0 and families["mlp"]["runs"] > 0
    assert sections["projection"]["hours_packed"] > 0
    assert "the full protocol of benchmarks.toml" in done.stdout


def test_a_failing_section_is_recorded_and_fails_the_check(tmp_path, monkeypatch):
    """One section's error is written with its message, the others still run, the exit status is 1."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    def broken(device, size):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(gpu_check, "cuda_tests", lambda device: {"passed": True, "ran": False, "summary": "-"})
    monkeypatch.setattr(gpu_check, "precision", lambda device, size: {"passed": True})
    monkeypatch.setattr(gpu_check, "throughput", broken)
    monkeypatch.setattr(gpu_check, "packing", lambda device, size: {"passed": True})
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 1
    sections = json.loads(out.read_text())["sections"]
    assert not sections["throughput"]["passed"]
    assert "out of memory, say" in sections["throughput"]["error"]
    assert not sections["projection"]["passed"] and "needs the throughput" in sections["projection"]["error"]
    assert sections["precision"]["passed"]
