"""Built-in datasets: CIFAR-10 and MNIST through torchvision, and a synthetic image set."""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.datasets.cifar10 import Cifar10Options, describe_cifar10, load_cifar10, prepare_cifar10
from bnbench.plugins.datasets.mnist import MnistOptions, describe_mnist, load_mnist, prepare_mnist
from bnbench.plugins.datasets.synthetic import SyntheticOptions, describe_synthetic, make_synthetic


@hookimpl
def bnbench_register_datasets(register: Register) -> None:
    register("cifar10", load_cifar10, options=Cifar10Options, describe=describe_cifar10, prepare=prepare_cifar10)
    register("mnist", load_mnist, options=MnistOptions, describe=describe_mnist, prepare=prepare_mnist)
    register("synthetic", make_synthetic, options=SyntheticOptions, describe=describe_synthetic, default=True)
