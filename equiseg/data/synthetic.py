"""Synthetic long-tailed street scenes, for tests and CPU demos.

Each scene has four large "stuff" classes laid out as jittered horizontal bands (sky, building,
grass, road) and five "thing" classes drawn as small shapes on top (car, person, pole, sign,
bicycle). Pixel shares span about two orders of magnitude (road ≈ 30%, bicycle ≈ 0.3%), like
Cityscapes or CamVid. Every class has a distinctive base colour, but instances vary in colour,
each image has its own illumination, pixels are noisy and stuff classes carry textures, so a
small CNN learns the head classes in a few hundred CPU iterations at ~96x128 while the rare thin
classes stay hard. Everything is a deterministic function of the seed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .spec import DatasetSpec

SYNTHETIC_CLASSES = ("sky", "building", "grass", "road", "car", "person", "pole", "sign", "bicycle")
# Base colours (also the visualisation palette). Rare classes are deliberately near a stuff colour
# (person ~ building, pole ~ road, bicycle ~ sky) so that being rare makes them hard.
SYNTHETIC_COLOURS = ((110, 160, 225), (165, 120, 95), (70, 150, 60), (105, 105, 115), (200, 40, 45),
                     (215, 150, 120), (80, 80, 95), (235, 205, 40), (60, 110, 200))
SYNTHETIC_TAIL = ("person", "pole", "sign", "bicycle")  # each below 2% of pixels
SYNTHETIC_CLASSES_FILE = "classes.txt"
SYNTHETIC_DEFAULT_SIZE = (96, 128)  # (height, width)

SYNTHETIC_SPEC = DatasetSpec("synthetic", SYNTHETIC_CLASSES, SYNTHETIC_COLOURS, tail_classes=SYNTHETIC_TAIL)

SKY, BUILDING, GRASS, ROAD, CAR, PERSON, POLE, SIGN, BICYCLE = range(len(SYNTHETIC_CLASSES))

# Scene recipe. Fractions are of the image height (H) or width (W).
_SKYLINE = (0.22, 0.40)            # building top, per building block
_BLOCK_WIDTH = (0.10, 0.30)        # width of one building block
_GRASS_TOP = (0.52, 0.60)          # building/grass boundary (mean), smooth per-column jitter below
_ROAD_TOP = (0.64, 0.72)           # grass/road boundary (mean)
_EDGE_JITTER = 0.03                # amplitude of the smooth boundary wobble
_CARS = (0.85, 1, 3)               # (probability of any, min count, max count)
_CAR_SIZE = ((0.10, 0.16), (0.16, 0.28))  # (height range, width range)
_PERSONS = (0.65, 1, 3)
_PERSON_SIZE = ((0.14, 0.22), (0.03, 0.05))
_POLES = (0.6, 1, 2)
_POLE_SIZE = ((0.30, 0.45), (0.012, 0.02))
_SIGN_ON_POLE_P = 0.6
_SIGN_SIZE = ((0.05, 0.08), (0.04, 0.06))
_BICYCLES = (0.35, 1, 1)
_BICYCLE_SIZE = ((0.06, 0.09), (0.06, 0.09))
_INSTANCE_COLOUR_STD = 14.0        # per-instance colour variation
_ILLUMINATION = (0.75, 1.2)        # per-image brightness factor
_PIXEL_NOISE_STD = 10.0


def _smooth_wobble(rng: np.random.Generator, width: int, amplitude: float) -> np.ndarray:
    """A smooth per-column offset: a sum of two random low-frequency sines."""
    x = np.linspace(0, 2 * np.pi, width)
    wobble = np.zeros(width)
    for freq in (1, 3):
        wobble += rng.uniform(0.3, 1.0) * np.sin(freq * x + rng.uniform(0, 2 * np.pi))
    return amplitude * wobble / 2


def _span(rng: np.random.Generator, frac_range: tuple[float, float], extent: int, minimum: int = 1) -> int:
    return max(minimum, int(round(rng.uniform(*frac_range) * extent)))


def _count(rng: np.random.Generator, spec: tuple[float, int, int]) -> int:
    p, lo, hi = spec
    return int(rng.integers(lo, hi + 1)) if rng.random() < p else 0


def _scaled(frac_range: tuple[float, float], factor: float) -> tuple[float, float]:
    return frac_range[0] * factor, frac_range[1] * factor


def render_scene(rng: np.random.Generator, size: tuple[int, int] = SYNTHETIC_DEFAULT_SIZE,
                 small_thing_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image (H, W, 3) uint8, mask (H, W) uint8 class ids)``. ``small_thing_scale``
    multiplies the size of the three smallest classes (a pole's width, a sign, a bicycle): they stay
    rare but become learnable at low resolution; the random draws, so the layouts, are the same."""
    h, w = size
    if h < 16 or w < 16:
        raise ValueError(f"synthetic scenes need at least 16x16 pixels, got {size}")
    rows = np.arange(h)[:, None]
    mask = np.full((h, w), SKY, dtype=np.uint8)

    # Stuff bands: building skyline made of blocks, then grass and road with wobbly edges.
    x = 0
    while x < w:
        bw = _span(rng, _BLOCK_WIDTH, w)
        top = _span(rng, _SKYLINE, h)
        mask[top:, x:x + bw] = BUILDING
        x += bw
    grass_top = rng.uniform(*_GRASS_TOP) * h + _smooth_wobble(rng, w, _EDGE_JITTER * h)
    road_top = rng.uniform(*_ROAD_TOP) * h + _smooth_wobble(rng, w, _EDGE_JITTER * h)
    road_top = np.maximum(road_top, grass_top + 2)
    mask[rows >= grass_top[None, :]] = GRASS
    mask[rows >= road_top[None, :]] = ROAD
    ground = int(np.median(road_top))  # things stand roughly on the road edge

    # Things, each remembered with its own colour offset.
    instances: list[tuple[int, np.ndarray]] = []

    def box(cls: int, bottom: int, hh: int, ww: int, left: Optional[int] = None) -> tuple[int, int]:
        left = int(rng.integers(0, max(1, w - ww))) if left is None else left
        top = max(0, bottom - hh)
        region = np.zeros((h, w), dtype=bool)
        region[top:bottom, left:left + ww] = True
        instances.append((cls, region))
        return top, left

    for _ in range(_count(rng, _CARS)):
        hh, ww = _span(rng, _CAR_SIZE[0], h, 3), _span(rng, _CAR_SIZE[1], w, 4)
        bottom = int(rng.integers(ground + hh // 2, h + 1))
        box(CAR, min(h, bottom), hh, ww)
    for _ in range(_count(rng, _BICYCLES)):
        hh, ww = (_span(rng, _scaled(_BICYCLE_SIZE[0], small_thing_scale), h, 3),
                  _span(rng, _scaled(_BICYCLE_SIZE[1], small_thing_scale), w, 3))
        top, left = box(BICYCLE, min(h, int(rng.integers(ground, h + 1))), hh, ww)
        # A see-through frame: the middle of the box shows what is behind it.
        instances[-1][1][top + hh // 3: top + 2 * hh // 3, left + ww // 3: left + 2 * ww // 3] = False
    for _ in range(_count(rng, _PERSONS)):
        hh, ww = _span(rng, _PERSON_SIZE[0], h, 4), _span(rng, _PERSON_SIZE[1], w, 2)
        box(PERSON, min(h, int(rng.integers(ground - 2, ground + hh))), hh, ww)
    for _ in range(_count(rng, _POLES)):
        hh, ww = _span(rng, _POLE_SIZE[0], h, 6), _span(rng, _scaled(_POLE_SIZE[1], small_thing_scale), w, 1)
        top, left = box(POLE, min(h, ground + int(rng.integers(0, 3))), hh, ww)
        if rng.random() < _SIGN_ON_POLE_P:
            sh, sw = (_span(rng, _scaled(_SIGN_SIZE[0], small_thing_scale), h, 2),
                      _span(rng, _scaled(_SIGN_SIZE[1], small_thing_scale), w, 2))
            box(SIGN, top + sh // 2, sh, sw, left=max(0, min(w - sw, left + ww // 2 - sw // 2)))
    for cls, region in instances:
        mask[region] = cls

    # Colours: base colour per class, plus per-instance offsets, textures, light and noise.
    colours = np.asarray(SYNTHETIC_COLOURS, dtype=np.float32)
    image = colours[mask].copy()
    image[mask == SKY] += (rows * (25.0 / h) * np.ones((1, w)))[mask == SKY][:, None]  # brighter near the horizon
    windows = ((rows // 4) % 2 == 0) & ((np.arange(w)[None, :] // 4) % 2 == 0)
    image[(mask == BUILDING) & windows] *= 0.7                                        # window grid
    grass = mask == GRASS
    image[grass] += rng.normal(0, 18.0, size=(int(grass.sum()), 1))                   # coarse grass texture
    for cls, region in instances:
        image[region & (mask == cls)] += rng.normal(0, _INSTANCE_COLOUR_STD, size=3)
    image *= rng.uniform(*_ILLUMINATION)
    image += rng.normal(0, _PIXEL_NOISE_STD, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


_CAST_STREAM = 7  # the colour cast's own random stream, so the scenes stay those drawn without one


def colour_cast(image: np.ndarray, strength: float, seed: tuple[int, ...]) -> np.ndarray:
    """The image under a per-image colour cast: each channel times a gain drawn uniformly from
    [1 - strength, 1 + strength] (a camera's white balance and exposure; 0: unchanged)."""
    if strength <= 0:
        return image
    gains = np.random.default_rng(seed + (_CAST_STREAM,)).uniform(1 - strength, 1 + strength, size=3)
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def _scene(seed: int, stream: int, i: int, size: tuple[int, int], cast: float,
           small_thing_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    image, mask = render_scene(np.random.default_rng((seed, stream, i)), size, small_thing_scale)
    return colour_cast(image, cast, (seed, stream, i)), mask


def make_synthetic_arrays(n: int, size: tuple[int, int] = SYNTHETIC_DEFAULT_SIZE, seed: int = 0,
                          stream: int = 0, cast: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """In-memory variant: ``(images (n, H, W, 3) uint8, masks (n, H, W) uint8)``; scene ``i`` is
    drawn from ``default_rng((seed, stream, i))``, the same as the files of
    :func:`make_synthetic_dataset` (stream 0 = train, 1 = val)."""
    scenes = [_scene(seed, stream, i, size, cast) for i in range(n)]
    h, w = size
    images = np.stack([s[0] for s in scenes]) if scenes else np.zeros((0, h, w, 3), np.uint8)
    masks = np.stack([s[1] for s in scenes]) if scenes else np.zeros((0, h, w), np.uint8)
    return images, masks


def class_frequencies(masks: np.ndarray, num_classes: int = len(SYNTHETIC_CLASSES)) -> np.ndarray:
    """Share of pixels per class (ignore excluded)."""
    counts = np.bincount(masks.ravel(), minlength=256)[:num_classes].astype(np.float64)
    return counts / max(1.0, counts.sum())


def make_synthetic_dataset(out_dir: Union[str, Path], n_train: int, n_val: int,
                           size: tuple[int, int] = SYNTHETIC_DEFAULT_SIZE, seed: int = 0, cast: float = 0.0,
                           small_thing_scale: float = 1.0) -> Path:
    """Write a synthetic dataset folder readable by the ``synthetic`` (or ``folder``) definition.
    ``cast``: strength of a per-image colour cast (:func:`colour_cast`; 0 = none), which makes a few
    labeled scenes cover only a few of the looks that the unlabeled ones show. ``small_thing_scale``:
    see :func:`render_scene`.

    Layout: ``images/{train,val}_NNNNN.png``, ``masks/...png`` (class ids, mode L),
    ``train.txt`` / ``val.txt`` (``image label`` lines), ``classes.txt`` and ``synthetic.json``
    (generation parameters and per-split class frequencies). Returns ``out_dir``.
    """
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need n_train >= 1 and n_val >= 0, got {n_train}, {n_val}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    meta = {"generator": "equiseg.data.synthetic", "seed": seed, "size": list(size), "colour_cast": cast,
            "small_thing_scale": small_thing_scale,
            "classes": list(SYNTHETIC_CLASSES), "tail_classes": list(SYNTHETIC_TAIL), "splits": {}}
    for stream, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        lines, freq = [], np.zeros(len(SYNTHETIC_CLASSES))
        for i in range(n):
            image, mask = _scene(seed, stream, i, size, cast, small_thing_scale)
            stem = f"{split}_{i:05d}"
            Image.fromarray(image, mode="RGB").save(out / "images" / f"{stem}.png")
            Image.fromarray(mask, mode="L").save(out / "masks" / f"{stem}.png")
            lines.append(f"images/{stem}.png masks/{stem}.png\n")
            freq += class_frequencies(mask)
        (out / f"{split}.txt").write_text("".join(lines))
        meta["splits"][split] = {"count": n, "class_frequency": {c: round(float(f / max(n, 1)), 5)
                                                                 for c, f in zip(SYNTHETIC_CLASSES, freq)}}
    (out / SYNTHETIC_CLASSES_FILE).write_text("".join(c + "\n" for c in SYNTHETIC_CLASSES))
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
