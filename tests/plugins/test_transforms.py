"""Input transforms: the Gaussian noise plugin's statistics and seeding, and the runner's use of it."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import tiny_manifest

from bnbench import hookimpl
from bnbench.checkpoint import Checkpoints
from bnbench.executors import RunInterrupted
from bnbench.inputs import InputPipeline
from bnbench.plugins.transforms import GaussianNoiseOptions, gaussian_noise
from bnbench.runner import Runner
from bnbench.session import open_session

NOISY = 'input_transform = {{ name = "gaussian_noise", std = {std}, apply_to = "{apply_to}" }}\n'


def noisy_manifest(std: str = "0.3", apply_to: str = "both", epochs: int = 2) -> str:
    text = tiny_manifest(placement='"all"', epochs=epochs)
    return text.replace("[studies.optimizer]", NOISY.format(std=std, apply_to=apply_to) + "[studies.optimizer]")


def test_noise_has_the_requested_statistics_and_is_seeded():
    noise = gaussian_noise(GaussianNoiseOptions(std=0.2, apply_to="both"))
    images = torch.full((4000, 1, 8, 8), 0.5)
    a = noise(images, torch.Generator().manual_seed(0), "train") - images
    b = noise(images, torch.Generator().manual_seed(0), "train") - images
    c = noise(images, torch.Generator().manual_seed(1), "train") - images
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item()) < 2e-3 and a.std().item() == pytest.approx(0.2, rel=0.01)


def test_noise_applies_only_to_its_splits_and_clips_when_asked():
    images = torch.rand(16, 1, 4, 4)
    generator = torch.Generator().manual_seed(0)
    train_only = gaussian_noise(GaussianNoiseOptions(std=0.5, apply_to="train"))
    assert torch.equal(train_only(images, generator, "test"), images)
    assert not torch.equal(train_only(images, generator, "train"), images)
    clipped = gaussian_noise(GaussianNoiseOptions(std=5.0, clip=True))(images, generator, "test")
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(gaussian_noise(GaussianNoiseOptions(std=0.0))(images, generator, "train"), images)


def test_noise_level_is_a_sweep_axis(write_manifest, registry):
    manifest = open_session(write_manifest(noisy_manifest(std="[0.0, 0.1, 0.5]")), registry=registry).manifest
    (study,) = manifest.studies
    assert study.axes == ["input_transform.std"]
    assert [r.spec.input_transform.options["std"] for r in study.runs] == [0.0, 0.1, 0.5]


def test_evaluation_noise_is_the_same_every_time_and_clean_evaluation_is_available(write_manifest, registry):
    manifest = open_session(write_manifest(noisy_manifest(std="1.0")), registry=registry).manifest
    planned = manifest.runs()[0]
    runner = Runner(registry, base_dir=manifest.base_dir, device="cpu")
    data = runner.data.get(planned.spec.dataset, runner.device)
    pipeline = InputPipeline.build(registry, planned.spec, data, runner.device)
    first = pipeline.eval_extra("test")(data.test_images[:8].float())
    second = pipeline.eval_extra("test")(data.test_images[:8].float())
    assert torch.equal(first, second)
    x1, _ = pipeline.sample(8)
    x2, _ = pipeline.sample(8)
    clean, _ = pipeline.sample(8, transformed=False)
    assert torch.equal(x1, x2) and not torch.equal(x1, clean)

    seen = {}

    class Capture:
        @hookimpl
        def bnbench_epoch_end(self, run, epoch, metrics):
            seen[epoch] = metrics

    capture = Capture()
    registry.manager.register(capture)
    try:
        result = runner.run(planned)
    finally:
        registry.manager.unregister(capture)
    assert result.status == "done"
    assert seen[2]["test_accuracy"] == result.epochs[-1].metrics["test_accuracy"]


def test_noise_changes_training_and_resume_with_noise_is_bitwise(write_manifest, registry):
    clean = open_session(write_manifest(noisy_manifest(std="0.0"), "clean.toml"), registry=registry).manifest.runs()[0]
    text = noisy_manifest(std="0.3", epochs=3).replace(
        "[studies.optimizer]", "deterministic = true\n[studies.optimizer]"
    )
    manifest = open_session(write_manifest(text), registry=registry).manifest
    planned = manifest.runs()[0]
    runner = Runner(registry, base_dir=manifest.base_dir, device="cpu")
    uninterrupted = runner.run(planned)
    assert uninterrupted.epochs[0].metrics != runner.run(clean).epochs[0].metrics
    stop = threading.Event()

    class StopAt:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            if step == 5:
                stop.set()

    stopper = StopAt()
    registry.manager.register(stopper)
    checkpoints = Checkpoints(manifest.base_dir / "ckpt")
    try:
        with pytest.raises(RunInterrupted):
            Runner(registry, base_dir=manifest.base_dir, device="cpu", checkpoints=checkpoints, stop=stop).run(planned)
    finally:
        registry.manager.unregister(stopper)
    resumed = Runner(registry, base_dir=manifest.base_dir, device="cpu", checkpoints=checkpoints).run(planned)
    assert [e.metrics for e in resumed.epochs] == [e.metrics for e in uninterrupted.epochs]
