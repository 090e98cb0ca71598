"""``bnbench new-plugin``: a normalizer package skeleton that installs and passes the contract kit."""

from __future__ import annotations

import importlib.util
import tomllib

from bnbench.cli import main
from bnbench.registry import load_registry
from bnbench.testing import check_normalizer


def test_new_plugin_writes_a_package_that_passes_the_contract_kit(tmp_path, capsys):
    assert main(["new-plugin", "my-norm", "--directory", str(tmp_path)]) == 0
    root = tmp_path / "my-norm"
    assert "pip install -e" in capsys.readouterr().out
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "my-norm"
    assert pyproject["project"]["entry-points"]["bnbench"] == {"my_norm": "my_norm"}
    assert 'normalizer_checks("my_norm"' in (root / "tests" / "test_my_norm_contract.py").read_text()

    spec = importlib.util.spec_from_file_location("my_norm", root / "my_norm" / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = load_registry(objects=[("my_norm", module)])
    assert registry.get("normalizer", "my_norm").description.startswith("My norm: a per-channel scale and shift")
    small = {"resnet_cifar": {"depth": 8}, "mlp": {"widths": [16, 8]}}
    results = check_normalizer("my_norm", registry=registry, device="cpu", model_options=small)
    # nothing skipped but the pairings where the placement selects no site of the model (tags on an MLP),
    # and the activation check of a normalizer that includes none
    expected = ("no site carries", "traits.includes_activation is False")
    assert not [r for r in results if r.status == "skipped" and not any(e in r.detail for e in expected)]


def test_new_plugin_refuses_a_bad_name_and_an_existing_directory(tmp_path, capsys):
    assert main(["new-plugin", "9-lives", "--directory", str(tmp_path)]) == 1
    assert "must start with a letter" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["new-plugin", "taken", "--directory", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert list((tmp_path / "taken").iterdir()) == []
