"""Built-in normalizers: batch norm and its alternatives, each registered with its traits.

``batchnorm``, ``none``, ``groupnorm``, ``layernorm``, ``instancenorm`` (conv sites only),
``rmsnorm``, ``batchrenorm``, ``ws_groupnorm`` (weight standardization + group norm; needs the
site's source layer) and ``skipinit`` (normalizer-free residual networks, placed at
``residual_branch_end`` sites).
"""

from __future__ import annotations

from bnbench import NormalizerTraits, hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.normalizers.batchnorm import BatchNormOptions, batchnorm, batchnorm_traits
from bnbench.plugins.normalizers.batchrenorm import BATCHRENORM_TRAITS, BatchRenormOptions, batchrenorm
from bnbench.plugins.normalizers.groupnorm import GroupNormOptions, LayerNormOptions, groupnorm, layernorm
from bnbench.plugins.normalizers.identity import identity
from bnbench.plugins.normalizers.instancenorm import InstanceNormOptions, instancenorm, instancenorm_traits
from bnbench.plugins.normalizers.rmsnorm import RMSNormOptions, rmsnorm
from bnbench.plugins.normalizers.skipinit import SkipInitOptions, skipinit
from bnbench.plugins.normalizers.weight_standardization import WS_GROUPNORM_TRAITS, WSGroupNormOptions, ws_groupnorm


@hookimpl
def bnbench_register_normalizers(register: Register) -> None:
    register("batchnorm", batchnorm, options=BatchNormOptions, traits=batchnorm_traits, default=True)
    register("none", identity, traits=NormalizerTraits())
    register("groupnorm", groupnorm, options=GroupNormOptions, traits=NormalizerTraits())
    register("layernorm", layernorm, options=LayerNormOptions, traits=NormalizerTraits())
    register("instancenorm", instancenorm, options=InstanceNormOptions, traits=instancenorm_traits)
    register("rmsnorm", rmsnorm, options=RMSNormOptions, traits=NormalizerTraits())
    register("batchrenorm", batchrenorm, options=BatchRenormOptions, traits=BATCHRENORM_TRAITS)
    register("ws_groupnorm", ws_groupnorm, options=WSGroupNormOptions, traits=WS_GROUPNORM_TRAITS)
    register("skipinit", skipinit, options=SkipInitOptions, traits=NormalizerTraits())
