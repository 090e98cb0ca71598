"""The runner: training, metrics, schedules, determinism, divergence and failure as results."""

from __future__ import annotations

import fault_plugins
import pytest
import torch
from conftest import tiny_manifest

from bnbench import hookimpl
from bnbench.errors import PluginError
from bnbench.registry import load_registry
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.spec import ScheduleSpec


@pytest.fixture(scope="module")
def fault_registry():
    return load_registry(objects=[("fault_plugins", fault_plugins)])


def plan(write_manifest, registry, text):
    session = open_session(write_manifest(text), registry=registry)
    return session, session.manifest.runs()


def run_one(session, planned, check_every=0):
    manifest = session.manifest
    runner = Runner(session.registry, base_dir=manifest.base_dir, device="cpu", divergence_check_every=check_every)
    return runner.run(planned)


def test_run_records_metrics_per_epoch_and_learns(write_manifest, registry):
    manifest, runs = plan(write_manifest, registry, tiny_manifest(placement='"all"', lr="0.1", epochs=4))
    result = run_one(manifest, runs[0])
    assert result.status == "done", result.error
    assert [e.epoch for e in result.epochs] == [1, 2, 3, 4]
    assert [e.step for e in result.epochs] == [4, 8, 12, 16]  # 128 examples / batch 32
    assert set(result.epochs[0].metrics) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert result.epochs[-1].metrics["train_loss"] < result.epochs[0].metrics["train_loss"]
    assert result.info["normalized_sites"] == ["layers.2"]
    assert result.environment["torch"] and result.environment["device"] == "cpu"


def test_steps_instead_of_epochs(write_manifest, registry):
    text = tiny_manifest(placement='"none"').replace("epochs = 2", "steps = 6")
    manifest, runs = plan(write_manifest, registry, text)
    result = run_one(manifest, runs[0])
    assert [(e.epoch, e.step) for e in result.epochs] == [(1, 4), (2, 6)]


def test_deterministic_runs_are_bitwise_repeatable(write_manifest, registry):
    text = tiny_manifest(placement='"all"').replace("[studies.optimizer]", "deterministic = true\n[studies.optimizer]")
    manifest, runs = plan(write_manifest, registry, text)
    assert runs[0].spec.deterministic
    first, second = run_one(manifest, runs[0]), run_one(manifest, runs[0])
    assert [e.metrics for e in first.epochs] == [e.metrics for e in second.epochs]


def test_seeds_change_the_result(write_manifest, registry):
    manifest, runs = plan(write_manifest, registry, tiny_manifest(placement='"none"', seeds="[0, 1]"))
    a, b = (run_one(manifest, r) for r in runs)
    assert a.epochs[-1].metrics != b.epochs[-1].metrics


@pytest.mark.parametrize("check_every", [1, 4, 100])
def test_nan_loss_is_a_diverged_result_with_its_step(write_manifest, fault_registry, check_every):
    text = tiny_manifest(placement='"none"', epochs=3).replace(
        'model = { name = "mlp", widths = [16] }', 'model = { name = "nan_after", at_step = 6 }'
    )
    manifest, runs = plan(write_manifest, fault_registry, text)
    result = run_one(manifest, runs[0], check_every)
    assert result.status == "diverged"
    assert result.diverged_step == 6
    assert [e.epoch for e in result.epochs] == [1]  # epoch 2 never finished
    assert "not finite at step 6" in result.error


def test_huge_learning_rate_without_normalization_diverges(write_manifest, registry):
    manifest, runs = plan(write_manifest, registry, tiny_manifest(placement='"none"', lr="1e8", epochs=3))
    result = run_one(manifest, runs[0])
    assert result.status == "diverged" and result.diverged_step >= 1


def test_exception_is_a_failed_result_with_its_message(write_manifest, fault_registry):
    text = tiny_manifest(placement='"none"').replace(
        'model = { name = "mlp", widths = [16] }', 'model = { name = "crash", message = "custom failure" }'
    )
    manifest, runs = plan(write_manifest, fault_registry, text)
    result = run_one(manifest, runs[0])
    assert result.status == "failed"
    assert result.error.startswith("RuntimeError: custom failure")


def test_wrong_output_shape_names_the_model(write_manifest, fault_registry):
    text = tiny_manifest(placement='"none"').replace('model = { name = "mlp", widths = [16] }', 'model = "wrong_shape"')
    manifest, runs = plan(write_manifest, fault_registry, text)
    result = run_one(manifest, runs[0])
    assert result.status == "failed"
    assert "model 'wrong_shape' returned (32, 3); expected logits of shape (32, 4)" in result.error


def test_batch_larger_than_dataset_fails_clearly(write_manifest, registry):
    manifest, runs = plan(write_manifest, registry, tiny_manifest().replace("batch_size = 32", "batch_size = 4096"))
    result = run_one(manifest, runs[0])
    assert result.status == "failed" and "larger than the training set (128 examples)" in result.error


