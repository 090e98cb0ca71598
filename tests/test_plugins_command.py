"""``bnbench plugins``: kind, name, package and version, description, options with defaults, traits."""

from __future__ import annotations

import json

from bnbench import hookimpl
from bnbench.cli import main


def plugins(capsys, *args: str) -> str:
    assert main(["plugins", *args]) == 0
    return capsys.readouterr().out


def test_json_lists_every_component_with_its_provider_options_and_traits(capsys):
    listing = json.loads(plugins(capsys, "--json"))
    components = {(c["kind"], c["name"]): c for c in listing["components"]}
    assert listing["bnbench"] and listing["broken"] == {}
    batchnorm = components[("normalizer", "batchnorm")]
    assert batchnorm["package"] == "bnbench" and batchnorm["version"] == listing["bnbench"]
    assert batchnorm["description"].startswith("Batch normalization")
    eps = next(o for o in batchnorm["options"] if o["name"] == "eps")
    assert eps == {
        "name": "eps",
        "type": "float",
        "required": False,
        "default": 1e-5,
        "description": "Added to the batch variance for stability.",
    }
    assert batchnorm["traits"]["batch_dependent"] and batchnorm["traits"]["running_stats"]
    assert components[("normalizer", "instancenorm")]["traits"]["site_kinds"] == ["conv"]
    assert components[("normalizer", "ws_groupnorm")]["traits"]["needs_source"]
    tags = components[("placement", "tagged")]["options"][0]
    assert tags["name"] == "tags" and tags["required"] and tags["default"] is None
    widths = next(o for o in components[("model", "mlp")]["options"] if o["name"] == "widths")
    assert widths["default"] == [256, 256, 256] and widths["type"] == "list[int]"
    assert "traits" not in components[("model", "mlp")]


def test_json_respects_the_kind_filter(capsys):
    listing = json.loads(plugins(capsys, "--json", "--kind", "placement"))
    assert {c["kind"] for c in listing["components"]} == {"placement"}
    assert {"all", "final", "all_and_final", "none", "tagged"} <= {c["name"] for c in listing["components"]}


def test_tables_show_package_version_options_and_traits(capsys):
    out = plugins(capsys, "--kind", "normalizer", "--kind", "placement")
    assert "normalizers:" in out and "placements:" in out
    header = next(line for line in out.splitlines() if line.startswith("name "))
    assert header.split() == ["name", "package", "description", "options", "traits"]
    batchrenorm = next(line for line in out.splitlines() if line.startswith("batchrenorm "))
    assert "bnbench 0.1.0" in batchrenorm and "eps = 1e-05" in batchrenorm and "batch-dependent" in batchrenorm
    assert "rmax = 3.0" in out and "tags (required)" in out and "conv sites only" in out
    # every option's description, as --json gives it; traits computed from the options are marked so
    assert "eps = 1e-05: Added to the batch variance for stability." in out
    batchnorm = out.split("\nbatchnorm ")[1].split("\nbatchrenorm ")[0]
    assert "depends on the options;" in batchnorm and "depends on" not in out.split("\ngroupnorm ")[1].split("\n")[0]


def test_a_manifest_plugin_is_listed_by_module_name(tmp_path, capsys):
    (tmp_path / "local_norm.py").write_text(
        "from torch import nn\n"
        "from bnbench import hookimpl\n\n"
        "@hookimpl\n"
        "def bnbench_register_normalizers(register):\n"
        "    register('local', lambda n, k, o: nn.Identity(), description='A local identity.')\n"
    )
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '[harness]\nplugins = ["local_norm.py"]\n\n[[studies]]\nname = "s"\nmodel = "mlp"\n'
        'dataset = { name = "synthetic", noise = 0.15 }\n'
        'normalizer = "local"\nplacement = "all"\nepochs = 1\n'
    )
    listing = json.loads(plugins(capsys, "--json", "--kind", "normalizer", "--manifest", str(manifest)))
    local = next(c for c in listing["components"] if c["name"] == "local")
    assert local["package"] is None and local["plugin"].endswith("local_norm.py")
    assert local["description"] == "A local identity." and local["traits"]["site_kinds"] == ["conv", "fc"]


def test_broken_plugins_are_reported(capsys, monkeypatch):
    import bnbench.cli
    from bnbench.registry import load_registry

    class Broken:
        @hookimpl
        def bnbench_register_models(self, register):
            raise RuntimeError("boom")

    monkeypatch.setattr(bnbench.registry, "load_registry", lambda: load_registry(objects=[("broken", Broken())]))
    listing = json.loads(plugins(capsys, "--json", "--kind", "model"))
    assert "RuntimeError: boom" in listing["broken"]["broken"]
