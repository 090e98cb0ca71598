"""``bnbench new-plugin NAME``: the skeleton of a normalizer plugin package, ready to install and test.

The skeleton registers a working normalizer (a per-channel scale and shift, to be replaced by
the real normalization) through the ``bnbench`` entry-point group and tests it with the
contract kit, so it passes from the first ``pytest``. See docs/writing-plugins.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from bnbench.errors import BnbenchError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.1.0"
description = "A bnbench normalizer plugin"
requires-python = ">=3.11"
# Not "bnbench": install this package into the environment bnbench runs in (pip install -e .).
# bnbench is installed from its source checkout, not from the package index, so a dependency on
# that name could be satisfied by somebody else's upload.
dependencies = ["torch>=2.4", "pydantic>=2.6,<3"]

[project.optional-dependencies]
test = ["pytest>=8"]

# bnbench finds the plugin through this entry-point group: name = the module with the hooks.
[project.entry-points.bnbench]
{module} = "{module}"

[tool.setuptools]
packages = ["{module}"]
"""

MODULE = '''\
"""The {name} normalizer for bnbench (replace this line with what it is, and its paper)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bnbench import NormalizerTraits, Options, SiteKind, hookimpl
from bnbench.hookspecs import Register


class {options}(Options):
    """What a manifest may set beside ``name = "{name}"``; unknown keys are errors."""

    eps: float = Field(1e-5, gt=0, description="Added to the variance for stability.")


class {cls}(nn.Module):
    """Receives ``(N, C, H, W)`` at conv sites and ``(N, C)`` at fc sites; returns the same shape and dtype."""

    def __init__(self, num_features: int, kind: SiteKind, options: {options}) -> None:
        super().__init__()
        self.eps = options.eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.dim() - 2)))
        # Your normalization goes here; then update the traits below to say what it is.
        return x * self.weight.view(shape) + self.bias.view(shape)


def {name}(num_features: int, kind: SiteKind, options: {options}) -> nn.Module:
    """{title}: a per-channel scale and shift, for now (the first line is the description bnbench shows)."""
    return {cls}(num_features, kind, options)


@hookimpl
def bnbench_register_normalizers(register: Register) -> None:
    register("{name}", {name}, options={options}, traits=NormalizerTraits())
'''

TEST = '''\
"""{name} against bnbench's contract kit: one test per check and site."""

import pytest

from bnbench.testing import normalizer_checks


@pytest.mark.parametrize("check", normalizer_checks("{name}"), ids=str)
def test_{name}_meets_the_contract(check):
    check()
'''

README = """\
# {distribution}

A bnbench normalizer plugin: `normalizer = "{name}"` in a manifest.

```bash
pip install -e .              # into the environment bnbench runs in
bnbench plugins --kind normalizer
python -m pytest tests        # bnbench's contract kit
```
"""

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def new_plugin(name: str, directory: Path) -> list[Path]:
    """Write the package ``name`` (a distribution name, e.g. ``my-norm``) under ``directory``.

    The module and the normalizer are named ``name`` in snake case. Returns the files written;
    refuses a name that is not one and a package directory that exists.
    """
    if not NAME.match(name):
        raise BnbenchError(f"plugin name {name!r} must start with a letter and hold only letters, digits, - and _")
    module = name.replace("-", "_").lower()
    root = directory / name
    if root.exists():
        raise BnbenchError(f"{root} already exists; choose another name or directory")
    words = module.split("_")
    values = {
        "distribution": name,
        "module": module,
        "name": module,
        "title": " ".join(words).capitalize(),
        "cls": "".join(word.capitalize() for word in words),
        "options": "".join(word.capitalize() for word in words) + "Options",
    }
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / module / "__init__.py": MODULE,
        root / "tests" / f"test_{module}_contract.py": TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return list(files)


__all__ = ["new_plugin"]
