"""DeepLabv3+ (Chen et al., ECCV 2018) over a ResNet or MobileNetV2 backbone.

ASPP on the backbone's ``high`` features (1x1 conv, three 3x3 atrous convs, image pooling; each
256 channels with norm + ReLU; concatenated, projected to 256 and dropped out), bilinearly upsampled
to the stride-4 ``low`` features, which are first projected to 48 channels; then two 3x3 convs
(256) and a 1x1 classifier, as in the U2PL/AEL decoder. The optional auxiliary FCN head reads the
backbone's ``aux`` map (ResNet layer3, 1024 channels; MobileNetV2 ``features[13]``, 96 channels).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ConvBNReLU, FCNAuxHead, NormLayer, SegmentationModel, init_head_weights, resize_to

ASPP_RATES_AT_OUTPUT_STRIDE_16 = (6, 12, 18)
"""Atrous rates at output stride 16; they scale with the feature resolution (12/24/36 at 8)."""
REFERENCE_OUTPUT_STRIDE = 16
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
DECODER_CHANNELS = 256


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    return tuple(r * REFERENCE_OUTPUT_STRIDE // output_stride for r in ASPP_RATES_AT_OUTPUT_STRIDE_16)


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv + norm + ReLU, broadcast back.

    Its norm sees one value per channel and image, so BatchNorm needs more than one image per
    (synchronised) batch in training mode.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, out_channels, kernel_size=1, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x)).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3)."""

    def __init__(
        self,
        in_channels: int,
        rates: tuple[int, ...],
        out_channels: int = ASPP_CHANNELS,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels, kernel_size=1, norm_layer=norm_layer)]
            + [ConvBNReLU(in_channels, out_channels, 3, dilation=r, norm_layer=norm_layer) for r in rates]
            + [ASPPPooling(in_channels, out_channels, norm_layer)]
        )
        self.project = nn.Sequential(
            ConvBNReLU(len(self.branches) * out_channels, out_channels, kernel_size=1, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the high-level map, fused with the projected low-level map, then classified."""

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        num_classes: int,
        output_stride: int,
        dropout: float,
        norm_layer: NormLayer,
        head_channels: int = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels, aspp_rates(output_stride), out_channels=head_channels, dropout=dropout,
                         norm_layer=norm_layer)
        self.low_project = ConvBNReLU(low_channels, LOW_LEVEL_CHANNELS, kernel_size=1, norm_layer=norm_layer)
        self.fuse = nn.Sequential(
            ConvBNReLU(head_channels + LOW_LEVEL_CHANNELS, head_channels, 3, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
            ConvBNReLU(head_channels, head_channels, 3, norm_layer=norm_layer),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = resize_to(self.aspp(high), low.shape[-2:])
        x = torch.cat([high, self.low_project(low)], dim=1)
        return self.classifier(self.fuse(x))


class DeepLabV3Plus(SegmentationModel):
    """``forward(x)`` returns ``{"out": logits}`` at the input size, plus ``"aux"`` when the aux
    head exists and the model is training.

    ``backbone`` must return ``{"low", "aux", "high"}`` maps and expose ``channels`` (their widths)
    and ``output_stride``, like :class:`~equiseg.models.resnet.ResNet` and
    :class:`~equiseg.models.mobilenetv2.MobileNetV2`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        aux_head: bool = False,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        head_channels: int = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.channels
        self.decoder = DeepLabV3PlusDecoder(
            channels["low"], channels["high"], num_classes, backbone.output_stride, dropout, norm_layer,
            head_channels=head_channels,
        )
        self.aux_head = FCNAuxHead(channels["aux"], num_classes, dropout, norm_layer) if aux_head else None
        init_head_weights(self.decoder)
        if self.aux_head is not None:
            init_head_weights(self.aux_head)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = {"out": resize_to(self.decoder(features["low"], features["high"]), size)}
        if self.aux_head is not None and self.training:
            result["aux"] = resize_to(self.aux_head(features["aux"]), size)
        return result
