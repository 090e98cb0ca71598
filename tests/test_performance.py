"""Performance options on the CPU: channels-last, bf16 autocast with fp32 normalizers, fallbacks, threads."""

from __future__ import annotations

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
    performance = Performance.resolve(PerformanceSettings(precision="fp16", compile=True), torch.device("cpu"))
    assert performance.amp_dtype == torch.bfloat16 and not performance.compile
    assert len(performance.notices) == 2 and all(len(n.splitlines()) == 1 for n in performance.notices)
    assert performance.grad_scaler() is None


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
