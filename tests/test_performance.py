"""Performance options on the CPU: channels-last, bf16 autocast with fp32 normalizers, fallbacks, threads."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_manifest

from bnbench import NormSite
from bnbench.performance import Performance
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.spec import PerformanceSettings

RESNET = tiny_manifest(placement='"all"', epochs=1).replace(
    'model = { name = "mlp", widths = [16] }', 'model = { name = "resnet_cifar", depth = 8, widths = [4, 8, 8] }'
)


def run_with(write_manifest, registry, text: str, **settings):
    manifest = open_session(write_manifest(text), registry=registry).manifest
    runner = Runner(registry, base_dir=manifest.base_dir, device="cpu", performance=PerformanceSettings(**settings))
    return runner, runner.run(manifest.runs()[0])


def test_channels_last_and_bf16_train_a_conv_net_on_cpu(write_manifest, registry):
    runner, result = run_with(write_manifest, registry, RESNET, channels_last=True, precision="bf16")
    assert result.status == "done", result.error
    assert result.environment["precision"] == "bf16" and result.environment["channels_last"] is True
    assert not runner.performance.notices


def test_normalizer_sites_compute_in_fp32_under_autocast():
    site = NormSite(4, "conv")
    site.attach(torch.nn.BatchNorm2d(4))
    bare = NormSite(4, "conv")
    x = torch.randn(8, 4, 5, 5).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert site(x).dtype == torch.float32
        assert bare(x).dtype == torch.bfloat16  # an unused site is the identity


def test_unsupported_options_fall_back_with_a_notice():
    settings = PerformanceSettings(precision="fp16", compile="step", compile_mode="reduce-overhead")
    performance = Performance.resolve(settings, torch.device("cpu"))
    assert performance.amp_dtype == torch.bfloat16
    assert (performance.compile, performance.compile_mode) == ("step", "default")  # CUDA graphs need a GPU
    assert len(performance.notices) == 2 and all(len(n.splitlines()) == 1 for n in performance.notices)
    assert performance.grad_scaler() is None


def test_the_earlier_compile_switch_still_reads():
    assert PerformanceSettings(compile=True).compile == "model"
    assert PerformanceSettings(compile=False).compile == "off"


COMPILED = tiny_manifest(placement='"all"', epochs=2).replace(
    "weight_decay = 0.0", "weight_decay = 5e-4\nmomentum = 0.9\n\n[studies.schedule]\nwarmup_steps = 4"
)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
@pytest.mark.parametrize(
    ("device", "mode"), [("cpu", "default"), pytest.param("cuda", "reduce-overhead", marks=pytest.mark.cuda)]
)
def test_a_compiled_whole_step_trains_like_the_eager_one(write_manifest, registry, device, mode):
    """compile = 'step' compiles forward, backward and the SGD update (momentum, weight decay, a
    warm-up whose learning rate changes every step) and ends where eager steps end; on a GPU
    with CUDA graphs replayed (reduce-overhead)."""
    import torch._dynamo

    path = write_manifest(COMPILED.replace('device = "cpu"', f'device = "{device}"'))
    manifest = open_session(path, registry=registry).manifest
    planned = manifest.runs()[0]
    results = {}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compile_ in ("off", "step"):
        settings = PerformanceSettings(compile=compile_, compile_mode=mode)
        runner = Runner(registry, base_dir=manifest.base_dir, device=device, performance=settings)
        with torch._dynamo.config.patch(error_on_recompile=True):  # a changing learning rate must not recompile
            results[compile_] = runner.run(planned)
        assert results[compile_].status == "done", results[compile_].error
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2, "the step was not compiled"
    assert results["step"].environment["compile"] == f"step ({mode})"
    eager, compiled = results["off"].epochs, results["step"].epochs
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled, strict=True):
        for key in ("train_loss", "test_accuracy"):
            assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-4, abs=1e-6), key


def test_threads_are_pinned():
    before = torch.get_num_threads()
    try:
        Performance.resolve(PerformanceSettings(threads=1), torch.device("cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_performance_settings_do_not_change_run_ids(write_manifest, registry):
    plain = open_session(write_manifest(RESNET, "a.toml"), registry=registry).manifest.runs()[0].run_id
    fast = RESNET.replace(
        'device = "cpu"', 'device = "cpu"\nperformance = { precision = "bf16", channels_last = true }'
    )
    assert open_session(write_manifest(fast, "b.toml"), registry=registry).manifest.runs()[0].run_id == plain
