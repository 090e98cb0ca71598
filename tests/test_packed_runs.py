"""Packed runs (a study's ``pack = N``): which runs pack, and that a packed run is the same run.

A packed member equals the same run trained alone within float tolerance, not bitwise: the
batched kernels of ``vmap`` sum in another order than one run's kernels. The tolerance below is
what that reordering costs over a few dozen steps of these small runs (measured: relative
differences below 2e-4 in losses and accuracies; quantities that are themselves rounding error,
such as ``weight_geometry``'s ``constraint_err``, differ by about 1e-7 absolute).
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from test_worker_deaths import KILL_AT_STEP, KILL_PLUGIN

from bnbench import NormalizerTraits, hookimpl
from bnbench.checkpoint import Checkpoints
from bnbench.executors import RunInterrupted
from bnbench.plan import pack_key, plan_work
from bnbench.records import PlannedPack, PlannedRun
from bnbench.registry import load_registry
from bnbench.report import from_manifest
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.store import Store
from bnbench.sweep import run_manifest

RELATIVE = 2e-3
ABSOLUTE = 1e-5

STUDY = """
[harness]
results = "results.sqlite"
device = "cpu"
checkpoint_every = 1
performance = {{ threads = 1 }}

[[studies]]
name = "packed"
model = {{ name = "mlp", widths = [32, 32] }}
dataset = {{ name = "synthetic", image_shape = [1, 8, 8], num_classes = 4, train_size = 256, test_size = 64, noise = 0.6 }}
normalizer = "batchnorm"
placement = {placement}
epochs = {epochs}
batch_size = 32
validation_size = 32
seeds = [0, 1]
pack = {pack}
input_transform = {{ name = "gaussian_noise", std = [0.0, 0.3], apply_to = "both" }}
metrics = ["train_loss", "train_accuracy", "validation_loss", "test_loss", "test_accuracy", "weight_geometry"]

