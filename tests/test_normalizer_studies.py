"""The bundled manifest's normalizer comparison: studies, sweeps, smoke overlays, shared runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnbench.session import open_session

MANIFEST = Path(__file__).parent.parent / "benchmarks.toml"
STUDIES = ["normalizers_resnet110_cifar10", "skipinit_resnet110_cifar10", "normalizers_mlp_mnist"]
RESNET_NORMALIZERS = ["batchnorm", "groupnorm", "layernorm", "instancenorm", "rmsnorm", "batchrenorm", "ws_groupnorm"]


def runs_by_study(registry, profile: str | None) -> dict[str, list]:
    manifest = open_session(MANIFEST, profile, registry=registry).manifest
    return {study.name: study.runs for study in manifest.studies}


@pytest.mark.parametrize(("profile", "counts"), [(None, (35, 5, 18)), ("smoke", (7, 1, 6))])
def test_every_built_in_normalizer_is_compared_with_batchnorm_on_both_models(registry, profile, counts):
    studies = runs_by_study(registry, profile)
    assert tuple(len(studies[name]) for name in STUDIES) == counts
    resnet, skipinit, mlp = (studies[name] for name in STUDIES)
    assert [r.spec.normalizer.name for r in resnet][:: len(resnet) // 7] == RESNET_NORMALIZERS
    assert {r.spec.normalizer.name for r in mlp} == set(RESNET_NORMALIZERS) - {"instancenorm"}  # conv sites only
    assert {r.spec.placement.name for r in resnet + mlp} == {"all"}
    assert {(r.spec.normalizer.name, r.spec.placement.name) for r in skipinit} == {("skipinit", "tagged")}
    assert skipinit[0].spec.placement.options == {"tags": ["residual_branch_end"], "match": "any"}
    assert {r.spec.optimizer.lr for r in resnet + skipinit + mlp} == {0.1}
    depth = 8 if profile else 110
    assert {r.spec.model.options["depth"] for r in resnet + skipinit} == {depth}
    if profile:
        assert {r.spec.seed for r in resnet + skipinit + mlp} == {0}
        assert {r.spec.dataset.name for r in resnet + skipinit + mlp} == {"synthetic"}
    else:
        assert {r.spec.dataset.name for r in resnet + skipinit} == {"cifar10"} and mlp[0].spec.dataset.name == "mnist"


def test_the_batchnorm_baselines_are_the_placement_studies_runs_at_lr_0_1(registry):
    studies = runs_by_study(registry, None)
    for comparison, placement_study, seeds in [
        ("normalizers_resnet110_cifar10", "resnet110_cifar10_lr", 5),
        ("normalizers_mlp_mnist", "mlp_mnist", 3),
    ]:
        baseline = {r.run_id for r in studies[comparison] if r.spec.normalizer.name == "batchnorm"}
        at_lr_0_1 = {
            r.run_id for r in studies[placement_study] if r.spec.placement.name == "all" and r.spec.optimizer.lr == 0.1
        }
        assert len(baseline) == seeds and baseline == at_lr_0_1  # trained once, reported in both studies
