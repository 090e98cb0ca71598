"""Built-in placements: which of a model's normalization sites receive the normalizer.

Sites (see each model's docstring): ``hidden`` sites follow intermediate layers (every
convolution of a CIFAR ResNet, every hidden linear layer of the MLP); the one ``output``
site sits on the logits, before the softmax.

========================  ================================  ===============================
placement                 CIFAR ResNet-(6n+2)               MLP with k hidden layers
========================  ================================  ===============================
``all``                   the 6n+1 conv sites (standard BN)  the k hidden sites
``final``                 the logits site only               the logits site only
``all_and_final``         6n+1 conv sites + logits site      k hidden sites + logits site
``none``                  nothing                            nothing
========================  ================================  ===============================
"""

from __future__ import annotations

from collections.abc import Sequence

from harness import NoOptions, SiteInfo, hookimpl
from harness.hookspecs import Register


def all_hidden(sites: Sequence[SiteInfo], options: NoOptions) -> list[str]:
    """Every hidden site (after each conv / hidden linear layer): the standard BN network."""
    return [s.name for s in sites if s.role == "hidden"]


def final_only(sites: Sequence[SiteInfo], options: NoOptions) -> list[str]:
    """Only the output site: the logits are normalized before the softmax."""
    return [s.name for s in sites if s.role == "output"]


def all_and_final(sites: Sequence[SiteInfo], options: NoOptions) -> list[str]:
    """Every site, hidden and output."""
    return [s.name for s in sites]


def nowhere(sites: Sequence[SiteInfo], options: NoOptions) -> list[str]:
    """No site: the unnormalized network."""
    return []


@hookimpl
def bnbench_register_placements(register: Register) -> None:
    register("all", all_hidden)
    register("final", final_only)
    register("all_and_final", all_and_final)
    register("none", nowhere)
