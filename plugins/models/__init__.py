"""Built-in models: the CIFAR ResNet of He et al. 2016 and an MLP."""

from __future__ import annotations

from harness import hookimpl
from harness.hookspecs import Register
from plugins.models.mlp import MLPOptions, build_mlp
from plugins.models.resnet_cifar import ResNetOptions, build_resnet


@hookimpl
def bnbench_register_models(register: Register) -> None:
    register("resnet_cifar", build_resnet, options=ResNetOptions)
    register("mlp", build_mlp, options=MLPOptions)
