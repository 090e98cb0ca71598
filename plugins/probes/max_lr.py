"""Maximal trainable learning rate against depth (Bjorck et al. 2018, section 3, Figure 8).

The largest learning rate at which an unnormalized residual network still trains shrinks as
the network gets deeper; with BN it is larger and depends little on depth. RQ1, RQ2 and RQ5.
The study sweeps depth and placement as axes (``model = { name = "resnet_cifar", depth = [20,
32, 44, 56, 110] }``, ``placement = ["all", "none"]``); the probe scans a grid of learning
rates for each.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from harness import Options, runtime_option
from harness.analysis import axis_value, fmt, group_runs, over_seeds, point, put, ratio
from harness.api import AnalysisResult, ClaimValue, Figure, ProbeContext, StudyResults, Table
from harness.stacking import StackedModules
from plugins.probes.common import CompareOptions, probe_runs, take_batches


class MaxLrOptions(Options):
    learning_rates: list[float] = Field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
        description="The grid of learning rates, scanned from the largest down to the first that does not diverge.",
    )
    steps: int = Field(100, gt=0, description="SGD steps per learning rate (a fresh copy of the initial model each).")
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    criterion: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute (the paper's): a run diverges when a mini-batch loss exceeds `loss_limit`; "
        "relative: when it exceeds `loss_limit` × the first loss.",
    )
    loss_limit: float = Field(1e3, gt=1, description="The divergence limit (the paper's: a mini-batch loss of 1e3).")
    packed: bool = runtime_option(
        False,
        description="Train every learning rate of the grid at once (torch.func.vmap) instead of one after another: "
        "the same measurement within float tolerance, and not part of run ids. Meant for a GPU, where one run "
        "leaves the device idle (unmeasured); on a CPU measured 17x slower: the one-by-one scan stops at the "
        "first rate that trains, the packed one trains every rate (docs/packing.md).",
    )

    @field_validator("learning_rates")
    @classmethod
    def _positive_sorted(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("learning_rates needs at least one positive learning rate")
        return sorted(set(value))


def train_steps(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    lr: float,
    momentum: float,
    weight_decay: float,
    loss_limit: float,
    criterion: str = "absolute",
) -> dict[str, Any]:
    """SGD on ``batches`` in order; stops at the first non-finite loss or one above
    ``loss_limit`` (``criterion="absolute"``) or ``loss_limit`` × the first loss ("relative")."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    first = last = math.nan
    for step, (images, labels) in enumerate(batches, start=1):
        loss = F.cross_entropy(model(images), labels)
        value = float(loss.detach())
        first = value if step == 1 else first
        limit = loss_limit if criterion == "absolute" else loss_limit * first
        if not math.isfinite(value) or value > limit:
            return {"lr": lr, "diverged": True, "diverged_step": step, "first_loss": first, "final_loss": None}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = value
    return {"lr": lr, "diverged": False, "diverged_step": None, "first_loss": first, "final_loss": last}


def train_steps_packed(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    learning_rates: list[float],
    momentum: float,
    weight_decay: float,
    loss_limit: float,
    criterion: str = "absolute",
) -> list[dict[str, Any]]:
    """``train_steps`` for every learning rate at once, from copies of ``model``: one forward and
    backward per step for all of them (``harness.stacking``), each copy stepped by its own
    ``torch.optim.SGD``. A copy that diverges stops updating at that step, as ``train_steps``
    stops; results in the order of ``learning_rates``."""
    copies = [copy.deepcopy(model) for _ in learning_rates]
    stack = StackedModules(copies, shared_input=True)
    optimizers = [
        torch.optim.SGD(c.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        for c, lr in zip(copies, learning_rates, strict=True)
    ]
    scans: list[dict[str, Any]] = [
        {"lr": lr, "diverged": False, "diverged_step": None, "first_loss": math.nan, "final_loss": math.nan}
        for lr in learning_rates
    ]
    count = len(learning_rates)
    for step, (images, labels) in enumerate(batches, start=1):
        logits = stack.forward(images)
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(count), reduction="none").view(count, -1).mean(1)
        for scan, value in zip(scans, losses.detach().tolist(), strict=True):
            if scan["diverged"]:
                continue
            scan["first_loss"] = value if step == 1 else scan["first_loss"]
            limit = loss_limit if criterion == "absolute" else loss_limit * scan["first_loss"]
            if not math.isfinite(value) or value > limit:
                scan.update(diverged=True, diverged_step=step, final_loss=None)
            else:
                scan["final_loss"] = value
        if all(scan["diverged"] for scan in scans):
            break
        stack.zero_grad()
        losses.sum().backward()
        stack.repoint_gradients()
        for scan, optimizer in zip(scans, optimizers, strict=True):
            if not scan["diverged"]:
                optimizer.step()
    return scans


