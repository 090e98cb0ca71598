"""Built-in normalizers: ``batchnorm`` and ``none``."""

from __future__ import annotations

from harness import hookimpl
from harness.hookspecs import Register
from plugins.normalizers.batchnorm import BatchNormOptions, batchnorm
from plugins.normalizers.identity import identity


@hookimpl
def bnbench_register_normalizers(register: Register) -> None:
    register("batchnorm", batchnorm, options=BatchNormOptions)
    register("none", identity)
