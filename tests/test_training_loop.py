"""The training loop (``bnbench.training.Loop``), written once for a run alone (``OneRun``) and for
packs (``bnbench.packed_training.Pack``).

A run alone must equal a plain PyTorch loop bitwise (the same seed, init, data order, SGD and
schedule): the harness adds bookkeeping, never arithmetic. A pack steps its members together and
equals them trained alone within float tolerance (``test_packed_runs``); here its loop is driven
directly: divergence per member at the exact step, and a stopped pack that resumes as if never
stopped.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import run_until_stopped

from bnbench.assembly import assemble_model
from bnbench.checkpoint import Checkpoints
from bnbench.data import DataCache
from bnbench.executors import RunInterrupted
from bnbench.packed_training import Pack
from bnbench.runner import Runner
from bnbench.session import open_session
from bnbench.training import Loop, OneRun, seed_everything

STUDY = """
[harness]
results = "results.sqlite"
device = "cpu"

[[studies]]
name = "loop"
model = {{ name = "mlp", widths = [32, 32] }}
dataset = {{ name = "synthetic", image_shape = [1, 8, 8], num_classes = 4, train_size = 200, test_size = 64, noise = 0.6 }}
normalizer = "batchnorm"
placement = "{placement}"
epochs = 3
batch_size = 32
seeds = [0, 1]
metrics = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]

[studies.optimizer]
lr = {lr}
momentum = 0.9
weight_decay = 5e-4
nesterov = true

[studies.schedule]
kind = "multistep"
milestones = [0.4, 0.7]
gamma = 0.1
warmup_steps = 5
warmup = "linear"
warmup_factor = 0.2
"""  # noqa: E501 - a TOML inline table cannot wrap


@pytest.fixture
def session(write_manifest, registry):
    def make(placement: str = "all", lr: str = "[0.05, 0.2]"):
        return open_session(write_manifest(STUDY.format(placement=placement, lr=lr)), registry=registry)

    return make


def runner_for(session, **kwargs) -> Runner:
    return Runner(session.registry, base_dir=session.manifest.base_dir, device="cpu", **kwargs)


def train_alone(runner: Runner, planned) -> dict[str, torch.Tensor]:
    """The run trained by the harness's loop: its final parameters and buffers."""
    training, _ = runner.assemble(planned, None)
    Loop(OneRun(training), runner.check_every).train(
        runner.registry, stop=None, progress=None, label="", checkpoints=None, checkpoint_every=0
    )
    return {k: v.clone() for k, v in training.context.model.state_dict().items()}


