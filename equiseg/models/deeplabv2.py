"""DeepLabV2 (Chen et al., TPAMI 2017) as used by DST-CBC.

ResNet-101 (torchvision stem unless the caller asks otherwise) dilated to output stride 8, and
ASPP-V2 on layer4: four 3x3 convs with biases and dilations 6/12/18/24, each producing class
logits, summed. There is no decoder, no norm in the head and no auxiliary head.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel, init_head_weights, resize_to

ASPP_V2_RATES = (6, 12, 18, 24)
"""Dilations of DeepLab-v2's ASPP-L, defined for output stride 8."""
OUTPUT_STRIDE = 8


class ASPPV2(nn.Module):
    """Sum of parallel dilated 3x3 classifiers (DeepLab-v2 "ASPP-L")."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = ASPP_V2_RATES) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(SegmentationModel):
    """``forward(x)`` returns ``{"out": logits}`` at the input size.

    ``backbone`` must return a ``"high"`` map of ``backbone.channels["high"]`` channels at output
    stride 8 (the ASPP-V2 rates assume it).
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        if backbone.output_stride != OUTPUT_STRIDE:
            raise ValueError(
                f"DeepLabV2 needs a backbone at output stride {OUTPUT_STRIDE}, got {backbone.output_stride}"
            )
        self.backbone = backbone
        self.classifier = ASPPV2(backbone.channels["high"], num_classes)
        init_head_weights(self.classifier)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": resize_to(self.classifier(self.backbone(x)["high"]), x.shape[-2:])}
