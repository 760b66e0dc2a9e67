"""ResNet-50/101 backbones whose ``state_dict`` keys match torchvision's.

Bottleneck blocks put the stride on the 3x3 conv (ResNet V1.5, as torchvision). Options used by
the semi-supervised segmentation literature:

* ``deep_stem``: the 3-conv stem of PyTorch-Encoding / U2PL / AEL / UniMatch ("ResNet-D"-like
  ``resnet50s``/``resnet101s`` checkpoints). ``conv1`` becomes
  ``Sequential(conv3x3(3,64,s2), BN, ReLU, conv3x3(64,64), BN, ReLU, conv3x3(64,128))`` (keys
  ``conv1.0/.1/.3/.4/.6``), ``bn1`` has 128 channels, and the max-pool uses ``ceil_mode=True`` as
  in the official U2PL/AEL code.
* ``output_stride`` 8 or 16: later strides become dilations, with torchvision's
  ``replace_stride_with_dilation`` semantics (the first block of a dilated stage keeps the
  previous dilation).
* ``multi_grid``: layer4's three blocks use dilations ``rate * (1, 2, 4)`` (DeepLabv3), i.e.
  (2, 4, 8) at output stride 16 and (4, 8, 16) at 8.

``forward`` returns the features the heads need, not class scores; there is no ``fc`` layer.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import NormLayer

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_PLANES = (64, 128, 256, 512)
"""Bottleneck width of layer1..layer4; each block outputs ``planes * Bottleneck.expansion``."""
STEM_CHANNELS = 64
"""Output width of torchvision's 7x7 stem (and of the deep stem's two hidden convs)."""
DEEP_STEM_CHANNELS = 128
"""Output width of the deep stem, hence layer1's input width."""
MULTI_GRID = (1, 2, 4)
"""DeepLabv3 multi-grid unit rates for layer4's three blocks."""
DILATED_STAGES = {16: (False, False, True), 8: (False, True, True)}
"""Which of layer2..layer4 trade their stride for dilation, per output stride."""


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride and dilation on the 3x3 conv)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: Optional[nn.Module] = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Dilated ResNet backbone returning ``{"low": layer1, "aux": layer3, "high": layer4}``.

    ``channels`` gives the width of each returned map and ``output_stride`` the stride of
    ``high`` (``low`` is always at stride 4). ``weights_layout`` names the checkpoint layout that
    fits this model (see :mod:`equiseg.models.pretrained`).
    """

    def __init__(
        self,
        depth: int = 50,
        deep_stem: bool = False,
        output_stride: int = 16,
        multi_grid: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        if output_stride not in DILATED_STAGES:
            raise ValueError(f"ResNet output_stride must be one of {sorted(DILATED_STAGES)}, got {output_stride}")
        self.depth = depth
        self.deep_stem = deep_stem
        self.output_stride = output_stride
        self.multi_grid = multi_grid
        self.weights_layout = "deep_stem_resnet" if deep_stem else "torchvision_resnet"
        self._norm_layer = norm_layer

        if deep_stem:
            self.inplanes = DEEP_STEM_CHANNELS
            self.conv1 = nn.Sequential(
                conv3x3(3, STEM_CHANNELS, stride=2),
                norm_layer(STEM_CHANNELS),
                nn.ReLU(inplace=True),
                conv3x3(STEM_CHANNELS, STEM_CHANNELS),
                norm_layer(STEM_CHANNELS),
                nn.ReLU(inplace=True),
                conv3x3(STEM_CHANNELS, DEEP_STEM_CHANNELS),
            )
        else:
            self.inplanes = STEM_CHANNELS
            self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        # ceil_mode only with the deep stem, as in the U2PL/AEL code those checkpoints come from.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=deep_stem)

        self.dilation = 1
        blocks = BLOCKS_PER_STAGE[depth]
        dilate = DILATED_STAGES[output_stride]
        self.layer1 = self._make_layer(STAGE_PLANES[0], blocks[0])
        self.layer2 = self._make_layer(STAGE_PLANES[1], blocks[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(STAGE_PLANES[2], blocks[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(
            STAGE_PLANES[3], blocks[3], stride=2, dilate=dilate[2], grid=MULTI_GRID if multi_grid else None
        )
        self.channels = {
            "low": STAGE_PLANES[0] * Bottleneck.expansion,
            "aux": STAGE_PLANES[2] * Bottleneck.expansion,
            "high": STAGE_PLANES[3] * Bottleneck.expansion,
        }
        self._init_weights()

    def _make_layer(
        self,
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
        grid: Optional[tuple[int, ...]] = None,
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        out_channels = planes * Bottleneck.expansion
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(conv1x1(self.inplanes, out_channels, stride), self._norm_layer(out_channels))
        if grid is not None:
            if len(grid) != blocks:
                raise ValueError(f"multi-grid {grid} needs {len(grid)} blocks, the stage has {blocks}")
            dilations = [self.dilation * g for g in grid]
        else:
            dilations = [previous_dilation] + [self.dilation] * (blocks - 1)
        layers = [Bottleneck(self.inplanes, planes, stride, dilations[0], downsample, self._norm_layer)]
        self.inplanes = out_channels
        layers += [
            Bottleneck(self.inplanes, planes, dilation=d, norm_layer=self._norm_layer) for d in dilations[1:]
        ]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's init, used when no pretrained weights are loaded.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        aux = self.layer3(self.layer2(low))
        high = self.layer4(aux)
        return {"low": low, "aux": aux, "high": high}


def resnet50(**kwargs) -> ResNet:
    return ResNet(depth=50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    return ResNet(depth=101, **kwargs)
