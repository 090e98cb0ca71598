"""Built-in models: the CIFAR ResNet of He et al. 2016 and an MLP."""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.models.mlp import MLPOptions, build_mlp
from bnbench.plugins.models.resnet_cifar import ResNetOptions, build_resnet


@hookimpl
def bnbench_register_models(register: Register) -> None:
    register("resnet_cifar", build_resnet, options=ResNetOptions)
    register("mlp", build_mlp, options=MLPOptions)
