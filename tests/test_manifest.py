"""Manifest validation, profile overlays, sweep expansion and run ids."""

from __future__ import annotations

import pytest
from conftest import tiny_manifest

from bnbench.errors import ManifestError
from bnbench.manifest import overlay
from bnbench.session import open_session
from bnbench.spec import Component, RunSpec


def error_of(path, registry, profile=None) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        open_session(path, profile, registry=registry)
    return info.value


def test_expands_cartesian_product_of_axes(write_manifest, registry):
    path = write_manifest(tiny_manifest(placement='["all", "final", "none"]', lr="[0.1, 0.01]", seeds="[0, 1]"))
    manifest = open_session(path, registry=registry).manifest
    (study,) = manifest.studies
    assert study.axes == ["placement", "optimizer.lr"]
    assert len(study.runs) == 3 * 2 * 2
    combos = {(r.axes["placement"], r.axes["optimizer.lr"], r.spec.seed) for r in study.runs}
    assert len(combos) == 12
    assert {r.spec.placement.name for r in study.runs} == {"all", "final", "none"}
    assert len({r.run_id for r in study.runs}) == 12


def test_list_typed_fields_are_values_and_lists_of_lists_sweep(write_manifest, registry):
    text = (
        tiny_manifest(placement='"all"').replace("widths = [16]", "widths = [[16], [8, 8]]")
        + "\n[studies.schedule]\nmilestones = [0.3, 0.6]\n"
    )
    manifest = open_session(write_manifest(text), registry=registry).manifest
    (study,) = manifest.studies
    assert study.axes == ["model.widths"]
    assert [r.spec.model.options["widths"] for r in study.runs] == [[16], [8, 8]]
    assert all(r.spec.schedule.milestones == [0.3, 0.6] for r in study.runs)


def test_component_axis_with_options(write_manifest, registry):
    text = tiny_manifest(placement='"all"').replace(
        'normalizer = "batchnorm"', 'normalizer = ["none", { name = "batchnorm", eps = 0.001 }]'
    )
    (study,) = open_session(write_manifest(text), registry=registry).manifest.studies
    assert [r.axes["normalizer"] for r in study.runs] == ["none", "batchnorm(eps=0.001)"]
    assert study.runs[1].spec.normalizer.options["eps"] == 0.001
    assert study.runs[1].spec.normalizer.options["momentum"] == 0.1  # defaults filled in


