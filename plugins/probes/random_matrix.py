"""Random-matrix theory of initialization (Bjorck et al. 2018, section 4, Figure 7): the
singular-value spread of products of M random N×N matrices (and of a model's weight product)
against the closed-form Lyapunov exponents of real Ginibre products, accumulated by the QR
(Benettin) method. The theory, what is exact and what is a prediction: docs/studies.md,
"Reading 7".

The analysis reports, per initialization and for ``model``, Estimates over seeds (one run is
one seed, linear scale): ``condition_slope``, ``condition_slope_error`` (per seed |measured −
mu_1 + mu_N| / |mu_1 − mu_N|), ``exponent_error`` (per seed the largest |measured − closed-form|
exponent) and ``log10_condition`` (at the largest M).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from bnbench import Options
from bnbench.analysis import by_seed, fmt, group_runs, over_seeds, put
from bnbench.api import AnalysisResult, Estimate, Figure, ProbeContext, RunRecord, StudyResults, Table
from bnbench.plugins.probes.common import panel_grid, probe_runs

Init = Literal["gaussian", "kaiming_normal", "pytorch_default"]

ENTRY_VARIANCE: dict[str, float] = {"gaussian": 1.0, "kaiming_normal": 2.0, "pytorch_default": 1.0 / 3.0}
"""Entry variance × N of each initialization: N(0, 1/N); Kaiming normal N(0, 2/N) (resnet_cifar's
convolutions); U(−1/√N, 1/√N), PyTorch's default for ``nn.Linear`` (the MLP, ResNet's last layer)."""

GAUSSIAN = frozenset({"gaussian", "kaiming_normal"})
"""The initializations whose entries are Gaussian: the closed form is exact for their products."""

NON_GAUSSIAN = "Gaussian prediction for a non-Gaussian product"
"""How the tables label a closed form applied to a product it does not describe exactly."""


class RandomMatrixOptions(Options):
    size: int = Field(32, ge=2, description="N: the matrices are N×N.")
    factors: int = Field(50, ge=2, description="Largest number M of matrices multiplied.")
    samples: int = Field(64, ge=1, description="Independent products averaged per M.")
    inits: list[Init] = Field(
        default_factory=lambda: ["gaussian", "kaiming_normal", "pytorch_default"],
        description="Entry distributions: gaussian N(0,1/N) (the theory's), kaiming_normal N(0,2/N) "
        "(resnet_cifar's convs), pytorch_default U(±1/√N) (nn.Linear's default: the MLP).",
    )
    direct_svd_limit: float = Field(
        12.0,
        gt=0,
        description="Also take the SVD of the explicit product while its log10 condition number is below this.",
    )


def lyapunov_exponents(n: int, variance: float = 1.0) -> torch.Tensor:
    """Closed-form exponents mu_1 ≥ … ≥ mu_N of products of N×N matrices with entries
    N(0, variance/N)."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return 0.5 * (torch.special.digamma((n - i + 1) / 2) + math.log(2 / n) + math.log(variance))


