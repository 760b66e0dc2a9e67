"""Input / ground truth / prediction pictures of a run's best checkpoint on a few val images."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..errors import EquisegError
from .run_folder import RunFolder, where

DEFAULT_NUM_IMAGES = 3
MAX_GRID_WIDTH = 1200
"""Pixels; a wider grid (full-resolution Cityscapes) is scaled down to keep the page light."""


@dataclass
class SampleGrid:
    png_base64: str
    width: int
    """Pixels of the encoded picture."""
    names: list[str]
    classes: list[tuple[str, tuple[int, int, int]]]
    """(class name, RGB) for the colour legend."""
    note: str


def evenly_spaced(count: int, n: int) -> list[int]:
    """``n`` indices spread over ``range(count)`` (first and last included), so the grid shows
    more of the split than its first few, similar, frames."""
    if count <= 0 or n <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(n, count))})


def encode_png(picture: np.ndarray, max_width: int = MAX_GRID_WIDTH) -> tuple[str, int]:
    """Base64 PNG of an (H, W, 3) uint8 picture no wider than ``max_width``, and its width."""
    image = Image.fromarray(picture)
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), image.width


def render_samples(run: RunFolder, num_images: int = DEFAULT_NUM_IMAGES, device: str = "cpu") -> SampleGrid:
    """Predict ``num_images`` val images with ``checkpoints/best.pt`` (whole-image inference, as
    the TensorBoard grids). Raises :class:`EquisegError` when the config, checkpoint or data are
    not usable here; the report then says why instead of showing pictures."""
    from ..config import validate_config
    from ..data.build import build_eval_dataset
    from ..evaluation.visualize import sample_grid
    from ..models.checkpoint import model_from_checkpoint

    cfg = validate_config(run.config)
    dataset, source = build_eval_dataset(cfg)
    spec = dataset.spec
    model, _, _ = model_from_checkpoint(run.best_checkpoint, cfg.model, spec.num_classes)
    model.to(device)
    indices = evenly_spaced(len(dataset), num_images)
    with torch.no_grad():
        grid = sample_grid(model, dataset, spec, device, indices=indices)
    names = [dataset.names[i] for i in indices] if hasattr(dataset, "names") else [str(i) for i in indices]
    palette = spec.palette_array()
    classes = [(name, tuple(int(c) for c in palette[i])) for i, name in enumerate(spec.class_names)]
    note = (f"best checkpoint ({where(run.best or {}, run.best_iteration)}) on {len(indices)} of {len(dataset)} images of the "
            f"{source}; whole-image inference at data.image_scale={cfg.data.image_scale}")
    png, width = encode_png(grid)
    return SampleGrid(png, width, names, classes, note)


def try_render_samples(run: RunFolder, num_images: int, device: str) -> tuple[Optional[SampleGrid], str]:
    """(grid, "") or (None, the reason there are no pictures)."""
    if not run.best_checkpoint.is_file():
        return None, f"no {run.best_checkpoint.relative_to(run.path)} in the run folder (yet)"
    try:
        return render_samples(run, num_images, device), ""
    except (EquisegError, OSError) as exc:
        return None, f"pictures not rendered: {exc}"
