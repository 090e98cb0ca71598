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
``tagged``                the sites carrying the ``tags``    the sites carrying the ``tags``
                          (``residual_branch_end``: the      (none: the MLP's sites have no
                          3n last convs of the blocks)       tags)
========================  ================================  ===============================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from bnbench import NoOptions, Options, SiteInfo, hookimpl
from bnbench.hookspecs import Register


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


class TaggedOptions(Options):
    tags: list[str] = Field(
        min_length=1,
        examples=[["residual_branch_end"]],
        description="Site tags to select, e.g. residual_branch_end (ResNet: stem, residual_branch, "
        "residual_branch_end).",
    )
    match: Literal["any", "all"] = Field("any", description="any: a site carrying one of the tags; all: all of them.")

    @field_validator("tags")
    @classmethod
    def _non_empty(cls, tags: list[str]) -> list[str]:
        if any(not tag for tag in tags):
            raise ValueError("tags must be non-empty strings")
        return tags


def tagged(sites: Sequence[SiteInfo], options: TaggedOptions) -> list[str]:
    """The sites carrying the given tags (e.g. residual_branch_end, for SkipInit)."""
    wanted = set(options.tags)
    if options.match == "all":
        chosen = [s.name for s in sites if wanted <= s.tags]
    else:
        chosen = [s.name for s in sites if wanted & s.tags]
    if not chosen:  # a misspelt tag would otherwise normalize nothing, silently
        known = sorted(set().union(*(s.tags for s in sites)))
        raise ValueError(
            f"no site carries {'all' if options.match == 'all' else 'any'} of the tags {sorted(wanted)}; "
            f"this model's sites carry: {', '.join(known) or 'no tags'}"
        )
    return chosen


@hookimpl
def bnbench_register_placements(register: Register) -> None:
    register("all", all_hidden, default=True)
    register("final", final_only)
    register("all_and_final", all_and_final)
    register("none", nowhere)
    register("tagged", tagged, options=TaggedOptions)
