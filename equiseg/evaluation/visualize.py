"""Turn label maps and normalized images into pictures: colourized masks, PNG files, grids."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..config import EvalConfig
from ..data.spec import DatasetSpec
from .evaluator import collect_samples

ArrayLike = Union[np.ndarray, torch.Tensor]
PALETTE_SIZE = 256
"""Entries of an 8-bit palette: every uint8 label value (train ids and ignore) has a colour."""
GRID_GAP = 4
"""Pixels of background between grid cells."""
GRID_BACKGROUND = (255, 255, 255)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _label_array(label_map: ArrayLike) -> np.ndarray:
    labels = _to_numpy(label_map)
    if labels.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= PALETTE_SIZE):
        raise ValueError(f"label values must lie in [0, {PALETTE_SIZE}), got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.uint8)


def colorize(label_map: ArrayLike, spec: DatasetSpec) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB with the dataset palette (ignore is black)."""
    return spec.palette_array()[_label_array(label_map)]


def save_prediction(pred: ArrayLike, path_color: Optional[Union[str, Path]], path_index: Optional[Union[str, Path]], spec: DatasetSpec) -> None:
    """Write a colourized RGB PNG and/or a raw index PNG (mode 'P', values = train ids).

    The index PNG carries the dataset palette, so it displays in colour yet reads back (with
    PIL, or as the dataset's label files do) as the class ids. Either path may be None.
    """
    labels = _label_array(pred)
    if path_color is not None:
        Path(path_color).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(spec.palette_array()[labels]).save(path_color)
    if path_index is not None:
        Path(path_index).parent.mkdir(parents=True, exist_ok=True)
        indexed = Image.fromarray(labels).convert("P")
        indexed.putpalette(spec.palette_array().reshape(-1).tolist())
        indexed.save(path_index)


def denormalize(image: ArrayLike, spec: DatasetSpec) -> np.ndarray:
    """(3, H, W) image normalized with the spec's mean/std -> (H, W, 3) uint8 RGB."""
    arr = _to_numpy(image).astype(np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {arr.shape}")
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    rgb = np.clip(np.rint(arr * std + mean), 0, 255).astype(np.uint8)
    return rgb.transpose(1, 2, 0)


def sample_row(image: ArrayLike, label: Optional[ArrayLike], pred: ArrayLike, spec: DatasetSpec) -> list[np.ndarray]:
    """[input, ground truth, prediction] pictures of one sample (GT left out when None)."""
    row = [denormalize(image, spec)]
    if label is not None:
        row.append(colorize(label, spec))
    row.append(colorize(pred, spec))
    return row


def make_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = GRID_GAP, background: tuple[int, int, int] = GRID_BACKGROUND) -> np.ndarray:
    """Lay out (H, W, 3) uint8 pictures as rows of cells -> one (H, W, 3) uint8 image.

    Cells may differ in size; each is placed top-left in a cell as large as the largest
    picture. For TensorBoard use ``add_image(tag, grid, step, dataformats="HWC")``; for files,
    ``PIL.Image.fromarray(grid).save(path)``.
    """
    if not rows or not all(rows):
        raise ValueError("make_grid needs at least one non-empty row")
    pictures = [np.asarray(p) for row in rows for p in row]
    for p in pictures:
        if p.ndim != 3 or p.shape[2] != 3 or p.dtype != np.uint8:
            raise ValueError(f"grid cells must be (H, W, 3) uint8, got {p.shape} {p.dtype}")
    cell_h = max(p.shape[0] for p in pictures)
    cell_w = max(p.shape[1] for p in pictures)
    n_cols = max(len(row) for row in rows)
    height = len(rows) * cell_h + (len(rows) - 1) * gap
    width = n_cols * cell_w + (n_cols - 1) * gap
    grid = np.empty((height, width, 3), dtype=np.uint8)
    grid[:] = np.asarray(background, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            top, left = r * (cell_h + gap), c * (cell_w + gap)
            grid[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return grid


def sample_grid(
    model: torch.nn.Module,
    dataset,
    spec: DatasetSpec,
    device: Union[torch.device, str],
    n: int = 2,
    indices: Optional[Sequence[int]] = None,
    eval_cfg: Optional[EvalConfig] = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """Input / ground truth / prediction rows for ``n`` samples (default: the first ``n``, so the
    same images are shown at every step) -> (H, W, 3) uint8 grid for TensorBoard (HWC).

    ``eval_cfg`` defaults to whole-image inference; the model's modes are restored afterwards.
    """
    if indices is None:
        indices = range(min(n, len(dataset)))
    samples = collect_samples(model, dataset, list(indices), eval_cfg or EvalConfig(), device,
                              spec.num_classes, autocast=autocast)
    return make_grid([sample_row(s["image"], s["label"], s["pred"], spec) for s in samples])
