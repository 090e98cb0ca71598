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

from bnbench import Options, runtime_option
from bnbench.analysis import axis_value, bracket_ratio, bracketed, fmt, grid_bracket, group_runs, point, put
from bnbench.api import AnalysisResult, ClaimValue, Figure, ProbeContext, StudyResults, Table
from bnbench.plugins.probes.common import CompareOptions, learned, probe_runs, take_batches
from bnbench.stacking import StackedModules


class MaxLrOptions(Options):
    learning_rates: list[float] = Field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
        description="The grid of learning rates, scanned from the largest down to the first that does not diverge.",
    )
    steps: int = Field(100, gt=0, description="SGD steps per learning rate (a fresh copy of the initial model each).")
    batch_size: int = Field(128, gt=0, description="Mini-batch size (He et al. 2016: 128).")
    criterion: Literal["non_finite", "absolute", "relative"] = Field(
        "non_finite",
        description="non_finite (the training loop's rule, the default): a run diverges at a non-finite loss; "
        "absolute: also when a mini-batch loss exceeds `loss_limit`; relative: when it exceeds `loss_limit` × the "
        "first loss. Whether a run that did not diverge learned is decided apart (`learned_margin`).",
    )
    loss_limit: float = Field(1e3, gt=1, description="The limit of the absolute and relative rules.")
    learned_margin: float = Field(
        0.1,
        ge=0,
        description="A run learned when its mean loss over the last tenth of its steps is below ln(classes) minus "
        "this (nats): 'trains' means learning, not only not diverging (a loss stuck at ln(classes) learns nothing).",
    )
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


def _diverged(value: float, first: float, criterion: str, loss_limit: float) -> bool:
    if not math.isfinite(value):
        return True
    if criterion == "absolute":
        return value > loss_limit
    if criterion == "relative":
        return value > loss_limit * first
    return False


def train_steps(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    lr: float,
    momentum: float,
    weight_decay: float,
    loss_limit: float,
    criterion: str = "non_finite",
    margin: float = 0.1,
) -> dict[str, Any]:
    """SGD on ``batches`` in order; stops at the first loss the criterion calls diverged
    (``MaxLrOptions.criterion``); ``learned``: whether the last tenth of the losses is below
    ln(classes) − ``margin``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses: list[float] = []
    for step, (images, labels) in enumerate(batches, start=1):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        value = float(loss.detach())
        first = value if step == 1 else losses[0]
        if _diverged(value, first, criterion, loss_limit):
            return {"lr": lr, "diverged": True, "diverged_step": step, "first_loss": first, "final_loss": None,
                    "learned": False}  # fmt: skip
        losses.append(value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {
        "lr": lr,
        "diverged": False,
        "diverged_step": None,
        "first_loss": losses[0] if losses else math.nan,
        "final_loss": losses[-1] if losses else math.nan,
        "learned": learned(losses, int(logits.shape[-1]), margin),
    }


def train_steps_packed(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    learning_rates: list[float],
    momentum: float,
    weight_decay: float,
    loss_limit: float,
    criterion: str = "non_finite",
    margin: float = 0.1,
) -> list[dict[str, Any]]:
    """``train_steps`` for every learning rate at once, from copies of ``model``: one forward and
    backward per step for all of them (``bnbench.stacking``), each copy stepped by its own
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
    losses: list[list[float]] = [[] for _ in learning_rates]
    count = len(learning_rates)
    for step, (images, labels) in enumerate(batches, start=1):
        logits = stack.forward(images)
        classes = int(logits.shape[-1])
        step_losses = (
            F.cross_entropy(logits.flatten(0, 1), labels.repeat(count), reduction="none").view(count, -1).mean(1)
        )
        for scan, seen, value in zip(scans, losses, step_losses.detach().tolist(), strict=True):
            if scan["diverged"]:
                continue
            scan["first_loss"] = value if step == 1 else scan["first_loss"]
            if _diverged(value, scan["first_loss"], criterion, loss_limit):
                scan.update(diverged=True, diverged_step=step, final_loss=None)
            else:
                scan["final_loss"] = value
                seen.append(value)
        if all(scan["diverged"] for scan in scans):
            break
        stack.zero_grad()
        step_losses.sum().backward()
        stack.repoint_gradients()
        for scan, optimizer in zip(scans, optimizers, strict=True):
            if not scan["diverged"]:
                optimizer.step()
    for scan, seen in zip(scans, losses, strict=True):
        scan["learned"] = not scan["diverged"] and learned(seen, classes, margin)
    return scans


