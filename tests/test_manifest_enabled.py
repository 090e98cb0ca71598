"""``enabled = false`` leaves a study out, so a profile can run a subset of a manifest."""

from __future__ import annotations

import pytest

from bnbench.errors import ManifestError
from bnbench.session import open_session

TWO_STUDIES = """
[harness]
results = "results.sqlite"
device = "cpu"
profile_notes = { quick = "quick scale" }

[[studies]]
name = "a"
model = { name = "mlp", widths = [4] }
dataset = { name = "synthetic", noise = 0.15, image_shape = [1, 4, 4], train_size = 32, test_size = 8 }
normalizer = "batchnorm"
placement = "all"
epochs = 1

[[studies]]
name = "b"
model = { name = "mlp", widths = [4] }
dataset = { name = "synthetic", noise = 0.15, image_shape = [1, 4, 4], train_size = 32, test_size = 8 }
normalizer = "batchnorm"
placement = "none"
epochs = 1
analyses = ["lr_sweep"]

[[claims]]
claim = "about b"
study = "b"
value = "x"
at_least = 0

[profiles.quick."*"]
enabled = false
[profiles.quick.a]
enabled = true
"""


def test_a_profile_can_disable_studies_and_their_claims(write_manifest, registry):
    path = write_manifest(TWO_STUDIES)
    full = open_session(path, registry=registry).manifest
    assert [s.name for s in full.studies] == ["a", "b"] and len(full.claims) == 1
    quick = open_session(path, "quick", registry=registry).manifest
    assert [s.name for s in quick.studies] == ["a"] and quick.claims == []
    assert quick.settings.profile_notes == {"quick": "quick scale"}
    assert full.studies[0].runs[0].run_id == quick.studies[0].runs[0].run_id  # `enabled` is not part of a run
    with pytest.raises(ManifestError, match=r"'b' is disabled .* in profile 'quick'"):
        open_session(path, "quick", registry=registry, studies=["b"])


def test_enabled_must_be_a_boolean_and_something_must_stay_enabled(write_manifest, registry):
    with pytest.raises(ManifestError, match=r"enabled.*true or false"):
        open_session(
            write_manifest(TWO_STUDIES.replace("enabled = false", 'enabled = "no"')), "quick", registry=registry
        )
    everything_off = TWO_STUDIES.replace("[profiles.quick.a]\nenabled = true\n", "")
    with pytest.raises(ManifestError, match="every study is disabled"):
        open_session(write_manifest(everything_off), "quick", registry=registry)


def test_a_profile_naming_one_plugin_replaces_a_swept_component(write_manifest, registry):
    text = TWO_STUDIES.replace('placement = "all"', 'placement = ["all", "none"]')
    text += '\n[profiles.one.a]\nplacement = "none"\n[profiles.opts.a]\nmodel = { widths = [8] }\n'
    path = write_manifest(text)
    (study, _) = open_session(path, "one", registry=registry).manifest.studies
    assert [r.spec.placement.name for r in study.runs] == ["none"]  # not ["none", "none"]
    swept = text.replace('model = { name = "mlp", widths = [4] }', 'model = [{ name = "mlp", widths = [4] }, "mlp"]', 1)
    (study, _) = open_session(write_manifest(swept), "opts", registry=registry).manifest.studies
    assert {tuple(r.spec.model.options["widths"]) for r in study.runs} == {(8,)}  # options merge into each value
