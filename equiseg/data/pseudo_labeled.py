"""Offline pseudo-labels on disk (DST-CBC's rounds): the PNG / float32 stores and the dataset
that serves unlabeled images with one round's pseudo-labels (and stored confidences) through the
labeled images' augmentation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .io import decode_image, read_list_file
from .transforms import resize_pair

CONFIDENCE_LEVELS = 2**16 - 1
"""The OW ablation's stored confidences are ``round(p * 65535)`` in 16-bit PNGs (within ±7.6e-6 of
p): enough for loss weights. Selection never uses them: it compares float32 values exactly."""
PSEUDO_LABEL_DIR = "pseudo_labels"
CONFIDENCE_DIR = "confidence"


def read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def write_png(path: Path, array: np.ndarray) -> None:
    """uint8 arrays as 8-bit grayscale, uint16 as 16-bit grayscale PNGs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def write_float32(path: Path, values: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values.float().cpu().numpy())


def read_float32(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def confidence_path(round_dir: Path, pseudo_label: str) -> Path:
    """``pseudo_labels/<name>.png`` → ``round_dir/confidence/<name>.png``."""
    return round_dir / CONFIDENCE_DIR / Path(pseudo_label).relative_to(PSEUDO_LABEL_DIR)


class PseudoLabeledDataset:
    """Unlabeled images with the pseudo-labels of one round, augmented like the labeled images.

    ``list_file`` holds ``image pseudo_label`` lines: the image relative to the dataset ``root``,
    the pseudo-label (train ids, 255 ignored, at the image's size after ``image_scale``) relative
    to the list's folder. With ``with_confidence`` the sample also has ``confidence`` (H, W) float:
    the stored labeling confidence (16-bit PNG in ``confidence/``), 0 where padded. To follow the
    same geometry, label and confidence travel through the transform packed as one int32 mask
    (label << 16 | level), which resizes with nearest neighbour like a label.
    """

    def __init__(self, root: Path, list_file: Path, spec: Any, transform: Callable, image_scale: float = 1.0,
                 with_confidence: bool = False):
        self.root, self.list_file, self.spec = Path(root), Path(list_file), spec
        self.round_dir = self.list_file.parent
        self.transform, self.image_scale, self.with_confidence = transform, float(image_scale), with_confidence
        self.pairs = read_list_file(self.list_file, with_labels=True)
        if not self.pairs:
            raise DataError(f"{self.list_file} lists no pseudo-labeled images")

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, seed: Optional[int] = None) -> dict[str, Any]:
        i = int(index)
        seed = i if seed is None else int(seed)
        pair = self.pairs[i]
        image = decode_image(self.root / pair.image)
        if self.image_scale != 1.0:
            image, _ = resize_pair(image, None, self.image_scale)
        label = read_png(self.round_dir / pair.label)
        if label.shape != image.shape[:2]:
            raise DataError(f"pseudo-label {self.round_dir / pair.label} is {label.shape[1]}x{label.shape[0]}, but "
                            f"{pair.image} is {image.shape[1]}x{image.shape[0]} after data.image_scale")
        if self.with_confidence:
            level = read_png(confidence_path(self.round_dir, pair.label)).astype(np.int32)
            label = (label.astype(np.int32) << 16) | level
        sample = {"image": image, "label": label, "valid": np.ones(image.shape[:2], dtype=bool)}
        sample = self.transform(sample, np.random.default_rng((seed, i)))
        valid = sample["valid"]
        if self.with_confidence:
            packed = sample["label"]
            sample["confidence"] = torch.where(valid, (packed & 0xFFFF).float() / CONFIDENCE_LEVELS, 0.0)
            sample["label"] = packed >> 16
        sample["label"] = sample["label"].masked_fill(~valid, self.spec.ignore_index)
        sample["index"] = i
        sample["name"] = Path(pair.label).stem
        return sample

    def __getitem__(self, key: Any) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            return self.load(key[0], key[1])
        return self.load(key)