def max_lr(context: ProbeContext, options: MaxLrOptions) -> dict[str, Any]:
    """Largest learning rate of a grid that trains a fixed number of steps without diverging (Bjorck Fig. 8).

    From the same initial weights and the same mini-batches for every learning rate, SGD with
    the study's momentum and weight decay (``[studies.optimizer]``; its ``lr`` is not used)
    runs ``steps`` steps; a run diverges at a non-finite loss or one above ``loss_limit`` (the
    paper's absolute rule; ``criterion="relative"``: ``loss_limit`` × its first loss), and
    stops there. The grid is scanned from the largest learning rate down to the first that
    does not diverge: ``max_lr`` (0 if every one diverges). Diverging runs stop
    within a few steps, so the scan costs little more than one run. ``packed``: every rate
    trains at once (``train_steps_packed``) and the scan reports the same rates as the
    one-by-one scan does (from the largest down to the first that trains).
    """
    model = context.build_model()
    initial = copy.deepcopy(model.state_dict())
    batches = take_batches(context, options.batch_size, options.steps)
    optimizer = context.spec.optimizer
    if options.packed:
        rates = list(reversed(options.learning_rates))
        every = train_steps_packed(
            model, batches, rates, optimizer.momentum, optimizer.weight_decay, options.loss_limit, options.criterion
        )
        trained = [index for index, scan in enumerate(every) if not scan["diverged"]]
        scans = every[: trained[0] + 1] if trained else every
        best = rates[trained[0]] if trained else 0.0
        return {"max_lr": best, "steps": options.steps, "learning_rates": options.learning_rates, "scans": scans}
    scans = []
    for lr in reversed(options.learning_rates):
        model.load_state_dict(initial)
        model.train()
        scan = train_steps(
            model, batches, lr, optimizer.momentum, optimizer.weight_decay, options.loss_limit, options.criterion
        )
        scans.append(scan)
        if not scan["diverged"]:
            return {"max_lr": lr, "steps": options.steps, "learning_rates": options.learning_rates, "scans": scans}
    return {"max_lr": 0.0, "steps": options.steps, "learning_rates": options.learning_rates, "scans": scans}


class MaxLrAnalysisOptions(CompareOptions):
    depth_axis: str = Field("model.depth", description="The study's depth axis (dotted path).")


def max_lr_analysis(study: StudyResults, options: MaxLrAnalysisOptions) -> AnalysisResult:
    """Maximal trainable learning rate against depth per configuration (Fig. 8).

    The table shows the median over seeds of a (configuration, depth) (0: every learning rate
    of the grid diverged). Values: ``max_lr.<group>.<depth>`` (point: median over seeds) and,
    as Estimates over seeds (log scale), ``depth_tolerance.<group>`` (max lr at the shallowest
    depth ÷ at the deepest) and ``max_lr_ratio`` (normalized ÷ unnormalized, paired by seed,
    the smallest over depths). A 0 divisor is replaced by the grid's smallest learning rate,
    which makes the ratio a lower bound.
    """
    groups = group_runs(probe_runs(study), exclude={options.depth_axis})
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    smallest = min(min(r.measurements.get("learning_rates") or [math.inf]) for rs in groups.values() for r in rs)

    def bounded(lr: float) -> float | None:
        """``lr`` as a divisor: below the grid means below its smallest learning rate."""
        return lr if lr > 0 else (smallest if math.isfinite(smallest) else None)

    per_seed: dict[str, dict[int, dict[int, float]]] = {}  # group → depth → seed → max lr
    for label, runs in groups.items():
        for run in runs:
            depth = axis_value(run, options.depth_axis)
            depth_key = int(depth) if depth is not None else 0
            per_seed.setdefault(label, {}).setdefault(depth_key, {})[run.seed] = float(run.measurements["max_lr"])
    table = {
        label: {d: statistics.median(seeds.values()) for d, seeds in sorted(by_depth.items())}
        for label, by_depth in per_seed.items()
    }
    values: dict[str, ClaimValue] = {}
    depths = sorted({d for by_depth in table.values() for d in by_depth})
    for label, by_depth in per_seed.items():
        for depth, lr in table[label].items():
            values[f"max_lr.{label}.{depth}"] = point(lr, "median over seeds")
        if len(by_depth) > 1:
            shallow, deep = by_depth[min(by_depth)], by_depth[max(by_depth)]
            tolerance = [ratio(shallow[s], bounded(deep[s])) for s in sorted(shallow.keys() & deep.keys())]
            put(values, f"depth_tolerance.{label}", over_seeds(tolerance, scale="log"))
    normalized, unnormalized = per_seed.get(options.normalized, {}), per_seed.get(options.unnormalized, {})
    common = [d for d in depths if d in normalized and d in unnormalized]
    if common:
        seeds = set.intersection(*(set(normalized[d]) & set(unnormalized[d]) for d in common))
        smallest_ratio = []
        for seed in sorted(seeds):
            ratios = [ratio(normalized[d][seed], bounded(unnormalized[d][seed])) for d in common]
            finite = [r for r in ratios if r is not None]
            smallest_ratio.append(min(finite) if finite else None)
        put(values, "max_lr_ratio", over_seeds(smallest_ratio, scale="log"))
    rows = [[depth, *(_cell(table[label].get(depth), smallest) for label in table)] for depth in depths]
    result_table = Table(
        "Maximal trainable learning rate (median over seeds)", ["depth", *(f"{label}" for label in table)], rows
    )

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for label, by_depth in table.items():
            ax.plot(list(by_depth), [v if v > 0 else math.nan for v in by_depth.values()], marker="o", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("largest learning rate that did not diverge")
        ax.set_title("Maximal trainable learning rate against depth")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()

    return AnalysisResult([result_table], [Figure("max_lr_vs_depth", draw)], values)


def _cell(lr: float | None, smallest: float) -> str:
    if lr == 0 and math.isfinite(smallest):
        return f"< {fmt(smallest)} (all diverged)"
    return fmt(lr)
