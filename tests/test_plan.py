"""The plan (``bnbench.plan``): the manifest's runs against its store, checked, pending, in units
of work. ``bnbench plan`` prints it, ``bnbench run`` and the sweep execute it."""

from __future__ import annotations

import pytest
import torch
from test_packed_runs import study

from bnbench.checkpoint import Checkpoints
from bnbench.errors import ManifestError
from bnbench.plan import make_plan
from bnbench.records import PlannedPack, PlannedRun
from bnbench.session import open_session


@pytest.fixture
def session(write_manifest, registry):
    return open_session(write_manifest(study(pack=4)), registry=registry)


def test_a_fresh_plan_holds_every_run_once_all_pending_in_packs(session):
    plan = make_plan(session.manifest, session.registry)
    assert len(plan.runs) == len(session.manifest.runs()) == 32
    assert plan.statuses == {} and plan.pending == plan.runs
    assert [len(unit.members) for unit in plan.work] == [4] * 8 and all(isinstance(u, PlannedPack) for u in plan.work)
    assert plan.summary() == "32 runs, 32 to run (32 of them in 8 packs)"


def test_a_refreshed_plan_leaves_out_finished_runs_and_repacks_the_rest(session):
    plan = make_plan(session.manifest, session.registry)
    finished = {run.run_id: "done" for run in plan.runs[:6]} | {plan.runs[6].run_id: "failed"}
    refreshed = plan.refreshed(finished)
    assert [r.run_id for r in refreshed.pending] == [r.run_id for r in plan.runs[6:]]  # failed runs run again
    assert sum(len(u.members) if isinstance(u, PlannedPack) else 1 for u in refreshed.work) == 26
    assert plan.refreshed({}).work == plan.work  # a pure value: the original is unchanged
    rerun = make_plan(session.manifest, session.registry, rerun=True).refreshed(finished)
    assert len(rerun.pending) == 32


def test_a_run_with_a_checkpoint_of_its_own_is_planned_alone(session):
    first = session.manifest.runs()[0]
    checkpoints = Checkpoints.beside(session.manifest.results_path)
    checkpoints.save(first.run_id, {"step": 1, "weights": torch.zeros(1)})
    plan = make_plan(session.manifest, session.registry)
    assert first.run_id in plan.resumable
    alone = [u for u in plan.work if isinstance(u, PlannedRun)]
    assert [u.run_id for u in alone] == [first.run_id]


def test_a_run_that_cannot_build_stops_the_plan_before_the_store_is_touched(write_manifest, registry):
    text = study().replace("batch_size = 32", "batch_size = 4096")
    session = open_session(write_manifest(text), registry=registry)
    with pytest.raises(ManifestError, match="batch_size 4096 is larger than the"):
        make_plan(session.manifest, session.registry)
    assert not session.manifest.results_path.exists()
