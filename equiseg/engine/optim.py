"""SGD with a backbone / head learning-rate split and the poly schedule used across the field."""
from __future__ import annotations

import torch
from torch import nn

from ..config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """Two parameter groups: the backbone at ``lr``, the rest (decoder, heads) at ``lr * head_lr_mult``."""
    backbone = list(model.backbone_parameters())
    backbone_ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": cfg.lr, "name": "backbone"},
        {"params": [p for p in head if p.requires_grad], "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def poly_factor(iteration: int, cfg: OptimConfig, restarts: tuple[int, ...] = ()) -> float:
    """LR multiplier at ``iteration``: linear warm-up, then (1 - t/T)^power. ``restarts``: iterations
    where the schedule starts over (a phase of a method, e.g. the end of a supervised warm-up); each
    phase decays to 0 at the next one, the last at ``cfg.iterations``."""
    if cfg.warmup_iterations and iteration < cfg.warmup_iterations:
        return (iteration + 1) / cfg.warmup_iterations
    inner = sorted(r for r in restarts if 0 < r < cfg.iterations)
    start = max((r for r in inner if r <= iteration), default=0)
    end = min((r for r in inner if r > iteration), default=cfg.iterations)
    return (1.0 - min(iteration - start, end - start) / (end - start)) ** cfg.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    restarts: tuple[int, ...] = ()) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_factor(it, cfg, restarts))
