"""Shared fixtures: tiny synthetic datasets on disk, PNG writers, the optional real CamVid folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from equiseg.data.spec import DatasetSpec
from equiseg.data.synthetic import make_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The data check's cache goes to a temporary folder, not the user's ~/.cache."""
    os.environ["EQUISEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("equiseg_cache"))

# Colours in convex position (vertices of a triangular bipyramid): a bilinear blend of them can
# only equal one of them exactly when it is that pure colour, which is what the alignment tests use.
PATTERN_COLOURS = ((250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 240), (15, 15, 15))
PATTERN_SPEC = DatasetSpec("pattern", tuple(f"c{i}" for i in range(len(PATTERN_COLOURS))), PATTERN_COLOURS)


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode=mode).save(path)
    return path


def pattern_pair(rng: np.random.Generator, height: int, width: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Random blocks of PATTERN_COLOURS; the mask is the colour's index (mask = f(image))."""
    bh, bw = -(-height // block), -(-width // block)
    classes = rng.integers(0, len(PATTERN_COLOURS), size=(bh, bw))
    mask = np.kron(classes, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)
    image = np.asarray(PATTERN_COLOURS, dtype=np.uint8)[mask]
    return image, mask


@pytest.fixture
def pattern_root(tmp_path: Path) -> Path:
    """Four 48x64 pattern pairs (8 px blocks) with list.txt; spec: PATTERN_SPEC."""
    rng = np.random.default_rng(123)
    lines = []
    for i in range(4):
        image, mask = pattern_pair(rng, 48, 64, 8)
        write_png(tmp_path / "img" / f"p{i}.png", image)
        write_png(tmp_path / "lbl" / f"p{i}.png", mask, "L")
        lines.append(f"img/p{i}.png lbl/p{i}.png\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return tmp_path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset folder (12 train / 4 val, 48x64), written once per session."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_train=12, n_val=4, size=(48, 64), seed=0)


def data_dir() -> Path:
    """Shared data folder: $EQUISEG_DATA_DIR, else <repo>/../shared/data."""
    env = os.environ.get("EQUISEG_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = data_dir() / "camvid"
    if not (root / "trainannot").is_dir():
        pytest.skip(f"CamVid not found at {root} (set EQUISEG_DATA_DIR)")
    return root
