"""Mistakes caught before training: a normalizer its model's sites refuse, a validation split or a
batch larger than the training set. ``plan`` and ``run`` exit 2 with one line naming the study and
field, and nothing is recorded: the datasets describe themselves (``describe=``) without loading."""

from __future__ import annotations

import pytest
from conftest import tiny_manifest

from bnbench import DataInfo, DatasetDescription, hookimpl
from bnbench.cli import main
from bnbench.errors import ManifestError
from bnbench.plan import check_runs
from bnbench.session import open_session

CASES = {
    "a conv-only normalizer on an MLP": (
        ('normalizer = "batchnorm"', 'normalizer = "instancenorm"'),
        "field 'normalizer': normalizer 'instancenorm' cannot go at site 'layers.2' of model 'mlp'",
    ),
    "a validation split as large as the training set": (
        ("batch_size = 32", "batch_size = 32\nvalidation_size = 128"),
        "field 'validation_size': validation_size 128 must be below the 128 training examples",
    ),
    "a batch larger than what validation leaves": (
        ("batch_size = 32", "batch_size = 100\nvalidation_size = 64"),
        "field 'batch_size': batch_size 100 is larger than the 64 training examples of dataset 'synthetic' left",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["plan", "run"])
def test_mistakes_are_caught_before_anything_is_recorded(case, command, write_manifest, tmp_path, capsys):
    (old, new), message = CASES[case]
    path = write_manifest(tiny_manifest(placement='"all"').replace(old, new))
    assert main([command, str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "study 'tiny'" in lines[0] and message in lines[0], lines
    assert not (tmp_path / "results.sqlite").exists()


def test_a_dataset_without_a_description_is_checked_when_it_loads(write_manifest):
    class Plain:
        @hookimpl
        def bnbench_register_datasets(self, register):
            from bnbench.plugins.datasets.synthetic import SyntheticOptions, make_synthetic

            register("plain", make_synthetic, options=SyntheticOptions)  # no describe=

    from bnbench.registry import load_registry

    registry = load_registry(objects=[("plain", Plain())])
    text = tiny_manifest(placement='"all"').replace('name = "synthetic"', 'name = "plain"')
    session = open_session(write_manifest(text.replace('normalizer = "batchnorm"', 'normalizer = "instancenorm"')),
                           registry=registry)  # fmt: skip
    check_runs(session.manifest.runs(), registry, "m.toml")  # nothing to check it against: no error
    described = tiny_manifest(placement='"all"').replace('normalizer = "batchnorm"', 'normalizer = "instancenorm"')
    with pytest.raises(ManifestError, match="cannot go at site"):
        session = open_session(write_manifest(described, "described.toml"), registry=registry)
        check_runs(session.manifest.runs(), registry, "described.toml")


def test_the_built_in_datasets_describe_themselves_as_they_load(registry):
    mnist = registry.get("dataset", "mnist")
    assert mnist.extras["describe"](mnist.options.model_validate({"train_size": 4000})) == DatasetDescription(
        DataInfo((1, 28, 28), 10), 4000
    )
    cifar = registry.get("dataset", "cifar10")
    assert cifar.extras["describe"](cifar.options.model_validate({})) == DatasetDescription(
        DataInfo((3, 32, 32), 10), 50_000
    )