def test_run_id_is_stable_and_ignores_how_defaults_are_written(write_manifest, registry):
    a = open_session(write_manifest(tiny_manifest(placement='"all"'), "a.toml"), registry=registry).manifest
    explicit = tiny_manifest(placement='"all"').replace(
        'normalizer = "batchnorm"', 'normalizer = { name = "batchnorm", eps = 1e-5, momentum = 0.1 }'
    )
    b = open_session(write_manifest(explicit, "b.toml"), registry=registry).manifest
    assert a.runs()[0].run_id == b.runs()[0].run_id
    # The id is a pure function of the resolved spec: pinned so that a change is deliberate.
    spec = RunSpec(
        model=Component(name="mlp", options={"widths": [16]}),
        dataset=Component(name="synthetic"),
        normalizer=Component(name="none"),
        placement=Component(name="none"),
        epochs=1,
        metrics=[Component(name=n) for n in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")],
    )
    assert spec.run_id() == RunSpec.model_validate_json(spec.canonical_json()).run_id()
    assert spec.run_id() == "0bc5d213b126972c"
    assert spec.model_copy(update={"seed": 1}).run_id() != spec.run_id()


def test_profile_overlays_all_studies_then_one(write_manifest, registry):
    text = (
        tiny_manifest(placement='"all"')
        + """
[profiles.quick."*"]
epochs = 1
[profiles.quick.tiny]
model = { widths = [4] }
dataset = { name = "synthetic", noise = 0.15, image_shape = [1, 4, 4], train_size = 64 }
"""
    )
    path = write_manifest(text)
    base = open_session(path, registry=registry).manifest.runs()[0].spec
    quick = open_session(path, "quick", registry=registry).manifest.runs()[0].spec
    assert base.epochs == 2 and quick.epochs == 1
    assert quick.model.options["widths"] == [4] and quick.model.name == "mlp"
    # The same plugin name merges options: the study's num_classes stays.
    assert quick.dataset.options["image_shape"] == [1, 4, 4]
    assert quick.dataset.options["num_classes"] == 4


def test_overlay_replaces_a_component_of_another_plugin_and_merges_tables():
    study = {
        "dataset": {"name": "cifar10", "root": "data"},
        "normalizer": ["batchnorm", "none"],
        "optimizer": {"lr": 0.1, "momentum": 0.9},
    }
    merged = overlay(
        study,
        {
            "dataset": {"name": "synthetic", "noise": 0.15, "train_size": 8},
            "normalizer": {"eps": 1.0},
            "optimizer": {"lr": 1},
        },
    )
    assert merged["dataset"] == {"name": "synthetic", "noise": 0.15, "train_size": 8}
    assert merged["normalizer"] == [{"name": "batchnorm", "eps": 1.0}, {"name": "none", "eps": 1.0}]
    assert merged["optimizer"] == {"lr": 1, "momentum": 0.9}
    assert study["dataset"] == {"name": "cifar10", "root": "data"}  # the input is not modified


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        (("batch_size = 32", 'batch_size = "big"'), "batch_size", "valid integer"),
        (("batch_size = 32", "batch_size = -3"), "batch_size", "greater than 0"),
        (("epochs = 2", "epochs = 2\nepohcs = 3"), "epohcs", "Did you mean 'epochs'"),
        (('placement = "all"', 'placement = "finale"'), "placement", "Did you mean 'final'"),
        (('normalizer = "batchnorm"', 'normalizer = "batchnrom"'), "normalizer", "registered normalizers: batchnorm"),
        (("widths = [16]", "widths = [16], depth = 3"), "model.depth", "allowed fields: activation, bias, widths"),
        (("widths = [16]", "widths = [-1]"), "model.widths", "positive"),
        (("weight_decay = 0.0", "weight_decay = 0.0\nmomentum = 1.5"), "optimizer.momentum", "less than 1"),
        (("lr = 0.05", "lr = []"), "optimizer.lr", "empty list"),
        (("epochs = 2", "epochs = 2\nsteps = 5"), None, "exactly one of epochs and steps"),
        (("seeds = [0]", "seeds = [0, 0]"), "seeds", "repeat"),
    ],
)
def test_bad_fields_name_file_study_field_and_allowed(write_manifest, registry, edit, field, needle):
    path = write_manifest(tiny_manifest(placement='"all"').replace(*edit))
    error = error_of(path, registry)
    assert error.file == str(path)
    assert error.study == "tiny"
    assert error.field == field
    assert needle in str(error)


def test_unknown_top_level_and_harness_fields(write_manifest, registry):
    error = error_of(write_manifest(tiny_manifest() + "\n[harnes]\nx = 1\n"), registry)
    assert error.field == "harnes" and "allowed fields: checks, claims, harness, profiles, studies" in str(error)
    error = error_of(write_manifest(tiny_manifest().replace('device = "cpu"', 'device = "tpu"')), registry)
    assert error.field == "harness.device" and "'auto', 'cpu' or 'cuda'" in str(error)


def test_not_toml_and_missing_file(tmp_path, registry):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert "not UTF-8" in str(error_of(bad, registry))
    bad.write_text("[[studies]\nname = ")
    assert "invalid TOML" in str(error_of(bad, registry))
    assert "file not found" in str(error_of(tmp_path / "nope.toml", registry))


def test_unknown_profile_and_profile_for_unknown_study(write_manifest, registry):
    path = write_manifest(tiny_manifest() + "\n[profiles.smoke.tinny]\nepochs = 1\n")
    assert "unknown profile 'smok'" in str(error_of(path, registry, "smok"))
    assert "Did you mean 'smoke'" in str(error_of(path, registry, "smok"))
    error = error_of(path, registry, "smoke")
    assert "study 'tinny', which does not exist" in str(error) and "Did you mean 'tiny'" in str(error)


