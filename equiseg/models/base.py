"""Pieces shared by the segmentation models: the model base class, conv blocks, head init."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
"""A BatchNorm-like constructor taking the channel count (``nn.BatchNorm2d`` by default).

Every model builds its norms through one of these, never by naming ``nn.BatchNorm2d`` inside a
block, so ``nn.SyncBatchNorm.convert_sync_batchnorm`` (or a test's custom norm) reaches them all.
"""


class ConvBNReLU(nn.Sequential):
    """``Conv2d (no bias) -> norm -> ReLU``; keys ``0``/``1`` like torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation  # keeps the spatial size ("same" padding)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size`` (align_corners=False, the torchvision/mmseg convention)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def init_head_weights(module: nn.Module) -> None:
    """Kaiming-normal convs (fan_in, ReLU gain), zero biases, norm weight 1 / bias 0.

    fan_in keeps the logits layers small at init (for DeepLabV2's 3x3 conv on 2048 channels the
    std is ~0.01, the value of the original DeepLab code), while matching He init for ReLU layers.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class FCNAuxHead(nn.Sequential):
    """Auxiliary FCN head on an intermediate backbone stage (PSPNet/mmseg style).

    3x3 conv to ``hidden`` channels, norm, ReLU, dropout, 1x1 classifier. Its loss only helps
    optimisation, so models run it in training mode only.
    """

    HIDDEN_CHANNELS = 256

    def __init__(self, in_channels: int, num_classes: int, dropout: float, norm_layer: NormLayer) -> None:
        super().__init__(
            ConvBNReLU(in_channels, self.HIDDEN_CHANNELS, kernel_size=3, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
            nn.Conv2d(self.HIDDEN_CHANNELS, num_classes, kernel_size=1),
        )


class SegmentationModel(nn.Module):
    """Base of the segmentation models: a ``backbone`` attribute plus head modules.

    ``backbone_parameters()`` and ``head_parameters()`` partition ``parameters()``: the head is
    everything outside ``self.backbone``, so a head added by a subclass is never forgotten.
    """

    backbone: nn.Module

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return (p for p in self.parameters() if id(p) not in backbone_ids)
