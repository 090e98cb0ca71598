"""Modules of one architecture stacked for ``torch.func.vmap``, each still an ordinary module.

``stack_module_state`` copies the modules' parameters and buffers into stacked tensors (one
slice per module); ``StackedModules`` then points every module's own parameters, gradients and
buffers at its slice. One batched forward and backward (``forward``) trains them all, while each
module keeps working as itself: its own ``torch.optim`` optimizer steps its slice, its
``state_dict`` and metrics read it. Packed runs (``bnbench.packed_training``) and probes that
train several copies of a model at once (the max-lr probe) use it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class StackedModules:
    """``modules`` (one architecture) with their parameters and buffers stacked, slice ``i``
    being module ``i``'s own. ``forward(x)`` runs all of them at once: ``x`` holds one batch per
    module (``shared_input=False``) or one batch for all."""

    def __init__(self, modules: Sequence[nn.Module], *, shared_input: bool = False) -> None:
        self.modules = list(modules)
        self.base = copy.deepcopy(self.modules[0]).train()
        self.params, self.buffers = stack_module_state(self.modules)
        for tensor in self.params.values():
            tensor.grad = torch.zeros_like(tensor)
        self._storage = {name: self._grad(name).data_ptr() for name in self.params}
        for index, module in enumerate(self.modules):
            for name, parameter in module.named_parameters():
                parameter.data = self.params[name].detach()[index]
                parameter.grad = self._grad(name)[index]
            for name, _ in list(module.named_buffers()):
                owner, _, attribute = name.rpartition(".")
                module.get_submodule(owner)._buffers[attribute] = self.buffers[name][index]

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._forward = vmap(one, in_dims=(0, 0, None if shared_input else 0))

    def forward(self, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Every module's output, stacked; ``buffers`` (e.g. copies) in place of the stacked ones."""
        return self._forward(self.params, self.buffers if buffers is None else buffers, x)

    def zero_grad(self) -> None:
        """Zero the stacked gradients in place (the modules' gradients are views of them)."""
        for name in self.params:
            self._grad(name).zero_()

    def repoint_gradients(self) -> None:
        """Backward accumulates into the stacked gradients in place, so the modules' gradients
        stay current; should autograd ever have replaced one, point the modules at the new one."""
        for name in self.params:
            grad = self._grad(name)
            if grad.data_ptr() != self._storage[name]:
                self._storage[name] = grad.data_ptr()
                for index, module in enumerate(self.modules):
                    module.get_parameter(name).grad = grad[index]

    def _grad(self, name: str) -> torch.Tensor:
        grad = self.params[name].grad
        assert grad is not None
        return grad