def test_duplicate_study_names(write_manifest, registry):
    study = tiny_manifest().split("\n", 3)[3]
    error = error_of(write_manifest(tiny_manifest() + study), registry)
    assert error.study == "tiny" and "unique" in str(error)


def test_bundled_manifest_expands_with_and_without_smoke(registry):
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks.toml"
    full = open_session(path, registry=registry).manifest
    smoke = open_session(path, "smoke", registry=registry).manifest
    names = [s.name for s in full.studies]
    assert names[:2] == ["resnet110_cifar10_lr", "mlp_mnist"]  # the placement studies, then the others
    resnet = full.studies[0].runs[0].spec
    assert resnet.model.options["depth"] == 110 and resnet.dataset.name == "cifar10"
    assert resnet.epochs == 164 and resnet.batch_size == 128 and resnet.optimizer.weight_decay == 1e-4
    placement_studies = set(names[:2])
    assert {r.spec.placement.name for r in full.runs() if r.study in placement_studies} == {"all", "final", "none"}
    assert all(r.spec.dataset.name == "synthetic" for r in smoke.runs())
    assert {r.spec.placement.name for r in smoke.runs() if r.study in placement_studies} == {"all", "final", "none"}
    probes = {"resnet110_loss_landscape", "resnet110_activations", "resnet110_gradients", "resnet110_class_bias"}
    assert probes | {"random_matrix", "resnet_max_lr"} <= set(names)
    for study in full.studies:  # the probe studies measure ResNet-110 on CIFAR-10 at batch 128
        if study.name in probes:
            spec = study.runs[0].spec
            assert spec.model.options["depth"] == 110 and spec.dataset.name == "cifar10"
            assert spec.probe.options["batch_size"] == 128


def test_runtime_options_reach_the_plugin_but_stay_out_of_run_ids(write_manifest, registry):
    synthetic = tiny_manifest().split("dataset = ")[1].split("\n")[0]
    plain = open_session(
        write_manifest(tiny_manifest().replace(synthetic, '{ name = "mnist" }')), registry=registry
    ).manifest
    streamed = open_session(
        write_manifest(
            tiny_manifest().replace(synthetic, '{ name = "mnist", storage = "stream", loader_workers = 2 }'), "s.toml"
        ),
        registry=registry,
    ).manifest
    assert [r.run_id for r in plain.runs()] == [r.run_id for r in streamed.runs()]
    dataset = streamed.runs()[0].spec.dataset
    assert dataset.runtime == {"download": False, "storage": "stream", "loader_workers": 2}
    assert dataset.all_options["loader_workers"] == 2 and "loader_workers" not in dataset.options
    assert "loader_workers" not in streamed.runs()[0].spec.canonical_json()
    assert plain.runs()[0].spec.dataset.runtime == {"download": False, "storage": "memory", "loader_workers": 0}


def test_the_default_metrics_and_executor_are_those_plugins_declare(write_manifest, registry):
    manifest = open_session(write_manifest(tiny_manifest()), registry=registry).manifest
    assert [m.name for m in manifest.runs()[0].spec.metrics] == registry.defaults("metric")
    assert registry.defaults("metric") == ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    assert manifest.executor.name == registry.defaults("executor")[0] == "local"


def test_a_second_default_executor_makes_the_manifest_name_one(write_manifest):
    from bnbench import hookimpl
    from bnbench.registry import load_registry

    class Elsewhere:
        @hookimpl
        def bnbench_register_executors(self, register):
            register("elsewhere", lambda options: None, default=True)

    registry = load_registry(objects=[("elsewhere", Elsewhere())])
    with pytest.raises(ManifestError, match=r"set \[harness\] executor: .* 2 defaults \(local, elsewhere\)"):
        open_session(write_manifest(tiny_manifest()), registry=registry)
    named = tiny_manifest().replace('device = "cpu"\n', 'device = "cpu"\nexecutor = "elsewhere"\n')
    assert open_session(write_manifest(named), registry=registry).manifest.executor.name == "elsewhere"