def sample_matrices(init: str, n: int, samples: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``samples`` N×N matrices drawn from ``init``, in float64."""
    shape = (samples, n, n)
    if init == "pytorch_default":
        uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        return (2 * uniform - 1) / math.sqrt(n)
    normal = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return normal * math.sqrt(ENTRY_VARIANCE[init] / n)


def slope(ys: list[float], start: int = 0) -> float:
    """Least-squares slope of ``ys`` against M = 1, 2, … over ``ys[start:]``."""
    y = torch.tensor(ys[start:], dtype=torch.float64)
    x = torch.arange(start + 1, start + 1 + len(y), dtype=torch.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


class ProductSpectrum:
    """Log singular values of growing products A_M ⋯ A_1 (a batch of independent products)."""

    def __init__(self, n: int, batch: int, device: torch.device, direct_limit: float) -> None:
        self.q = torch.eye(n, dtype=torch.float64, device=device).expand(batch, n, n)
        self.log_r = torch.zeros(batch, n, dtype=torch.float64, device=device)
        self.product: torch.Tensor | None = self.q.clone()
        self.direct_limit = direct_limit * math.log(10)
        self.log_sv: list[list[float]] = []
        self.log_condition: list[float] = []
        self.log_condition_direct: list[float] = []
        self.diagonal_sums: list[list[float]] = []

    def multiply(self, matrices: torch.Tensor) -> None:
        """Append one factor per product and record the spectrum of the new products."""
        q, r = torch.linalg.qr(matrices @ self.q)
        self.q = q
        self.log_r = self.log_r + r.diagonal(dim1=-2, dim2=-1).abs().log()
        self.diagonal_sums.append(self.log_r.mean(0).tolist())
        ordered = self.log_r.sort(dim=1, descending=True).values
        self.log_sv.append(ordered.mean(0).tolist())
        self.log_condition.append(float((ordered[:, 0] - ordered[:, -1]).mean()))
        if self.product is not None:
            self.product = matrices @ self.product
            sv = torch.linalg.svdvals(self.product)
            log_cond = (sv[:, 0].log() - sv[:, -1].log()).mean()
            if math.isfinite(float(log_cond)) and float(log_cond) < self.direct_limit:
                self.log_condition_direct.append(float(log_cond))
            else:
                self.product = None


def _measure(spectrum: ProductSpectrum, predicted: torch.Tensor) -> dict[str, Any]:
    factors = len(spectrum.log_condition)
    measured = [slope([s[i] for s in spectrum.diagonal_sums]) for i in range(len(predicted))]
    return {
        "log_singular_values": spectrum.log_sv,
        "log_condition": spectrum.log_condition,
        "log_condition_direct": spectrum.log_condition_direct,
        "measured_exponents": measured,
        "predicted_exponents": predicted.tolist(),
        "condition_slope": slope(spectrum.log_condition, start=factors // 2) if factors > 1 else math.nan,
        "predicted_condition_slope": float(predicted[0] - predicted[-1]),
    }


def square_weights(model: nn.Module) -> list[torch.Tensor]:
    """The model's square ``nn.Linear`` weight matrices in order (its hidden-to-hidden layers)."""
    return [
        m.weight.detach().double()
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.in_features == m.out_features
    ]


def random_matrix(context: ProbeContext, options: RandomMatrixOptions) -> dict[str, Any]:
    """Singular-value spread of products of random matrices and of a net's weights (Bjorck Fig. 7).

    Compared with the closed-form Lyapunov exponents of Gaussian products.

    Per initialization and M = 1 … ``factors``: the mean log singular values and log condition
    number of the products (QR method; explicit SVD while it is accurate), the measured
    exponents (slope of each log singular value in M) beside the closed-form ones, and the slope
    of the log condition number in M (fitted over the second half) beside mu_1 − mu_N. When the
    study names a model: the same for the products of its first M square weight matrices, as
    the model initializes them (no normalizer is involved).
    """
    n = options.size
    measured: dict[str, Any] = {"size": n, "samples": options.samples, "inits": {}}
    for init in options.inits:
        spectrum = ProductSpectrum(n, options.samples, context.device, options.direct_svd_limit)
        for _ in range(options.factors):
            spectrum.multiply(sample_matrices(init, n, options.samples, context.generator, context.device))
        measured["inits"][init] = {
            "entry_variance": ENTRY_VARIANCE[init] / n,
            **_measure(spectrum, lyapunov_exponents(n, ENTRY_VARIANCE[init])),
        }
    measured["model"] = None
    if context.spec.model is not None:
        weights = square_weights(context.build_model())
        if len(weights) >= 2:
            width = weights[0].shape[0]
            if any(w.shape[0] != width for w in weights):
                raise ValueError("the model's square weight matrices differ in size; give its hidden layers one width")
            variance = float(torch.stack([w.pow(2).mean() for w in weights]).mean()) * width
            spectrum = ProductSpectrum(width, 1, context.device, options.direct_svd_limit)
            for w in weights:
                spectrum.multiply(w.unsqueeze(0))
            measured["model"] = {
                "name": context.spec.model.name,
                "layers": len(weights),
                "size": width,
                "entry_variance": variance / width,
                **_measure(spectrum, lyapunov_exponents(width, variance)),
            }
    return measured


STATISTICS = ("condition_slope", "condition_slope_error", "exponent_error", "log10_condition")


def _seed_statistics(data: dict[str, Any]) -> dict[str, float]:
    """One product's (one seed's) claimable statistics."""
    predicted = data["predicted_condition_slope"]
    errors = (abs(m - p) for m, p in zip(data["measured_exponents"], data["predicted_exponents"], strict=True))
    return {
        "condition_slope": data["condition_slope"],
        "condition_slope_error": abs(data["condition_slope"] - predicted) / abs(predicted),
        "exponent_error": max(errors),
        "log10_condition": data["log_condition"][-1] / math.log(10),
    }


def random_matrix_analysis(study: StudyResults, options: Options) -> AnalysisResult:
    """Measured against predicted spread of singular values of random products (Fig. 7).

    Per initialization (and ``model`` for the network's own weights), Estimates over seeds
    (linear scale): ``condition_slope.<init>`` (natural log of the condition number gained per
    factor), ``condition_slope_error.<init>`` (relative error against mu_1 − mu_N),
    ``exponent_error.<init>`` (largest |measured − predicted| Lyapunov exponent) and
    ``log10_condition.<init>`` (at the largest M); each error is taken per seed, then averaged.
    A study with several groups (e.g. sweeping ``probe.size``) suffixes every name with
    ``/<group>``. Rows where the closed form is not exact are labelled ``NON_GAUSSIAN``.
    """
    groups = group_runs(probe_runs(study))
    if not groups:
        return AnalysisResult()  # nothing measured yet: no table, no figure, claims "not measured"
    values: dict[str, float | Estimate] = {}
    rows = []
    curves: dict[str, dict[str, Any]] = {}
    for label, runs in groups.items():
        suffix = f"/{label}" if len(groups) > 1 else ""
        entries: dict[str, list[tuple[RunRecord, dict[str, Any]]]] = {}
        for run in runs:
            for init, data in run.measurements["inits"].items():
                entries.setdefault(init, []).append((run, data))
            if run.measurements.get("model"):
                entries.setdefault("model", []).append((run, run.measurements["model"]))
        for init, pairs in entries.items():
            seeds = by_seed((run.seed, _seed_statistics(data)) for run, data in pairs)
            estimates = {name: over_seeds(seeds.get(name, {}).values()) for name in STATISTICS}
            key = f"{init}{suffix}"
            for name, estimate in estimates.items():
                put(values, f"{name}.{key}", estimate)
            shown = {name: None if e is None else e.value for name, e in estimates.items()}
            data = pairs[0][1]
            rows.append(
                [
                    label,
                    init,
                    "exact (Gaussian entries)" if init in GAUSSIAN else NON_GAUSSIAN,
                    data.get("size", runs[0].measurements["size"]),
                    len(data["log_condition"]),
                    len(pairs),
                    fmt(shown["condition_slope"]),
                    fmt(data["predicted_condition_slope"]),
                    fmt(shown["condition_slope_error"]),
                    fmt(shown["exponent_error"]),
                    fmt(shown["log10_condition"]),
                ]
            )
            curves[f"{label}: {init}" if len(groups) > 1 else init] = data
    table = Table(
        "Products of random matrices: log condition number per factor, measured vs closed form (means over seeds)",
        [
            "configuration",
            "matrices",
            "closed form",
            "N",
            "max M",
            "seeds",
            "slope measured",
            "slope mu_1 − mu_N",
            "relative error",
            "max exponent error",
            "log10 cond at max M",
        ],
        rows,
    )
    figures = [
        Figure("singular_value_spread", lambda fig: _draw_spread(fig, curves)),
        Figure("lyapunov_exponents", lambda fig: _draw_exponents(fig, curves)),
    ]
    return AnalysisResult([table], figures, values)


def _draw_spread(fig: Any, curves: dict[str, dict[str, Any]]) -> None:
    ax = fig.add_subplot()
    for label, data in curves.items():
        ms = list(range(1, len(data["log_condition"]) + 1))
        line = ax.plot(
            ms, [v / math.log(10) for v in data["log_condition"]], marker=".", linestyle="none", label=f"{label} (QR)"
        )
        color = line[0].get_color()
        direct = data["log_condition_direct"]
        if direct:
            ax.plot(range(1, len(direct) + 1), [v / math.log(10) for v in direct], "o", mfc="none", color=color)
        offset = data["log_condition"][-1] - data["predicted_condition_slope"] * ms[-1]
        ax.plot(
            ms,
            [(offset + data["predicted_condition_slope"] * m) / math.log(10) for m in ms],
            "-",
            color=color,
            alpha=0.6,
        )
    ax.set_xlabel("number of factors M")
    ax.set_ylabel("log10 condition number  log10(σ_max / σ_min)")
    ax.set_title("Singular-value spread of random products (lines: slope mu_1 − mu_N; circles: SVD)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _draw_exponents(fig: Any, curves: dict[str, dict[str, Any]]) -> None:
    axes = panel_grid(fig, len(curves), columns=2)
    for ax, (label, data) in zip(axes, curves.items(), strict=True):
        index = range(1, len(data["predicted_exponents"]) + 1)
        ax.plot(index, data["predicted_exponents"], "-", color="k", label="closed form")
        ax.plot(index, data["measured_exponents"], ".", label="measured")
        ax.set_xlabel("index i")
        ax.set_ylabel("Lyapunov exponent mu_i")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
