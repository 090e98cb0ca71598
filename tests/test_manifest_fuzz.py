"""Property-based tests: malformed and adversarial manifests always end in a clean ManifestError.

Each example takes a valid manifest and mutates it (wrong types, negative sizes, empty or huge
axes, unicode names, duplicate studies, deeply nested junk, unknown keys), or is arbitrary bytes.
Loading must either succeed or raise ``ManifestError`` naming the file: never any other
exception, and never a store written.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnbench.cli import main
from bnbench.errors import ManifestError
from bnbench.registry import load_registry
from bnbench.session import open_session

REGISTRY = load_registry()
EXAMPLES = int(os.environ.get("BNBENCH_FUZZ_EXAMPLES", "300"))
"""Examples per property; raise it for a longer hunt (the closing-note figures used 20,000)."""

BASE: dict[str, Any] = {
    "harness": {"results": "r.sqlite", "device": "cpu"},
    "studies": [
        {
            "name": "tiny",
            "model": {"name": "mlp", "widths": [8]},
            "dataset": {"name": "synthetic", "noise": 0.15, "image_shape": [1, 4, 4], "train_size": 32},
            "normalizer": "batchnorm",
            "placement": ["all", "none"],
            "epochs": 1,
            "batch_size": 8,
            "seeds": [0],
            "optimizer": {"lr": [0.1, 0.01], "weight_decay": 0.0},
            "schedule": {"milestones": [0.5]},
        }
    ],
    "profiles": {"smoke": {"*": {"epochs": 1}}},
}


def toml_key(key: str) -> str:
    return json.dumps(key)


def toml_value(value: Any) -> str:
    """A TOML value (inline tables and arrays); strings use JSON escapes, which TOML accepts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(document: dict[str, Any]) -> str:
    return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in document.items()) + "\n"


scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["", "all", "batchnorm", "mlp", "ÿ̸̢💥", "../../etc/passwd", "none", "*"]),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside the document."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def set_at(document: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = value


def delete_at(document: Any, path: tuple) -> None:
    for part in path[:-1]:
        document = document[part]
    if isinstance(document, dict):
        del document[path[-1]]
    else:
        document.pop(path[-1])


@st.composite
def mutated_manifests(draw: st.DrawFn) -> str:
    document = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        targets = paths(document)
        if not targets:
            break
        path = draw(st.sampled_from(targets))
        action = draw(st.sampled_from(["junk", "delete", "negative", "empty", "huge", "unknown", "duplicate"]))
        if action == "junk":
            set_at(document, path, draw(junk))
        elif action == "delete":
            delete_at(document, path)
        elif action == "negative":
            set_at(document, path, draw(st.integers(-(10**9), -1)))
        elif action == "empty":
            set_at(document, path, draw(st.sampled_from([[], {}, ""])))
        elif action == "huge":
            set_at(document, path, list(range(draw(st.integers(400, 2000)))))
        elif action == "unknown":
            parent = document
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = draw(junk)
        elif action == "duplicate" and isinstance(document.get("studies"), list) and document["studies"]:
            document["studies"].append(json.loads(json.dumps(document["studies"][0])))
    return to_toml(document)


def check_loading(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            manifest = open_session(path, registry=REGISTRY).manifest
        except ManifestError as error:
            assert str(path) in str(error)
            assert error.detail
        else:
            assert len(manifest.runs()) >= 1
        assert not (Path(tmp) / "r.sqlite").exists()
        assert not (Path(tmp) / "results").exists()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_mutated_manifests_fail_cleanly(text: str) -> None:
    check_loading(text)


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    check_loading(data)


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(st.dictionaries(st.text(max_size=10), junk, max_size=5))
def test_arbitrary_documents_fail_cleanly(document: dict[str, Any]) -> None:
    check_loading(to_toml(document))


@settings(max_examples=25, deadline=None)
@given(mutated_manifests())
def test_the_cli_exits_2_with_one_line_and_no_traceback(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.toml"
        path.write_text(text)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["plan", str(path)])
        assert code in (0, 2)
        if code == 2:
            assert err.getvalue().startswith(f"bnbench: error: {path}")
            assert "Traceback" not in err.getvalue()


def with_change(change: dict[tuple, Any]) -> dict[str, Any]:
    document = json.loads(json.dumps(BASE))
    for path, value in change.items():
        set_at(document, path, value)
    return document


STUDY = ("studies", 0)
REJECTED_AT_PLAN_TIME = {
    "NUL byte in the results path": (("harness", "results"), "r\0.sqlite", "NUL byte"),
    "a 300-byte path component": (("harness", "results"), "a" * 300 + "/r.sqlite", "300 bytes long"),
    "a results path thousands of folders deep": (("harness", "results"), "a/" * 3000 + "r.sqlite", "bytes long"),
    "threads = 2**40": (("harness", "performance"), {"threads": 2**40}, "less than or equal to 4096"),
    "epochs = 10**26": ((*STUDY, "epochs"), 10**26, "less than or equal to 100000"),
    "epochs = true": ((*STUDY, "epochs"), True, "valid integer"),
    "epochs = '8'": ((*STUDY, "epochs"), "8", "valid integer"),
    "a seed of 2**64": ((*STUDY, "seeds"), [2**64], "seeds are integers from 0 to 4294967295"),
    "a width of 1e18": ((*STUDY, "model"), {"name": "mlp", "widths": [10**18]}, "at most 1,048,576 units"),
    "train_size of 1e18": (
        (*STUDY, "dataset"),
        {"name": "synthetic", "noise": 0.15, "image_shape": [1, 4, 4], "train_size": 10**18},
        "GiB of memory",
    ),
    "affine = 'no'": ((*STUDY, "normalizer"), {"name": "batchnorm", "affine": "no"}, "valid boolean"),
    "groups = '8'": ((*STUDY, "normalizer"), {"name": "groupnorm", "groups": "8"}, "valid integer"),
    "a claim on a study without analyses": (
        ("claims",),
        [{"claim": "c", "study": "tiny", "value": "nosuch", "at_least": 1}],
        "no analyses to report it",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED_AT_PLAN_TIME))
def test_values_that_cannot_work_are_refused_by_plan_in_one_line(case: str, tmp_path: Path) -> None:
    path_in_document, value, message = REJECTED_AT_PLAN_TIME[case]
    document = with_change({path_in_document: value})
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(to_toml(document))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["plan", str(manifest)])
    assert code == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bnbench: error: {manifest}") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == [manifest]  # nothing written


def test_toml_nested_thousands_deep_is_a_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(to_toml(BASE) + "x = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ManifestError, match="nested too deeply"):
        open_session(path, registry=REGISTRY)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is present")
def test_device_cuda_without_a_gpu_is_refused_before_a_store_is_created(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(to_toml(with_change({("harness", "device"): "cuda"})))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(path), "--no-report"])
    assert code == 2 and "no CUDA device is available" in err.getvalue()
    assert list(tmp_path.iterdir()) == [path]