def max_lr(context: ProbeContext, options: MaxLrOptions) -> dict[str, Any]:
    """Largest learning rate of a grid that trains a fixed number of steps (Bjorck Fig. 8), by two rules.

    From the same initial weights and the same mini-batches for every learning rate, SGD with
    the study's momentum and weight decay (``[studies.optimizer]``; its ``lr`` is not used)
    runs ``steps`` steps; a run diverges by ``criterion`` (default: a non-finite loss, the
    training loop's rule) and stops there; one that did not diverge *learned* when its loss
    over the last tenth of the steps is below ln(classes) − ``learned_margin``. The grid is
    scanned from the largest learning rate down to the first that learns: ``max_lr`` (largest
    that did not diverge) and ``max_learning_lr`` (largest that learned; 0 if none). ``packed``:
    every rate trains at once (``train_steps_packed``), reported as the one-by-one scan is.
    """
    model = context.build_model()
    initial = copy.deepcopy(model.state_dict())
    batches = take_batches(context, options.batch_size, options.steps)
    optimizer = context.spec.optimizer
    settings = (optimizer.momentum, optimizer.weight_decay, options.loss_limit, options.criterion)
    settings += (options.learned_margin,)
    rates = list(reversed(options.learning_rates))
    if options.packed:
        every = train_steps_packed(model, batches, rates, *settings)
        first_learned = next((i for i, scan in enumerate(every) if scan["learned"]), len(every) - 1)
        scans = every[: first_learned + 1]
    else:
        scans = []
        for lr in rates:  # from the largest down to the first rate that learns
            model.load_state_dict(initial)
            model.train()
            scans.append(train_steps(model, batches, lr, *settings))
            if scans[-1]["learned"]:
                break
    return {
        "max_lr": max((s["lr"] for s in scans if not s["diverged"]), default=0.0),
        "max_learning_lr": max((s["lr"] for s in scans if s["learned"]), default=0.0),
        "steps": options.steps,
        "learning_rates": options.learning_rates,
        "scans": scans,
    }


class MaxLrAnalysisOptions(CompareOptions):
    depth_axis: str = Field("model.depth", description="The study's depth axis (dotted path).")