def train_plainly(session, planned) -> dict[str, torch.Tensor]:
    """The same run as a textbook PyTorch loop: SGD, cross-entropy, the schedule by hand."""
    spec = planned.spec
    device = torch.device("cpu")
    seed_everything(spec.seed)
    data = DataCache(session.registry, session.manifest.base_dir).get(spec.dataset, device, spec.validation_size)
    model, _ = assemble_model(session.registry, spec, data.bundle.info, device)
    opt = spec.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov
    )
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    steps_per_epoch = data.train_size // spec.batch_size
    total = spec.epochs * steps_per_epoch
    step = 0
    for _ in range(spec.epochs):
        model.train()
        order = torch.randperm(data.train_size, generator=generator)
        for start in range(0, steps_per_epoch * spec.batch_size, spec.batch_size):
            index = order[start : start + spec.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = opt.lr * spec.schedule.factor(step, total)
            loss = F.cross_entropy(model(data.prepare(data.train_images[index])), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_run_alone_equals_a_plain_pytorch_loop_bitwise(session):
    s = session()
    runner = runner_for(s)
    for planned in s.manifest.runs()[:2]:
        mine, plain = train_alone(runner, planned), train_plainly(s, planned)
        assert mine.keys() == plain.keys()
        for name in mine:
            assert torch.equal(mine[name], plain[name]), f"{planned.label}: {name} differs"


def test_the_plain_loop_comparison_can_fail(session):
    """A schedule off by one step changes the weights: the bitwise comparison above would see it."""
    s = session()
    planned = s.manifest.runs()[0]
    plain = train_plainly(s, planned)
    shifted = planned.spec.model_copy(update={"schedule": planned.spec.schedule.model_copy(update={"warmup_steps": 6})})
    other = train_plainly(s, dataclasses.replace(planned, spec=shifted))
    assert any(not torch.equal(plain[name], other[name]) for name in plain)


def test_the_schedule_resumes_at_the_checkpointed_step_inside_the_warmup(session, tmp_path):
    """Stopped at step 3 (inside the 5-step warm-up) and resumed, a run ends bitwise as if never
    stopped: the restored schedule starts at step 3, not at 0 nor at the checkpoint's rate."""
    s = session()
    planned = s.manifest.runs()[0]
    uninterrupted = runner_for(s).run(planned)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    stopped = run_until_stopped(s.registry, planned, s.manifest.base_dir, checkpoints, at_step=3)
    assert stopped.step == 3
    resumed = runner_for(s, checkpoints=checkpoints).run(planned)
    assert resumed.info["resumed_from_step"] == 3
    assert [e.metrics for e in resumed.epochs] == [e.metrics for e in uninterrupted.epochs]


def pack_of(s, runner: Runner) -> Pack:
    runs = s.manifest.runs()
    trainings = [runner.assemble(planned, None, resume=False)[0] for planned in runs]
    return Pack.start("packtest", trainings, checkpoints=None, warn=print)


def test_a_pack_member_diverges_at_its_own_exact_step_and_the_others_train_to_the_end(session):
    s = session(placement="none", lr="[0.05, 1000.0]")
    runner = runner_for(s, divergence_check_every=100)  # found at epoch ends, recorded at the exact step
    alone = {r.run_id: runner.run(r) for r in s.manifest.runs()}
    pack = pack_of(s, runner)
    Loop(pack, runner.check_every).train(
        s.registry, stop=None, progress=None, label="", checkpoints=None, checkpoint_every=0
    )
    outcomes = {}
    for member in pack.members:
        run_id = member.training.context.run_id
        outcomes[run_id] = member.diverged.step if member.diverged else None
        assert member.error is None
        if member.diverged is None:
            assert [r.epoch for r in member.records] == [1, 2, 3]
    assert outcomes == {run_id: r.diverged_step for run_id, r in alone.items()}
    diverged = [v for v in outcomes.values() if v is not None]
    assert len(diverged) == 2  # the lr 1000 members; the lr 0.05 ones trained on
    assert set(diverged) - {6, 12, 18}  # exact steps, not the checks'


def test_a_stopped_pack_resumes_to_the_same_end_as_an_uninterrupted_one(session, tmp_path):
    s = session()
    runner = runner_for(s)
    reference = pack_of(s, runner)
    Loop(reference, runner.check_every).train(
        s.registry, stop=None, progress=None, label="", checkpoints=None, checkpoint_every=0
    )
    checkpoints = Checkpoints(tmp_path / "checkpoints")

    class StopAfter:
        """Set from the 8th poll on: the pack stops at step 8, inside epoch 2."""

        polls = 0

        def is_set(self) -> bool:
            self.polls += 1
            return self.polls >= 8

    stopped = pack_of(s, runner)
    with pytest.raises(RunInterrupted) as info:
        Loop(stopped, runner.check_every).train(
            s.registry, stop=StopAfter(), progress=None, label="", checkpoints=checkpoints, checkpoint_every=0
        )
    assert info.value.step == 8
    trainings = [runner.assemble(planned, None, resume=False)[0] for planned in s.manifest.runs()]
    resumed = Pack.start("packtest", trainings, checkpoints=checkpoints, warn=print)
    assert resumed.members[0].training.state.step == 8
    Loop(resumed, runner.check_every).train(
        s.registry, stop=None, progress=None, label="", checkpoints=None, checkpoint_every=0
    )
    for mine, theirs in zip(resumed.members, reference.members, strict=True):
        assert [r.metrics for r in mine.records] == [r.metrics for r in theirs.records]


def test_a_pack_shrinks_to_its_active_members_once_some_diverge(session):
    """Members that diverged leave the stack: the others train on in a smaller one, with the same
    results as when the pack kept computing the ended members (the runs alone are the reference
    of test_packed_runs; here: diverged members' weights stay as they ended)."""
    s = session(placement="none", lr="[0.05, 1000.0]")
    runner = runner_for(s, divergence_check_every=2)
    pack = pack_of(s, runner)
    assert len(pack.stacked) == 4
    Loop(pack, runner.check_every).train(
        s.registry, stop=None, progress=None, label="", checkpoints=None, checkpoint_every=0
    )
    ended = [i for i, m in enumerate(pack.members) if not m.active]
    assert len(ended) == 2 and pack.stacked == [i for i in range(4) if i not in ended]
    assert all(p.shape[0] == 2 for p in pack.stack.params.values())
    alone = {r.run_id: r for r in (runner.run(m) for m in s.manifest.runs())}
    for member in pack.members:
        reference = alone[member.training.context.run_id]
        if member.active:
            assert [r.epoch for r in member.records] == [1, 2, 3] and reference.status == "done"
            for mine, theirs in zip(member.records, reference.epochs, strict=True):
                for name, value in theirs.metrics.items():
                    assert mine.metrics[name] == pytest.approx(value, rel=2e-3, abs=1e-5), name
        else:
            assert member.diverged.step == reference.diverged_step


def test_a_pack_steps_with_as_many_operations_at_8_members_as_at_2(write_manifest, registry):
    """The pack's step (forward, backward, every member's SGD update) is a fixed number of
    operations whatever the pack's size: the members' optimizers step as one stacked update
    (``StackedSGD``). Stepping each member's own optimizer would add a dozen operations per member."""
    from torch.profiler import ProfilerActivity, profile

    from bnbench.packed_training import StackedSGD

    def operations(seeds: int, stacked: bool = True) -> int:
        text = STUDY.format(placement="all", lr="0.05").replace("seeds = [0, 1]", f"seeds = {list(range(seeds))}")
        s = open_session(write_manifest(text, f"ops{seeds}{stacked}.toml"), registry=registry)
        pack = pack_of(s, runner_for(s))
        assert isinstance(pack.optimizer, StackedSGD)
        if not stacked:
            pack.optimizer = None  # each member's torch.optim.SGD, one after another
        for member in pack.members:
            member.training.state.begin_epoch(member.training.data.epoch_order(member.training.generator))
        images, labels = next(pack.batches(0))
        pack.step(images, labels, False)  # momentum buffers exist from here on
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pack.step(images, labels, False)
        return sum(event.count for event in prof.key_averages())

    assert operations(8) == operations(2)
    assert operations(8, stacked=False) > operations(2, stacked=False) + 6 * 10  # the check can fail


def test_a_packs_noisy_batches_cost_one_draw_per_member_and_the_rest_once(write_manifest, registry):
    """With an input transform that stacks (GaussianNoise.stack), preparing a pack's batch costs
    each member only its own noise draw (its generator, as alone); scaling, the noise arithmetic,
    clipping and normalization are done once for the whole stack."""
    from torch.profiler import ProfilerActivity, profile

    def operations(seeds: int, stacked: bool = True) -> int:
        text = STUDY.format(placement="all", lr="0.05").replace("seeds = [0, 1]", f"seeds = {list(range(seeds))}")
        text = text.replace(
            'normalizer = "batchnorm"',
            'normalizer = "batchnorm"\ninput_transform = { name = "gaussian_noise", std = 0.3, clip = true }',
        )
        s = open_session(write_manifest(text, f"noise{seeds}{stacked}.toml"), registry=registry)
        pack = pack_of(s, runner_for(s))
        assert pack.stacked_transform
        pack.stacked_transform = stacked
        for member in pack.members:
            member.training.state.begin_epoch(member.training.data.epoch_order(member.training.generator))
        batches = pack.batches(0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            next(batches)
        return sum(event.count for event in prof.key_averages())

    assert operations(8) - operations(2) <= 6 * 3  # per member: a slice (select, as_strided) and its normal_
    assert operations(8, stacked=False) - operations(2, stacked=False) > 6 * 6  # the check can fail
