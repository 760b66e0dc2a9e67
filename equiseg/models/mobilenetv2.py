"""MobileNetV2 backbone whose ``state_dict`` keys match torchvision's ``mobilenet_v2``.

``features.0`` is the stem and ``features.1`` .. ``features.17`` the inverted-residual blocks,
with torchvision's inner keys (``features.N.conv.M...``), so torchvision's ImageNet checkpoint
loads strictly (see :mod:`equiseg.models.pretrained`).

Feature taps (``forward`` returns a dict):

* ``low``  = output of ``features[3]``: 24 channels at stride 4, the DeepLabv3+ low-level input.
* ``aux``  = output of ``features[13]``: 96 channels, the last block before the final stride-2
  stage (stride 16, or 8 at output stride 8). It plays the role of ResNet's layer3 for the
  optional auxiliary head.
* ``high`` = output of ``features[17]``: 320 channels, the ASPP input.

``features.18`` (1x1 conv 320 -> 1280 + BN + ReLU6) is *not* built: it only widens the features for
the ImageNet classifier, and DeepLabv3+ on MobileNetV2 (the DeepLab paper and its reference code)
feeds ASPP the 320-channel output. Keeping it would add 0.4M parameters and a 1280-channel ASPP
input for no known benefit. Its checkpoint keys, like ``classifier.*``, are dropped through the
explicit list in :mod:`equiseg.models.pretrained`.

Output stride 16 or 8: the stride-2 stages past the requested stride get stride 1 and a doubled
dilation instead (the idea of torchvision's DeepLabV3-MobileNet). As in torchvision's
``replace_stride_with_dilation`` for ResNet, the first block of such a stage keeps the previous
dilation and later blocks use the new one: the first block's 3x3 conv reads the full-resolution
input either way, so this reproduces the sampling grid the pretrained weights saw (torchvision's
MobileNetV3 dilates that first block too; the weights are the same either way). At output
stride 16 this touches ``features.14``-``17``; at 8 also ``features.7``-``13``.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import NormLayer

STEM_CHANNELS = 32
INVERTED_RESIDUAL_SETTING = (
    # expand ratio t, output channels c, repeats n, stride s of the first block (paper Table 2)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_STRIDE = 2
LOW_LEVEL_LAST_INDEX = 3
"""``features[3]``: the last block at stride 4 (24 channels)."""
AUX_LAST_INDEX = 13
"""``features[13]``: the last block before the final stride-2 stage (96 channels)."""
SUPPORTED_OUTPUT_STRIDES = (8, 16)


class ConvBNReLU6(nn.Sequential):
    """torchvision's ``Conv2dNormActivation`` with ReLU6 (keys ``0`` conv, ``1`` norm)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False
            ),
            norm_layer(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """torchvision's InvertedResidual (expand 1x1, depthwise 3x3, linear 1x1 projection)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1, norm_layer=norm_layer))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, dilation=dilation, groups=hidden, norm_layer=norm_layer),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            norm_layer(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) feature extractor returning ``{"low", "aux", "high"}`` maps."""

    weights_layout = "torchvision_mobilenet_v2"

    def __init__(self, output_stride: int = 16, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if output_stride not in SUPPORTED_OUTPUT_STRIDES:
            raise ValueError(
                f"MobileNetV2 output_stride must be one of {SUPPORTED_OUTPUT_STRIDES}, got {output_stride}"
            )
        self.output_stride = output_stride
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, stride=STEM_STRIDE, norm_layer=norm_layer)]
        current_stride, dilation, in_channels = STEM_STRIDE, 1, STEM_CHANNELS
        for expand_ratio, out_channels, repeats, stage_stride in INVERTED_RESIDUAL_SETTING:
            previous_dilation = dilation
            if current_stride * stage_stride > output_stride:
                dilation *= stage_stride  # trade this stage's stride for dilation
                stage_stride = 1
            current_stride *= stage_stride
            for i in range(repeats):
                layers.append(
                    InvertedResidual(
                        in_channels,
                        out_channels,
                        stride=stage_stride if i == 0 else 1,
                        expand_ratio=expand_ratio,
                        dilation=previous_dilation if i == 0 else dilation,
                        norm_layer=norm_layer,
                    )
                )
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.channels = {
            "low": _out_channels(self.features[LOW_LEVEL_LAST_INDEX]),
            "aux": _out_channels(self.features[AUX_LAST_INDEX]),
            "high": in_channels,
        }
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init, used when no pretrained weights are loaded.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        taps = {LOW_LEVEL_LAST_INDEX: "low", AUX_LAST_INDEX: "aux", len(self.features) - 1: "high"}
        out: dict[str, torch.Tensor] = {}
        for index, block in enumerate(self.features):
            x = block(x)
            if index in taps:
                out[taps[index]] = x
        return out


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)
