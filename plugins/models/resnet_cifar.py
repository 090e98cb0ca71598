"""The CIFAR ResNet of He et al. 2016 ("Deep Residual Learning", section 4.2).

Depth 6n+2: a 3×3 stem convolution, three stages of n basic blocks with widths 16/32/64
(stride 2 at the start of stages 2 and 3), global average pooling and one linear layer.
Option-A shortcuts (parameter-free: subsample and zero-pad the channels). ResNet-110 is
n = 18 (1.7M parameters).

Normalization sites: one ``conv`` site after every convolution, before its ReLU or the
residual addition (6n+1 sites: the stem, tagged ``stem``, and two per block, tagged
``residual_branch``; the second also ``residual_branch_end``), and one ``fc`` site with
role ``output`` on the logits. Each site names the layer feeding it as its ``source``; the
sites a ReLU follows directly (the stem's, each block's first) are ``activated``: a normalizer
that includes its activation replaces that ReLU.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from bnbench import DataInfo, NormSite, Options


class ResNetOptions(Options):
    depth: int = Field(110, examples=[8], description="6n+2: 20, 32, 44, 56, 110, ... (8 for smoke tests).")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], description="Channels of the three stages.")
    shortcut: Literal["A", "B"] = Field(
        "A", description="A: zero-padded identity (He et al. on CIFAR); B: 1×1 conv projection."
    )
    init: Literal["kaiming_normal", "kaiming_normal_fan_in", "xavier_normal", "pytorch_default", "depth_scaled"] = (
        Field(
            "kaiming_normal",
            description="Convolution initialization. kaiming_normal: N(0, 2/fan_out), He et al.'s (with BN); "
            "kaiming_normal_fan_in: N(0, 2/fan_in); xavier_normal: N(0, 2/(fan_in+fan_out)); pytorch_default: "
            "U(±1/sqrt(fan_in)), PyTorch's (variance 1/(3 fan_in)); depth_scaled: kaiming_normal_fan_in times the gain "
            "g = ((2^(1/L) - 1) / 2)^(1/4) for L residual blocks, which bounds the residual stream's growth over the "
            "whole net at 2x (each block multiplies its variance by about 1 + 2 g^4), derived from the depth, not "
            "tuned on any outcome. Without normalization the residual stream's "
            "variance grows per block by about 1 + 2·gain⁴ (fan-in kaiming): kaiming (x3) and xavier (x1.5) make "
            "ResNet-110's first loss 1e3-1e9; docs/studies.md has the measurements.",
        )
    )
    init_gain: float = Field(
        1.0,
        gt=0,
        description="Multiplies the convolution weights after initialization (the std of the init). The bundled "
        "Bjorck study's unnormalized ResNet-110 uses kaiming_normal_fan_in with 0.6 (docs/studies.md).",
    )
    conv_bias: bool = Field(False, description="Give convolutions a bias term.")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_two(cls, depth: int) -> int:
        if depth < 8 or (depth - 2) % 6 or depth > 10_000:
            raise ValueError("depth must be 6n+2 with 1 <= n <= 1666: 8, 20, 32, 44, 56, 110, ...")
        return depth

    @field_validator("widths")
    @classmethod
    def _three_positive(cls, widths: list[int]) -> list[int]:
        if len(widths) != 3 or any(not 0 < w <= 2**16 for w in widths):
            raise ValueError("widths needs three channel counts from 1 to 65536, e.g. [16, 32, 64]")
        return widths


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.site1 = NormSite(cout, "conv", tags=("residual_branch",), source=self.conv1, activated=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=bias)
        self.site2 = NormSite(cout, "conv", tags=("residual_branch", "residual_branch_end"), source=self.conv2)
        self.project: nn.Module | None = None
        self.pad = 0
        self.stride = stride
        if stride != 1 or cin != cout:
            if shortcut == "B":
                self.project = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            else:
                self.pad = cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.site1.activate(self.site1(self.conv1(x)), F.relu)
        out = self.site2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, options: ResNetOptions, data: DataInfo) -> None:
        super().__init__()
        n = (options.depth - 2) // 6
        w1, w2, w3 = options.widths
        channels = data.input_shape[0]
        self.stem = nn.Conv2d(channels, w1, 3, padding=1, bias=options.conv_bias)
        self.stem_site = NormSite(w1, "conv", tags=("stem",), source=self.stem, activated=True)
        stages = []
        cin = w1
        for width, stride in ((w1, 1), (w2, 2), (w3, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, width, stride if i == 0 else 1, options.shortcut, options.conv_bias))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(w3, data.num_classes)
        self.output_site = NormSite(data.num_classes, "fc", role="output", source=self.fc)
        depth_gain = ((2 ** (1 / (3 * n)) - 1) / 2) ** 0.25
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if options.init == "depth_scaled":
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    with torch.no_grad():
                        module.weight.mul_(depth_gain)
                elif options.init == "kaiming_normal":
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                elif options.init == "kaiming_normal_fan_in":
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                elif options.init == "xavier_normal":
                    nn.init.xavier_normal_(module.weight)
                if options.init_gain != 1.0:
                    with torch.no_grad():
                        module.weight.mul_(options.init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem_site.activate(self.stem_site(self.stem(x)), F.relu)
        out = self.stages(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.output_site(self.fc(out))


def build_resnet(options: ResNetOptions, data: DataInfo) -> nn.Module:
    """CIFAR ResNet-(6n+2) of He et al. 2016 with option-A shortcuts."""
    if len(data.input_shape) != 3:
        raise ValueError(f"resnet_cifar needs image inputs (C, H, W), got shape {data.input_shape}")
    return ResNetCifar(options, data)
