"""Input that cannot be meant is refused before anything runs: a plugin module that registers
nothing, study names that would print terminal escapes or make unwritable file names, absurd
pool sizes; and a pool never starts more workers than there are runs."""

from __future__ import annotations

import pytest
from conftest import tiny_manifest

from bnbench.errors import ManifestError, PluginError
from bnbench.registry import load_registry
from bnbench.session import open_session
from bnbench.sweep import run_manifest


def test_a_plugin_module_that_registers_nothing_is_an_error():
    with pytest.raises(PluginError, match=r"plugin 'os' implements no bnbench hook"):
        load_registry(["os"])


@pytest.mark.parametrize("name", ["bad\\u001b[31mred", "x" * 101, "tab\\there"])
def test_study_names_must_be_printable_and_short(write_manifest, registry, name):
    text = tiny_manifest().replace('name = "tiny"', f'name = "{name}"')
    with pytest.raises(ManifestError, match="must be printable") as info:
        open_session(write_manifest(text), registry=registry)
    assert "\x1b" not in str(info.value)  # the error itself never prints the escape


def test_absurd_pool_sizes_are_refused_and_a_pool_larger_than_its_runs_runs_them(write_manifest, registry):
    absurd = tiny_manifest().replace('device = "cpu"', 'device = "cpu"\nexecutor = { name = "pool", workers = 100000 }')
    with pytest.raises(ManifestError, match="workers"):
        open_session(write_manifest(absurd), registry=registry)
    one_run = tiny_manifest(placement='"none"').replace(
        'device = "cpu"', 'device = "cpu"\nexecutor = { name = "pool", workers = 64 }\nperformance = { threads = 1 }'
    )
    manifest = open_session(write_manifest(one_run, "one.toml"), registry=registry).manifest
    assert run_manifest(manifest).statuses == {"done": 1}


def test_an_unknown_option_given_as_a_list_is_reported_not_swept(write_manifest, registry):
    # found by the fuzz tests: a key "." given a list made the sweep expansion raise KeyError
    text = tiny_manifest().replace("test_size = 64 }", 'test_size = 64, "." = [0] }')
    with pytest.raises(ManifestError, match="unknown field"):
        open_session(write_manifest(text), registry=registry)
    text = tiny_manifest().replace("weight_decay = 0.0", "weight_decay = 0.0\nnosuch = [1, 2]")
    with pytest.raises(ManifestError, match="nosuch"):
        open_session(write_manifest(text, "b.toml"), registry=registry)