def max_lr_analysis(study: StudyResults, options: MaxLrAnalysisOptions) -> AnalysisResult:
    """Maximal trainable learning rate against depth per configuration (Fig. 8), by two rules.

    "Trains" is decided on learning (``max_learning_lr``: the loss fell below ln(classes) by the
    margin); "did not diverge" (``max_lr``) is shown beside it. Each seed's value is read off the
    grid, so it carries the grid's bracket (``bnbench.intervals``: between the largest rate that
    passed and the next; open above at the grid's top; below the grid's first rate when none
    passed). Values: ``max_lr.<group>.<depth>`` (point: median over seeds, learning rule), and
    bracketed over seeds: ``depth_tolerance.<group>`` (the rate at the shallowest depth ÷ at the
    deepest), ``max_lr_ratio`` (normalized ÷ unnormalized, paired by seed, the smallest over
    depths), and the same under the no-divergence rule with the suffix ``_stable``.
    """
    groups = group_runs(probe_runs(study), exclude={options.depth_axis})
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    grid = sorted({lr for rs in groups.values() for r in rs for lr in r.measurements.get("learning_rates") or []})
    if not grid:  # runs that did not record their grid: the rates they found stand in for it
        grid = sorted({float(r.measurements[k]) for rs in groups.values() for r in rs
                       for k in ("max_lr", "max_learning_lr") if float(r.measurements.get(k) or 0) > 0})  # fmt: skip
    values: dict[str, ClaimValue] = {}
    tables = []
    medians: dict[str, dict[str, dict[int, float]]] = {}
    for rule, key, suffix in (("learned", "max_learning_lr", ""), ("did not diverge", "max_lr", "_stable")):
        per_seed: dict[str, dict[int, dict[int, float]]] = {}  # group → depth → seed → rate
        for label, runs in groups.items():
            for run in runs:
                depth = axis_value(run, options.depth_axis)
                measured = run.measurements.get(key, run.measurements.get("max_lr"))  # older runs: max_lr only
                per_seed.setdefault(label, {}).setdefault(int(depth) if depth is not None else 0, {})[run.seed] = float(
                    measured
                )
        table = {
            label: {d: statistics.median(seeds.values()) for d, seeds in sorted(by_depth.items())}
            for label, by_depth in per_seed.items()
        }
        medians[rule] = table

        def bracket(lr: float) -> tuple[float, float]:
            return grid_bracket(lr, grid, "largest_passing")

        for label, by_depth in per_seed.items():
            if not suffix:
                for depth, lr in table[label].items():
                    values[f"max_lr.{label}.{depth}"] = point(lr, "median over seeds")
            if len(by_depth) > 1:
                shallow, deep = by_depth[min(by_depth)], by_depth[max(by_depth)]
                seeds = sorted(shallow.keys() & deep.keys())
                put(
                    values,
                    f"depth_tolerance{suffix}.{label}",
                    bracketed(
                        [shallow[s] / deep[s] if deep[s] > 0 else math.inf for s in seeds],
                        [bracket_ratio(bracket(shallow[s]), bracket(deep[s])) for s in seeds],
                        unit="x",
                    ),
                )
        normalized, unnormalized = per_seed.get(options.normalized, {}), per_seed.get(options.unnormalized, {})
        common = [d for d in sorted(normalized) if d in unnormalized]
        if common:
            seeds = sorted(set.intersection(*(set(normalized[d]) & set(unnormalized[d]) for d in common)))
            points, brackets = [], []
            for seed in seeds:
                ratios = [bracket_ratio(bracket(normalized[d][seed]), bracket(unnormalized[d][seed])) for d in common]
                brackets.append((min(lo for lo, _ in ratios), min(hi for _, hi in ratios)))
                quotients = [
                    normalized[d][seed] / unnormalized[d][seed] if unnormalized[d][seed] > 0 else math.inf
                    for d in common
                ]
                points.append(min(quotients))
            put(values, f"max_lr_ratio{suffix}", bracketed(points, brackets, unit="x"))
        depths = sorted({d for by_depth in table.values() for d in by_depth})
        rows = [[depth, *(_cell(table[label].get(depth), grid[0] if grid else math.inf) for label in table)]
                for depth in depths]  # fmt: skip
        tables.append(
            Table(
                f"Maximal learning rate that {rule} (median over seeds; the true limit lies between it and the "
                "next rate of the grid)",
                ["depth", *(f"{label}" for label in table)],
                rows,
            )
        )

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for rule, style in (("learned", "-"), ("did not diverge", ":")):
            for label, by_depth in medians[rule].items():
                ax.plot(
                    list(by_depth),
                    [v if v > 0 else math.nan for v in by_depth.values()],
                    marker="o",
                    linestyle=style,
                    label=f"{label} ({rule})",
                )
        ax.set_yscale("log")
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("largest learning rate")
        ax.set_title("Maximal trainable learning rate against depth")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")

    return AnalysisResult(tables, [Figure("max_lr_vs_depth", draw)], values)


def _cell(lr: float | None, smallest: float) -> str:
    if lr == 0 and math.isfinite(smallest):
        return f"< {fmt(smallest)} (none passed)"
    return fmt(lr)
