"""Model zoo: DeepLabv3+ (MobileNetV2 / ResNet-50 / ResNet-101) and DeepLabV2 (ResNet-101).

:func:`build_model` is the only entry point the rest of equiseg needs; see docs/design.md
("Model contract") for what the returned module promises.
"""
from __future__ import annotations

from typing import Optional

import torch.distributed as dist
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .base import SegmentationModel
from .deeplabv2 import OUTPUT_STRIDE as DEEPLABV2_OUTPUT_STRIDE
from .deeplabv2 import DeepLabV2
from .deeplabv3plus import DECODER_CHANNELS as DEEPLABV3PLUS_HEAD_CHANNELS
from .deeplabv3plus import DeepLabV3Plus
from .mobilenetv2 import MobileNetV2
from .pretrained import LoadedWeights, load_backbone_weights
from .resnet import ResNet

RESNET_DEPTHS = {"resnet50": 50, "resnet101": 101}
ARCH_BACKBONES = {
    "deeplabv3plus": ("mobilenet_v2", "resnet50", "resnet101"),
    "deeplabv2": ("resnet101",),
}

__all__ = [
    "DeepLabV2",
    "DeepLabV3Plus",
    "LoadedWeights",
    "MobileNetV2",
    "ResNet",
    "SegmentationModel",
    "build_backbone",
    "build_model",
    "convert_sync_batchnorm",
    "load_backbone_weights",
]


def build_backbone(cfg: ModelConfig, norm_layer=nn.BatchNorm2d) -> nn.Module:
    """The backbone named by ``cfg.backbone``, without pretrained weights."""
    if cfg.backbone == "mobilenet_v2":
        for key in ("deep_stem", "multi_grid"):
            if getattr(cfg, key):
                raise ConfigError(f"model.{key} applies to ResNet backbones only, not model.backbone=mobilenet_v2")
        return MobileNetV2(output_stride=cfg.output_stride, norm_layer=norm_layer)
    if cfg.backbone in RESNET_DEPTHS:
        return ResNet(
            depth=RESNET_DEPTHS[cfg.backbone],
            deep_stem=cfg.deep_stem,
            output_stride=cfg.output_stride,
            multi_grid=cfg.multi_grid,
            norm_layer=norm_layer,
        )
    raise ConfigError(f"unknown model.backbone '{cfg.backbone}'")


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """Build the segmentation model of ``cfg`` and load ``cfg.pretrained`` into its backbone.

    Raises :class:`~equiseg.errors.ConfigError` for option combinations the architecture does not
    support, and :class:`~equiseg.errors.WeightsError` when the pretrained file does not fit.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    allowed = ARCH_BACKBONES.get(cfg.arch)
    if allowed is None:
        raise ConfigError(f"unknown model.arch '{cfg.arch}'; choose one of {', '.join(ARCH_BACKBONES)}")
    if cfg.backbone not in allowed:
        raise ConfigError(
            f"model.backbone={cfg.backbone} is not available for model.arch={cfg.arch}; "
            f"choose one of {', '.join(allowed)}"
        )
    if cfg.arch == "deeplabv2":
        # Fail loudly rather than silently ignore options DeepLabV2 cannot honour.
        if cfg.output_stride != DEEPLABV2_OUTPUT_STRIDE:
            raise ConfigError(
                f"model.arch=deeplabv2 needs model.output_stride={DEEPLABV2_OUTPUT_STRIDE} "
                f"(its ASPP rates 6/12/18/24 assume it), got {cfg.output_stride}"
            )
        if cfg.aux_head:
            raise ConfigError("model.aux_head is not available for model.arch=deeplabv2 (it has no aux head)")
        if cfg.head_channels != DEEPLABV3PLUS_HEAD_CHANNELS:
            raise ConfigError("model.head_channels applies to model.arch=deeplabv3plus only")

    backbone = build_backbone(cfg)
    if cfg.pretrained:
        load_backbone_weights(backbone, cfg.pretrained)
    if cfg.arch == "deeplabv2":
        return DeepLabV2(backbone, num_classes)
    return DeepLabV3Plus(backbone, num_classes, aux_head=cfg.aux_head, dropout=cfg.dropout,
                         head_channels=cfg.head_channels)


def convert_sync_batchnorm(model: nn.Module, process_group: Optional["dist.ProcessGroup"] = None) -> nn.Module:
    """Replace every BatchNorm with ``nn.SyncBatchNorm`` (statistics shared across DDP ranks).

    SyncBatchNorm only runs on CUDA inside an initialised process group; call this for multi-GPU
    DDP runs only (``model.sync_bn``), before wrapping the model in DDP.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
