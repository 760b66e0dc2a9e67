"""The start-up data check: every listed file of every split a run uses, before the first step.

A file that is missing, unreadable, truncated, of another size than its mask, or a mask holding a
value the dataset does not define, is an error naming the file and the list that holds it. Nothing
is skipped. It is made fast enough for Cityscapes-sized lists:

- images are checked without decoding their pixels (PNG: the chunk checksums through
  ``Image.verify``, which finds a truncated file; JPEG: its end-of-image marker);
- masks are decoded (their value set must be checked) but they are small single-channel files;
- files are checked in worker processes, with a progress bar on a terminal;
- a file that passed is remembered by (path, size, mtime) in a cache file
  (``$EQUISEG_CACHE_DIR`` or ``~/.cache/equiseg``), so a second run checks nothing again.

``equiseg check-data CONFIG`` runs the same check alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from ..run_layout import write_atomic
from .io import Pair, decode_mask, map_mask

CACHE_VERSION = 1
PARALLEL_FROM = 64
"""Below this many files the check runs in-process (worker start-up would cost more)."""
JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class ListToCheck:
    """The pairs of one list and what to call it in an error (e.g. ``val split of camvid``)."""

    name: str
    pairs: Sequence[Pair]
    check_masks: bool = True


def cache_dir() -> Path:
    return Path(os.environ.get("EQUISEG_CACHE_DIR") or Path.home() / ".cache" / "equiseg")


def _stamp(path: Path) -> Optional[str]:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, read without decoding its pixels; a truncated file is an error."""
    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
            if fmt == "PNG":
                im.verify()  # every chunk's CRC: a truncated or corrupt PNG fails here
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 4096))
                if JPEG_EOI not in f.read():
                    raise DataError(f"image {path} is truncated (no JPEG end-of-image marker)")
        return size
    except PermissionError:
        raise DataError(f"cannot read image {path}: permission denied") from None
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"cannot read image {path}: {exc}") from None


def check_pair(root: str, image: str, label: Optional[str], lut: Optional[list[int]], dataset: str) -> Optional[str]:
    """None when the pair is fine, else the one-line problem (naming the file)."""
    try:
        image_path = Path(root) / image
        if not image_path.is_file():
            return f"image {image_path} does not exist"
        size = _image_size(image_path)
        if label is not None and lut is not None:
            label_path = Path(root) / label
            if not label_path.is_file():
                return f"mask {label_path} does not exist"
            raw = decode_mask(label_path)
            if (raw.shape[1], raw.shape[0]) != size:
                return (f"image {image_path} is {size[0]}x{size[1]} but its mask {label_path} is "
                        f"{raw.shape[1]}x{raw.shape[0]} (width x height)")
            map_mask(raw, np.asarray(lut, dtype=np.int16), label_path, dataset)
        return None
    except DataError as exc:
        return str(exc)


def _check_one(task: tuple) -> Optional[str]:
    return check_pair(*task)


def check_lists(root: Path, lists: Sequence[ListToCheck], spec, workers: Optional[int] = None,
                progress: Optional[bool] = None, use_cache: bool = True) -> int:
    """Check every pair of ``lists`` (see the module docstring); returns the number of files checked
    now (0 when the cache knew them all). Raises a DataError naming the first bad file and its list,
    with the count of further bad files."""
    root = Path(root)
    cache_file = cache_dir() / "datacheck" / (hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16] + ".json")
    cache = _read_cache(cache_file) if use_cache else {}
    tasks, owners, keys = [], [], []
    for lst in lists:
        for pair in lst.pairs:
            label = pair.label if lst.check_masks else None
            key = f"{pair.image}|{label}|{spec.name}"
            stamp = "|".join(str(_stamp(root / p)) for p in (pair.image, label) if p is not None)
            if cache.get(key) == stamp and "None" not in stamp:
                continue
            lut = spec.lut_for(str(label)).tolist() if label is not None else None
            tasks.append((str(root), pair.image, label, lut, spec.name))
            owners.append(lst.name)
            keys.append((key, stamp))
    if not tasks:
        return 0
    show = sys.stderr.isatty() if progress is None else progress
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    results: list[Optional[str]]
    if workers > 1 and len(tasks) >= PARALLEL_FROM:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(_progress(pool.map(_check_one, tasks, chunksize=16), len(tasks), show))
    else:
        results = list(_progress(map(_check_one, tasks), len(tasks), show))
    bad = [(owner, problem) for owner, problem in zip(owners, results) if problem is not None]
    for (key, stamp), problem in zip(keys, results):
        if problem is None:
            cache[key] = stamp
    if use_cache:
        _write_cache(cache_file, cache)
    if bad:
        owner, problem = bad[0]
        more = f" ({len(bad) - 1} more bad file(s) in the run's lists)" if len(bad) > 1 else ""
        raise DataError(f"{problem} (listed in {owner}){more}")
    return len(tasks)


def _progress(iterable, total: int, show: bool):
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="checking data files", unit="file", leave=False)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["files"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(path: Path, files: dict) -> None:
    try:
        write_atomic(path, json.dumps({"version": CACHE_VERSION, "files": files}))
    except OSError:
        pass  # the cache only saves time