[studies.optimizer]
lr = {lr}
momentum = 0.9
weight_decay = [0.0, 0.001]
"""  # noqa: E501 - a TOML inline table cannot wrap


def study(
    placement: str = '["all", "none"]', lr: str = "[0.05, 0.2]", pack: int = 16, epochs: int = 2, augment: bool = False
) -> str:
    text = STUDY.format(placement=placement, lr=lr, pack=pack, epochs=epochs)
    return text.replace("noise = 0.6 }", "noise = 0.6, augment = true }") if augment else text


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= ABSOLUTE + RELATIVE * abs(a)


def assert_same_run(alone, packed) -> None:
    assert packed.run_id == alone.run_id
    assert (packed.status, packed.diverged_step) == (alone.status, alone.diverged_step), (alone.error, packed.error)
    assert [(e.epoch, e.step) for e in packed.epochs] == [(e.epoch, e.step) for e in alone.epochs]
    for mine, theirs in zip(packed.epochs, alone.epochs, strict=True):
        assert set(mine.metrics) == set(theirs.metrics)
        different = {
            k: (theirs.metrics[k], mine.metrics[k])
            for k in mine.metrics
            if not close(theirs.metrics[k], mine.metrics[k])
        }
        assert not different, f"{alone.run_id} epoch {mine.epoch}: alone vs packed {different}"


def session_for(write_manifest, registry, text):
    return open_session(write_manifest(text), registry=registry)


def runner_for(session, **kwargs) -> Runner:
    return Runner(session.registry, base_dir=session.manifest.base_dir, device="cpu", **kwargs)


# --- which runs pack ------------------------------------------------------------------------


def test_runs_that_differ_in_seed_optimizer_and_noise_pack_and_others_do_not(write_manifest, registry):
    session = session_for(write_manifest, registry, study(pack=5))
    runs = session.manifest.runs()
    assert len(runs) == 2 * 2 * 2 * 2 * 2  # placement x noise x lr x weight decay x seed
    work = plan_work(runs, registry)
    packs = [w for w in work if isinstance(w, PlannedPack)]
    singles = [w for w in work if isinstance(w, PlannedRun)]
    # per placement 16 runs: packs of 5, 5, 5 and one run left over
    assert [len(p.members) for p in packs] == [5, 5, 5, 5, 5, 5] and len(singles) == 2
    for pack in packs:
        assert len({m.spec.placement.name for m in pack.members}) == 1
        assert len({pack_key(m) for m in pack.members}) == 1
    assert sorted(r.run_id for w in work for r in (w.members if isinstance(w, PlannedPack) else (w,))) == sorted(
        r.run_id for r in runs
    )
    # members differ in what each can hold: seed, learning rate, weight decay, noise
    first = packs[0].members
    assert len({m.spec.model_dump_json(include={"seed", "optimizer", "input_transform"}) for m in first}) == 5


def test_pack_1_probes_and_runs_with_checkpoints_of_their_own_run_one_by_one(write_manifest, registry):
    session = session_for(write_manifest, registry, study(pack=1))
    assert all(isinstance(w, PlannedRun) for w in plan_work(session.manifest.runs(), registry))
    session = session_for(write_manifest, registry, study(placement='"all"', pack=16))
    runs = session.manifest.runs()
    work = plan_work(runs, registry, resumable=[runs[3].run_id])
    assert runs[3] in work  # resumes alone from its own checkpoint
    assert [len(w.members) for w in work if isinstance(w, PlannedPack)] == [15]


def test_a_normalizer_that_says_it_cannot_pack_trains_one_by_one_with_a_notice(write_manifest):
    class Unpackable:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            from bnbench.plugins.normalizers.batchnorm import batchnorm

            register("no_vmap_norm", batchnorm, traits=NormalizerTraits(packable=False))

    registry = load_registry(objects=[("unpackable", Unpackable())])
    text = study(placement='"all"').replace('normalizer = "batchnorm"', 'normalizer = "no_vmap_norm"')
    session = session_for(write_manifest, registry, text)
    notices: list[str] = []
    work = plan_work(session.manifest.runs(), registry, log=notices.append)
    assert all(isinstance(w, PlannedRun) for w in work)
    assert notices == [
        "packed: normalizer 'no_vmap_norm' does not run under torch.func.vmap (its traits say "
        "packable=False); its runs train one by one"
    ]


# --- the same science -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """Every run of the study trained alone and packed (BN and no-BN members, lr 0.05 and 0.2,
    weight decay 0 and 1e-3, noise 0 and 0.3, two seeds; crops and flips), with the packed members'
    parameters. The pack augments and adds noise to its stacked batch at once."""
    folder = tmp_path_factory.mktemp("equivalence")
    (folder / "manifest.toml").write_text(study(augment=True))
    registry = load_registry()
    session = open_session(folder / "manifest.toml", registry=registry)
    runner = runner_for(session)
    runs = session.manifest.runs()
    alone = {r.run_id: runner.run(r) for r in runs}
    packed = {}
    for unit in plan_work(runs, registry):
        assert isinstance(unit, PlannedPack)
        for result in runner.run_pack(unit):
            assert "pack_fallback" not in result.info
            packed[result.run_id] = result
    return alone, packed


def test_a_packed_run_equals_the_same_run_trained_alone(equivalence):
    alone, packed = equivalence
    assert set(packed) == set(alone) and len(alone) == 32
    for run_id, result in alone.items():
        assert result.status == "done", result.error
        assert_same_run(result, packed[run_id])
        assert packed[run_id].info["pack_size"] == 16 and packed[run_id].info["pack"].startswith("pack")
        assert packed[run_id].info["normalized_sites"] == result.info["normalized_sites"]


def test_packing_is_not_trivially_equal(equivalence):
    """The comparison can fail: members with other seeds or rates really do differ."""
    alone, _ = equivalence
    finals = {round(r.epochs[-1].metrics["train_loss"], 6) for r in alone.values()}
    assert len(finals) == len(alone)


def test_a_diverging_member_is_recorded_at_its_exact_step_and_the_others_go_on(write_manifest, registry):
    text = study(placement='"none"', lr="[0.05, 1000.0]").replace("epochs = 2", "epochs = 3")
    session = session_for(write_manifest, registry, text)
    runner = runner_for(session, divergence_check_every=100)  # checked at epoch ends only (steps 7, 14, 21)
    runs = session.manifest.runs()
    alone = {r.run_id: runner.run(r) for r in runs}
    (pack,) = plan_work(runs, registry)
    packed = {r.run_id: r for r in runner.run_pack(pack)}
    statuses = {r.status for r in alone.values()}
    assert statuses == {"done", "diverged"}
    for run_id, result in alone.items():
        assert_same_run(result, packed[run_id])
    diverged_at = {r.diverged_step for r in packed.values() if r.status == "diverged"}
    assert diverged_at - {7, 14, 21}  # the exact steps, not those of the checks that found them


def test_a_member_stops_updating_once_it_diverged(write_manifest, registry):
    text = study(placement='"none"', lr="[0.05, 1000.0]")
    session = session_for(write_manifest, registry, text)
    updates: dict[str, list[int]] = {}

    class Steps:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            updates.setdefault(run.run_id, []).append(step)

    steps = Steps()
    registry.manager.register(steps)
    try:
        (pack,) = plan_work(session.manifest.runs(), registry)
        results = runner_for(session, divergence_check_every=4).run_pack(pack)
    finally:
        registry.manager.unregister(steps)
    diverged = [r for r in results if r.status == "diverged"]
    assert diverged
    for result in diverged:  # no step past the check that found it
        assert max(updates[result.run_id]) <= (result.diverged_step // 4 + 1) * 4
    for result in results:
        if result.status == "done":
            assert max(updates[result.run_id]) == 14  # 2 epochs of 7 steps


def test_a_member_whose_metric_fails_fails_alone_and_the_others_go_on(write_manifest):
    class Fragile:
        @hookimpl
        def bnbench_register_metrics(self, register):
            def fragile(context, options):
                """Raises for seed 1 at epoch 2 (a test metric)."""
                if context.run.spec.seed == 1 and context.epoch == 2:
                    raise ValueError("no value for this run")
                return 1.0

            register("fragile", fragile)

    registry = load_registry(objects=[("fragile", Fragile())])
    text = study(placement='"all"').replace('"weight_geometry"]', '"weight_geometry", "fragile"]')
    session = session_for(write_manifest, registry, text)
    runs = session.manifest.runs()
    runner = runner_for(session)
    alone = {r.run_id: runner.run(r) for r in runs}
    (pack,) = plan_work(runs, registry)
    packed = {r.run_id: r for r in runner.run_pack(pack)}
    for planned in runs:
        mine, theirs = packed[planned.run_id], alone[planned.run_id]
        assert mine.status == theirs.status == ("failed" if planned.spec.seed == 1 else "done")
        if mine.status == "failed":
            assert mine.error.splitlines()[0] == theirs.error.splitlines()[0]
            assert "no value for this run" in mine.error and [e.epoch for e in mine.epochs] == [1]
        else:
            assert_same_run(theirs, mine)


# --- end to end: the store, resume, kill --------------------------------------------------------


def stored(manifest):
    with Store(manifest.results_path) as store:
        return store.load(r.run_id for r in manifest.runs())


def test_bnbench_run_packs_with_the_same_run_ids_and_the_report_reads_them(write_manifest, registry):
    packed = open_session(write_manifest(study(placement='"all"', pack=8), "packed.toml")).manifest
    alone = open_session(
        write_manifest(study(placement='"all"', pack=1).replace("results.sqlite", "alone.sqlite"), "alone.toml")
    ).manifest
    assert [r.run_id for r in packed.runs()] == [r.run_id for r in alone.runs()]  # pack is not part of a run's id
    assert run_manifest(packed).statuses == {"done": 16}
    assert run_manifest(alone).statuses == {"done": 16}
    mine, theirs = stored(packed), stored(alone)
    assert set(mine) == set(theirs)
    for run_id in mine:
        assert mine[run_id].info["pack_size"] == 8 and "pack" not in theirs[run_id].info
        assert_same_run(theirs[run_id], mine[run_id])
    assert Checkpoints.beside(packed.results_path).run_ids() == []
    assert run_manifest(packed).skipped == 16
    reports = []
    for manifest in (packed, alone):  # the same report, table for table, row for row
        with Store(manifest.results_path) as store:
            reports.append(from_manifest(manifest, store, registry).render("csv").splitlines())
    mine, theirs = reports
    assert len(mine) == len(theirs)
    assert mine.index("") == 1 + 8  # the results: a header, then a row per configuration (2 lr x 2 wd x 2 noise)
    assert [row.split(",")[:4] for row in mine] == [row.split(",")[:4] for row in theirs]


def test_an_interrupted_pack_resumes_as_a_pack_and_ends_as_if_never_stopped(write_manifest, registry, tmp_path):
    text = study(placement='"all"', epochs=3)
    session = session_for(write_manifest, registry, text)
    (pack,) = plan_work(session.manifest.runs(), registry)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    reference = runner_for(session).run_pack(pack)

    stop = threading.Event()

    class StopAt:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            if step == 11:  # mid-epoch 2 (7 steps per epoch)
                stop.set()

    stopper = StopAt()
    registry.manager.register(stopper)
    try:
        with pytest.raises(RunInterrupted) as stopped:
            runner_for(session, checkpoints=checkpoints, checkpoint_every=1, stop=stop).run_pack(pack)
    finally:
        registry.manager.unregister(stopper)
    assert stopped.value.step == 11 and checkpoints.files(pack.run_id)
    resumed = runner_for(session, checkpoints=checkpoints, checkpoint_every=1).run_pack(pack)
    for before, after in zip(reference, resumed, strict=True):
        assert after.info["resumed_from_step"] == 11
        assert after.epochs == before.epochs  # bitwise: the same kernels, resumed at the same step


def test_a_stale_pack_checkpoint_of_finished_runs_is_removed_by_the_next_sweep(write_manifest, registry):
    manifest = open_session(write_manifest(study(placement='"all"', pack=16), "stale.toml")).manifest
    assert run_manifest(manifest).statuses == {"done": 16}
    checkpoints = Checkpoints.beside(manifest.results_path)
    session = open_session(manifest.path, registry=registry)
    (pack,) = plan_work(session.manifest.runs(), registry)
    stop = threading.Event()
    stop.set()  # as if killed after recording its results but before removing its checkpoints
    with pytest.raises(RunInterrupted):
        runner_for(session, checkpoints=checkpoints, stop=stop).run_pack(pack)
    assert checkpoints.run_ids() == [pack.run_id]
    assert run_manifest(manifest).skipped == 16
    assert checkpoints.run_ids() == []


def test_a_divergence_not_yet_checked_when_a_pack_stops_is_found_at_its_exact_step_after_resuming(
    write_manifest, registry, tmp_path
):
    session = session_for(write_manifest, registry, study(placement='"none"', lr="[0.05, 1000.0]"))
    (pack,) = plan_work(session.manifest.runs(), registry)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    reference = runner_for(session, divergence_check_every=100).run_pack(pack)  # checks at epoch ends only
    early = [r.diverged_step for r in reference if r.status == "diverged"]
    assert early and max(early) < 6
    stop = threading.Event()

    class StopAt:
        @hookimpl
        def bnbench_step_end(self, run, step, loss):
            if step == 6:  # after the divergences, before any check found them
                stop.set()

    stopper = StopAt()
    registry.manager.register(stopper)
    try:
        with pytest.raises(RunInterrupted):
            runner_for(session, checkpoints=checkpoints, divergence_check_every=100, stop=stop).run_pack(pack)
    finally:
        registry.manager.unregister(stopper)
    resumed = runner_for(session, checkpoints=checkpoints, divergence_check_every=100).run_pack(pack)
    assert [(r.status, r.diverged_step) for r in resumed] == [(r.status, r.diverged_step) for r in reference]


def test_a_killed_pack_worker_is_retried_from_the_pack_checkpoint(write_manifest, monkeypatch, tmp_path):
    markers = tmp_path / "killed"
    markers.mkdir()
    monkeypatch.setenv("BNBENCH_TEST_KILL_AT_STEP", str(KILL_AT_STEP + 6))  # mid-epoch 2 (7 steps per epoch)
    monkeypatch.setenv("BNBENCH_TEST_KILL_MARKERS", str(markers))
    monkeypatch.setenv("BNBENCH_TEST_KILL_ONCE", "1")
    text = study(placement='"all"', epochs=3).replace(
        'device = "cpu"', f'device = "cpu"\nexecutor = {{ name = "pool", workers = 1 }}\nplugins = ["{KILL_PLUGIN}"]'
    )
    manifest = open_session(write_manifest(text, "killed.toml")).manifest
    reference = open_session(
        write_manifest(study(placement='"all"', epochs=3).replace("results.sqlite", "ref.sqlite"), "ref.toml")
    ).manifest
    assert run_manifest(reference).statuses == {"done": 16}
    assert run_manifest(manifest).statuses == {"done": 16}
    assert any(markers.iterdir())  # the worker really was killed
    mine, theirs = stored(manifest), stored(reference)
    for run_id, run in mine.items():
        assert run.info["attempts"] == 2 and run.info["resumed_from_step"] == 7, run.info
        assert run.epochs == theirs[run_id].epochs  # bitwise: the pack resumed at its epoch-1 checkpoint


def test_a_model_that_cannot_run_under_vmap_falls_back_to_one_by_one(write_manifest):
    class RandomNorm(torch.nn.Module):
        """Adds noise in training: random ops under vmap need a randomness policy, so it refuses."""

        def __init__(self, features, kind, options):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(features))

        def forward(self, x):
            return x * self.scale + 0.01 * torch.randn_like(x)

    class Plugin:
        @hookimpl
        def bnbench_register_normalizers(self, register):
            def random_norm(features, kind, options):
                """Noise (a test normalizer)."""
                return RandomNorm(features, kind, options)

            register("random_norm", random_norm)

    registry = load_registry(objects=[("random_norm", Plugin())])
    text = study(placement='"all"').replace('normalizer = "batchnorm"', 'normalizer = "random_norm"')
    session = session_for(write_manifest, registry, text)
    (pack,) = plan_work(session.manifest.runs(), registry)
    notices: list[str] = []

    class Log:
        def log(self, message):
            notices.append(message)

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    results = runner_for(session).run_pack(pack, Log())  # type: ignore[arg-type]
    assert [r.status for r in results] == ["done"] * 16
    assert all("vmap" in r.info["pack_fallback"] for r in results)
    assert len([n for n in notices if "one by one" in n]) == 1 and "vmap" in notices[0]


def test_a_stacked_noise_transform_draws_what_each_member_alone_draws_bitwise():
    """GaussianNoise.stack: each member's noise from its own generator, as its run alone draws it;
    members without noise (std 0, or a split it does not apply to) unchanged; clipping per member."""
    from bnbench.plugins.transforms import GaussianNoise, GaussianNoiseOptions

    transforms = [
        GaussianNoise(GaussianNoiseOptions(std=0.0)),
        GaussianNoise(GaussianNoiseOptions(std=0.3, clip=True)),
        GaussianNoise(GaussianNoiseOptions(std=0.5, apply_to="test")),
        GaussianNoise(GaussianNoiseOptions(std=0.5)),
    ]
    images = torch.rand(len(transforms), 16, 1, 5, 5)
    seeds = [11, 12, 13, 14]
    alone = torch.stack(
        [t(images[i], torch.Generator().manual_seed(seeds[i]), "train") for i, t in enumerate(transforms)]
    )
    stacked = GaussianNoise.stack(transforms, images, [torch.Generator().manual_seed(s) for s in seeds], "train")
    assert torch.equal(stacked, alone)
    assert torch.equal(stacked[0], images[0]) and torch.equal(stacked[2], images[2])
    assert stacked[1].min() >= 0 and stacked[1].max() <= 1 and stacked[3].max() > 1  # clipped where asked
