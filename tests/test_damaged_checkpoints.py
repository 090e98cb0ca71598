"""Damaged checkpoints are caught: a flipped bit by the checksum, a checkpoint that does not fit the
run by a check before anything is restored; either way the run resumes from the older one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_until_stopped
from test_reliability import deterministic_manifest

from bnbench.checkpoint import MAGIC, Checkpoints, read_checkpoint
from bnbench.progress import Progress
from bnbench.runner import Runner
from bnbench.session import open_session


def two_checkpoints(write_manifest, registry) -> tuple[Any, Any, Checkpoints, Any]:
    """A run stopped at step 3, resumed and stopped again at step 6: checkpoints of both steps."""
    manifest = open_session(write_manifest(deterministic_manifest(seeds="[0]")), registry=registry).manifest
    planned = manifest.runs()[0]
    checkpoints = Checkpoints.beside(manifest.results_path)
    run_until_stopped(registry, planned, manifest.base_dir, checkpoints, at_step=3)
    run_until_stopped(registry, planned, manifest.base_dir, checkpoints, at_step=6)
    assert [p.name for p in checkpoints.files(planned.run_id)] == ["step-0000000006.pt", "step-0000000003.pt"]
    return manifest, planned, checkpoints, registry


def resume(manifest, planned, checkpoints, registry) -> tuple[Any, list[str]]:
    """Run ``planned`` to the end from its checkpoints; its result and the progress messages."""
    stream = io.StringIO()
    runner = Runner(registry, base_dir=manifest.base_dir, device="cpu", checkpoints=checkpoints)
    result = runner.run(planned, progress=Progress(1, stream=stream, bars=False))
    return result, stream.getvalue().splitlines()


def test_a_flipped_bit_inside_a_weight_is_caught_by_the_checksum(write_manifest, registry):
    manifest, planned, checkpoints, registry = two_checkpoints(write_manifest, registry)
    newest = checkpoints.files(planned.run_id)[0]
    data = bytearray(newest.read_bytes())
    assert data.startswith(MAGIC)
    weight = read_checkpoint(newest)["model"]
    name = next(iter(weight))
    raw = weight[name].numpy().tobytes()
    offset = bytes(data).index(raw[:16])  # the stored tensor's bytes, inside the file
    data[offset + 3] ^= 0x40  # an exponent bit of the first float
    newest.write_bytes(bytes(data))
    result, warnings = resume(manifest, planned, checkpoints, registry)
    assert result.status == "done" and result.info["resumed_from_step"] == 3
    assert any("checksum does not match" in w for w in warnings)
    assert newest.with_suffix(".corrupt").is_file()  # set aside for inspection, not deleted


def _wrong_shape(state: dict[str, Any]) -> None:
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(3, 3, 3)


def _no_rng(state: dict[str, Any]) -> None:
    del state["rng"]


def _order_out_of_range(state: dict[str, Any]) -> None:
    state["order"] = state["order"] + 10_000 if state["order"] is not None else torch.arange(10_000, 10_010)


@pytest.mark.parametrize("damage", [_wrong_shape, _no_rng, _order_out_of_range])
def test_a_checkpoint_that_does_not_fit_falls_back_to_the_older_one(write_manifest, registry, damage):
    manifest, planned, checkpoints, registry = two_checkpoints(write_manifest, registry)
    newest, older = checkpoints.files(planned.run_id)
    state = read_checkpoint(newest)
    for key in ("format", "run_id"):
        state.pop(key)
    damage(state)
    checkpoints.save(planned.run_id, state)  # a well-formed file with a checksum: only its content is wrong
    result, warnings = resume(manifest, planned, checkpoints, registry)
    assert result.status == "done" and result.info["resumed_from_step"] == 3, warnings
    assert any("does not fit this run" in w for w in warnings)
    assert isinstance(older, Path) and older.is_file()  # the good older checkpoint was kept and used


def test_a_checkpoint_without_its_checksum_line_is_refused_not_resumed(write_manifest, registry):
    manifest, planned, checkpoints, registry = two_checkpoints(write_manifest, registry)
    newest = checkpoints.files(planned.run_id)[0]
    state = read_checkpoint(newest)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1.0  # altered weights, saved as a plain torch file
    buffer = io.BytesIO()
    torch.save(state, buffer)
    newest.write_bytes(buffer.getvalue())
    result, warnings = resume(manifest, planned, checkpoints, registry)
    assert result.status == "done" and result.info["resumed_from_step"] == 3  # the older, verified one
    (warning,) = [w for w in warnings if "no checksum line" in w]
    assert str(newest) in warning and "\n" not in warning
