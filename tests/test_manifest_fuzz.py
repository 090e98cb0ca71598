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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import ManifestError
from harness.manifest import load_manifest
from harness.registry import load_registry

REGISTRY = load_registry()
EXAMPLES = int(os.environ.get("BNBENCH_FUZZ_EXAMPLES", "300"))
"""Examples per property; raise it for a longer hunt (the closing-note figures used 20,000)."""

BASE: dict[str, Any] = {
    "harness": {"results": "r.sqlite", "device": "cpu"},
    "studies": [
        {
            "name": "tiny",
            "model": {"name": "mlp", "widths": [8]},
            "dataset": {"name": "synthetic", "image_shape": [1, 4, 4], "train_size": 32},
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
            manifest = load_manifest(path, registry=REGISTRY)
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