def test_lifecycle_hooks_observe_the_run(write_manifest):
    calls = []

    class Observer:
        @hookimpl
        def bnbench_run_start(self, run):
            calls.append(("start", run.total_steps))

        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            calls.append(("step", step))

        @hookimpl
        def bnbench_epoch_end(self, run, epoch, metrics):
            calls.append(("epoch", epoch))

        @hookimpl
        def bnbench_run_end(self, run, result):
            calls.append(("end", result.status))

    registry = load_registry(objects=[("observer", Observer())])
    manifest, runs = plan(write_manifest, registry, tiny_manifest(placement='"none"'))
    run_one(manifest, runs[0])
    assert calls[0] == ("start", 8) and calls[-1] == ("end", "done")
    assert [c for c in calls if c[0] == "step"] == [("step", i) for i in range(1, 9)]
    assert [c for c in calls if c[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]


def test_run_end_fires_for_every_run_that_ends_probe_runs_and_failed_builds_included(write_manifest):
    ended = []

    class Observer:
        @hookimpl
        def bnbench_run_end(self, run, result, planned):
            ended.append((run is None, result.status, planned.run_id == result.run_id))

    registry = load_registry(objects=[("observer", Observer())])
    refused = tiny_manifest(placement='"all"').replace('normalizer = "batchnorm"', 'normalizer = "instancenorm"')
    manifest, runs = plan(write_manifest, registry, refused)
    assert run_one(manifest, runs[0]).status == "failed"  # instance norm cannot go at the MLP's fc sites
    probe = tiny_manifest(placement='"all"').replace("epochs = 2", 'probe = "activation_stats"')
    manifest, runs = plan(write_manifest, registry, probe)
    assert run_one(manifest, runs[0]).status == "done"
    manifest, runs = plan(write_manifest, registry, tiny_manifest(placement='"none"'))
    run_one(manifest, runs[0])
    assert ended == [(True, "failed", True), (True, "done", True), (False, "done", True)]


def test_multistep_schedule_with_warmup():
    schedule = ScheduleSpec(kind="multistep", milestones=[0.5, 0.75], gamma=0.1, warmup_steps=4, warmup_factor=0.2)
    factors = [schedule.factor(step, 100) for step in (0, 2, 4, 49, 50, 74, 75, 99)]
    assert factors == pytest.approx([0.2, 0.6, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    constant = ScheduleSpec(kind="constant", warmup="constant", warmup_steps=3, warmup_factor=0.1)
    assert [constant.factor(s, 10) for s in range(5)] == pytest.approx([0.1, 0.1, 0.1, 1, 1])


def test_schedule_rejects_bad_milestones():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="between 0 and 1"):
        ScheduleSpec(milestones=[32000])
    with pytest.raises(ValidationError, match="increasing"):
        ScheduleSpec(milestones=[0.75, 0.5])


def test_validation_split_is_held_out_of_training_and_evaluated(write_manifest, registry):
    text = tiny_manifest(placement='"none"').replace(
        "batch_size = 32",
        'batch_size = 32\nvalidation_size = 32\nmetrics = ["train_loss", "validation_accuracy", "test_accuracy"]',
    )
    manifest, runs = plan(write_manifest, registry, text)
    result = run_one(manifest, runs[0])
    assert result.status == "done", result.error
    assert result.info["steps_per_epoch"] == 3  # 128 - 32 held out = 96 examples / 32
    assert 0 <= result.epochs[-1].metrics["validation_accuracy"] <= 1
    runner = Runner(registry, base_dir=manifest.manifest.base_dir, device="cpu")
    data = runner.data.get(runs[0].spec.dataset, runner.device, 32)
    full = runner.data.get(runs[0].spec.dataset, runner.device)
    held = {tuple(x.flatten().tolist()) for x in data.validation_images}
    assert len(held) == 32 and not held & {tuple(x.flatten().tolist()) for x in data.train_images}
    assert data.train_size + 32 == full.train_size
    assert torch.equal(
        runner.data.get(runs[0].spec.dataset, runner.device, 32).validation_labels, data.validation_labels
    )


def test_validation_metric_without_a_validation_split_fails_clearly(write_manifest, registry):
    text = tiny_manifest(placement='"none"').replace(
        "batch_size = 32", 'batch_size = 32\nmetrics = ["validation_loss"]'
    )
    manifest, runs = plan(write_manifest, registry, text)
    result = run_one(manifest, runs[0])
    assert result.status == "failed" and "set validation_size in the study" in result.error


def test_a_metric_declared_as_a_loss_diverges_the_run_when_not_finite_and_others_do_not(write_manifest):
    class Metrics:
        @hookimpl
        def bnbench_register_metrics(self, register):
            register("nan_risk", lambda context, options: float("nan"), measures="loss", split="test")
            register("nan_overloss", lambda context, options: float("nan"))  # named like a loss, not declared one

    registry = load_registry(objects=[("nan_metrics", Metrics())])
    for metric, status in (("nan_risk", "diverged"), ("nan_overloss", "done")):
        text = tiny_manifest(placement='"none"').replace("epochs = 2", f'epochs = 2\nmetrics = ["{metric}"]')
        manifest, runs = plan(write_manifest, registry, text)
        assert run_one(manifest, runs[0]).status == status, metric


def test_metric_declarations_are_checked_when_registered():
    class Bad:
        @hookimpl
        def bnbench_register_metrics(self, register):
            register("odd", lambda context, options: 0.0, measures="perplexity")

    with pytest.raises(PluginError, match=r"invalid measures: 'perplexity'; allowed: 'loss', 'accuracy'"):
        load_registry(objects=[("bad_metrics", Bad())])
