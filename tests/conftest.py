"""Shared fixtures: the installed plugin registry and tiny manifests on synthetic data."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bnbench import hookimpl
from bnbench.checkpoint import Checkpoints
from bnbench.executors import RunInterrupted
from bnbench.records import PlannedRun
from bnbench.registry import Registry, load_registry
from bnbench.runner import Runner

torch.set_num_threads(1)

TINY_STUDY = """
[[studies]]
name = "tiny"
model = {{ name = "mlp", widths = [16] }}
dataset = {{ name = "synthetic", noise = 0.15, image_shape = [1, 8, 8], num_classes = 4, train_size = 128, test_size = 64 }}
normalizer = "batchnorm"
placement = {placement}
epochs = {epochs}
batch_size = 32
seeds = {seeds}

[studies.optimizer]
lr = {lr}
weight_decay = 0.0
"""  # noqa: E501 - a TOML inline table cannot wrap


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


def tiny_manifest(
    placement: str = '["all", "none"]', lr: str = "0.05", seeds: str = "[0]", epochs: int = 2, extra: str = ""
) -> str:
    """A manifest with one tiny MLP study on synthetic data (runs in well under a second)."""
    header = '[harness]\nresults = "results.sqlite"\ndevice = "cpu"\n'
    return header + TINY_STUDY.format(placement=placement, lr=lr, seeds=seeds, epochs=epochs) + extra


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[..., Path]:
    """Write a manifest (text, dedented) into the test's directory and return its path."""

    def write(text: str, name: str = "manifest.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def run_until_stopped(
    registry: Registry, planned: PlannedRun, base_dir: Path, checkpoints: Checkpoints, at_step: int
) -> RunInterrupted:
    """Run ``planned`` in-process, asking it to stop after step ``at_step``; the stop it raised."""
    stop = threading.Event()

    class StopAtStep:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            if step == at_step:
                stop.set()

    stopper = StopAtStep()
    registry.manager.register(stopper)
    try:
        runner = Runner(registry, base_dir=base_dir, device="cpu", checkpoints=checkpoints, stop=stop)
        with pytest.raises(RunInterrupted) as info:
            runner.run(planned)
    finally:
        registry.manager.unregister(stopper)
    return info.value


def signal_midway(process: subprocess.Popen, checkpoints: Path, signum: int = signal.SIGTERM) -> str:
    """Once a ``bnbench run`` process has written a mid-run checkpoint, signal it; check that it
    stopped cleanly (exit 130, a resume hint, no traceback) and return its stderr."""
    deadline = time.monotonic() + 180
    while not any(checkpoints.glob("*/step-*.pt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    return err


def builds_wheels_offline() -> bool:
    """Whether setuptools can build a wheel here without downloading anything (the tests that
    pip-install a plugin package need it)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    return (major, minor) >= (70, 1)  # setuptools 70.1 brought bdist_wheel in


STARTS_A_PROCESS = ("subprocess.", "Popen", "bnbench(", "bnbench_process(", "run_cli(")
"""Source text of a test (or of a fixture it uses) that starts a process: such tests are ``slow``."""
PROCESS_FIXTURES = {"reference", "finished"}
"""Fixtures that run a bnbench process before the test."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that starts a process (a bnbench command, a pip install, a worker)
    besides those marked by hand: ``pytest -m "not slow"`` is then the quick in-process loop.
    Tests marked ``cuda`` skip where no GPU is present (``benchmarks/gpu_check.py`` runs them on one)."""
    import inspect

    no_gpu = pytest.mark.skip(reason="needs a CUDA device") if not torch.cuda.is_available() else None
    for item in items:
        if no_gpu is not None and item.get_closest_marker("cuda"):
            item.add_marker(no_gpu)
        function = getattr(item, "function", None)
        if function is None or item.get_closest_marker("slow"):
            continue
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            continue
        if any(text in source for text in STARTS_A_PROCESS) or PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
