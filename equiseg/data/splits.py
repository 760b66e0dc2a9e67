"""Partition protocols: which training images are labeled.

:func:`make_split` ranks the pool by ``sha256(f"{seed_base}:{fold}:{image_path}")`` and labels the
first ``n``. That makes a split

- deterministic across machines, processes and Python versions (no ``hash()``, no RNG state),
- nested: for one fold, the 1/16 labeled set is contained in the 1/8 labeled set,
- complete and disjoint: every pool pair is in exactly one of labeled / unlabeled,
- different per fold (and per ``seed_base``).

A fraction ``a/b`` labels ``ceil(N * a / b)`` images, which reproduces the published counts
(Cityscapes 2,975: 1/16 → 186, 1/8 → 372; VOC train_aug 10,582: 1/16 → 662, 1/8 → 1,323).

:func:`write_split` stores a split as list files plus ``split.json`` (counts and sha256 of each
list); :func:`import_split` maps lists published with other code bases onto a pool.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from ..errors import DataError
from ..run_layout import SPLIT_META_FILE
from .definitions import DatasetDefinition
from .io import Pair, PathLike, first_items, iter_list_fields, write_list_file

log = logging.getLogger("equiseg")

LABELED_FILE = "labeled.txt"
UNLABELED_FILE = "unlabeled.txt"


def _pairs(pairs: Iterable[Any]) -> list[Pair]:
    out = [p if isinstance(p, Pair) else Pair(*p) if not isinstance(p, str) else Pair(p) for p in pairs]
    seen: dict[str, int] = {}
    for i, p in enumerate(out):
        if p.image in seen:
            raise DataError(f"the pool lists image {p.image} twice (entries {seen[p.image]} and {i})")
        seen[p.image] = i
    return out


def parse_labeled(labeled: Union[str, int], pool_size: int) -> int:
    """Number of labeled images for ``labeled`` = a fraction (``'1/8'``, ``'0.125'``) of the pool,
    rounded up, or a count (``'46'``). Errors name the value and the pool size."""
    text = str(labeled).strip()
    what = f"labeled share '{labeled}' (pool of {pool_size} images)"
    if pool_size < 1:
        raise DataError(f"cannot split an empty pool ({what})")
    try:
        if "/" in text or "." in text:
            frac = Fraction(text)
            if not 0 < frac <= 1:
                raise DataError(f"{what}: a fraction must be in (0, 1]")
            return math.ceil(pool_size * frac)  # Fraction keeps this exact
        count = int(text)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"{what}: expected a fraction like '1/8' or a count like '46'") from None
    if count < 1:
        raise DataError(f"{what}: the count must be at least 1")
    if count > pool_size:
        raise DataError(f"{what}: more labeled images than the pool holds")
    return count


def split_key(image: str, fold: int, seed_base: Union[int, str] = 0) -> str:
    """The rank key of one image: hex sha256 of ``f"{seed_base}:{fold}:{image}"``."""
    return hashlib.sha256(f"{seed_base}:{fold}:{image}".encode("utf-8")).hexdigest()


def make_split(pairs: Sequence[Any], labeled: Union[str, int], fold: int = 0,
               seed_base: Union[int, str] = 0) -> tuple[list[Pair], list[Pair]]:
    """Split a pool into ``(labeled, unlabeled)``, each in pool order (see module docstring).

    Args:
        pairs: the training pool (:class:`Pair` or ``(image, label)`` tuples; image paths are the
            identity of a sample, so use root-relative paths).
        labeled: ``'1/8'``-style fraction or a count such as ``'46'``.
        fold: which of the independent random partitions.
        seed_base: extra key material, to decorrelate from another study's folds.
    """
    pool = _pairs(pairs)
    n = parse_labeled(labeled, len(pool))
    if fold < 0:
        raise DataError(f"fold must be non-negative, got {fold}")
    ranked = sorted(range(len(pool)), key=lambda i: split_key(pool[i].image, fold, seed_base))
    chosen = set(ranked[:n])
    return ([p for i, p in enumerate(pool) if i in chosen], [p for i, p in enumerate(pool) if i not in chosen])


def complement(pool: Sequence[Any], subset: Sequence[Any]) -> list[Pair]:
    """Pool pairs whose image is not in ``subset``, in pool order."""
    taken = {p[0] for p in subset}
    return [p for p in _pairs(pool) if p.image not in taken]


def _list_text(pairs: Sequence[Pair]) -> str:
    return "".join((p.image if p.label is None else f"{p.image} {p.label}") + "\n" for p in pairs)


def list_hash(pairs: Sequence[Any]) -> str:
    """sha256 of the list file content :func:`write_split` writes for these pairs."""
    return hashlib.sha256(_list_text(_pairs(pairs)).encode("utf-8")).hexdigest()


def write_split(out_dir: PathLike, labeled: Sequence[Any], unlabeled: Sequence[Any],
                meta: Optional[dict] = None) -> Path:
    """Write ``labeled.txt``, ``unlabeled.txt`` and ``split.json``; return the folder.

    Unlabeled lines keep their label path when it is known, so pseudo-label quality can be
    measured; training ignores it. ``split.json`` holds ``meta`` plus each list's count and
    sha256 (of the file's bytes), so two runs can check they used the same split.
    """
    out = Path(out_dir)
    labeled, unlabeled = _pairs(labeled), _pairs(unlabeled)
    overlap = {p.image for p in labeled} & {p.image for p in unlabeled}
    if overlap:
        log.warning("split in %s: %d image(s) are both labeled and unlabeled, e.g. %s", out, len(overlap),
                    first_items(sorted(overlap)))
    if any(p.label is None for p in labeled):
        raise DataError(f"cannot write {out / LABELED_FILE}: labeled pairs need label paths "
                        f"(e.g. {next(p.image for p in labeled if p.label is None)})")
    write_list_file(out / LABELED_FILE, labeled)
    write_list_file(out / UNLABELED_FILE, unlabeled)
    info = dict(meta or {})
    for key, name, pairs in (("labeled", LABELED_FILE, labeled), ("unlabeled", UNLABELED_FILE, unlabeled)):
        info[key] = {"file": name, "count": len(pairs),
                     "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}
    (out / SPLIT_META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out


def read_split(split_dir: PathLike) -> tuple[list[Pair], list[Pair], dict]:
    """Read a folder written by :func:`write_split`, checking the stored hashes."""
    from .io import read_list_file

    d = Path(split_dir)
    meta_file = d / SPLIT_META_FILE
    if not meta_file.is_file():
        raise DataError(f"{d} is not a split folder: {SPLIT_META_FILE} is missing")
    meta = json.loads(meta_file.read_text())
    lists = []
    for key, name, labeled in (("labeled", LABELED_FILE, True), ("unlabeled", UNLABELED_FILE, False)):
        digest = hashlib.sha256((d / name).read_bytes()).hexdigest() if (d / name).is_file() else None
        if digest != meta.get(key, {}).get("sha256"):
            raise DataError(f"{d / name} does not match the sha256 recorded in {meta_file}; the split was edited")
        lists.append(read_list_file(d / name, with_labels=labeled))
    return lists[0], lists[1], meta


# --------------------------------------------------------------------------- peer lists


def _clean(path: str) -> str:
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def _same_tail(a: str, b: str) -> bool:
    """Whether the shorter path's components are the tail of the longer's (``b/x.png`` vs ``root/b/x.png``)."""
    pa, pb = _clean(a).split("/"), _clean(b).split("/")
    n = min(len(pa), len(pb))
    return pa[-n:] == pb[-n:]


def import_split(file: PathLike, root: PathLike, definition: DatasetDefinition,
                 pool: Optional[Sequence[Any]] = None) -> list[Pair]:
    """Map a list published with another code base onto pool pairs (in the file's order).

    Accepted lines: bare sample ids (U2PL VOC lists: ``2007_000032``), image paths, or
    ``image label`` paths in any layout convention (UniMatch: ``JPEGImages/x.jpg
    SegmentationClass/x.png``, ``leftImg8bit/train/<city>/<id>_leftImg8bit.png
    gtFine/train/<city>/<id>_gtFine_labelTrainIds.png``; DeepLab: ``/JPEGImages/x.jpg ...``).
    An entry matches a pool pair by its root-relative image path, else by sample id
    (``definition.sample_id``: the file stem minus suffixes such as ``_leftImg8bit``).

    Args:
        file: the list to import.
        root: dataset root (to enumerate the default pool and to word errors).
        definition: the dataset definition, for ids and the default pool.
        pool: the pool to map onto; default: the definition's ``train`` pairs under ``root``.

    Entries not in the pool, ambiguous ids, repeated entries, a label whose id differs from its
    image's, and malformed lines are DataErrors naming the file and line.
    """
    file = Path(file)
    if not file.is_file():
        raise DataError(f"split list not found: {file}")
    pool_pairs = _pairs(pool if pool is not None else definition.pairs(root, "train"))
    by_path = {_clean(p.image): i for i, p in enumerate(pool_pairs)}
    by_id: dict[str, list[int]] = {}
    for i, p in enumerate(pool_pairs):
        by_id.setdefault(definition.sample_id(p.image), []).append(i)

    matched: list[int] = []
    first_line: dict[int, int] = {}
    unknown: list[str] = []
    for lineno, fields in iter_list_fields(file, "'id', 'image' or 'image label'"):
        image = _clean(fields[0])
        sid = definition.sample_id(image)
        if len(fields) == 2 and definition.sample_id(_clean(fields[1])) != sid:
            raise DataError(f"{file}:{lineno}: label {fields[1]} does not belong to image {fields[0]} "
                            f"(ids '{definition.sample_id(_clean(fields[1]))}' vs '{sid}')")
        index = by_path.get(image)
        if index is None:
            candidates = by_id.get(sid, [])
            if len(candidates) > 1:
                # Same id in several folders: the entry's path must disambiguate by suffix.
                candidates = [i for i in candidates if _same_tail(pool_pairs[i].image, image)]
            if len(candidates) > 1:
                raise DataError(f"{file}:{lineno}: {fields[0]} matches {len(candidates)} pool images: "
                                f"{first_items([pool_pairs[i].image for i in candidates])}")
            index = candidates[0] if candidates else None
        if index is None:
            unknown.append(f"line {lineno}: {fields[0]}")
            continue
        if index in first_line:
            raise DataError(f"{file}:{lineno}: {fields[0]} repeats the sample of line {first_line[index]}")
        first_line[index] = lineno
        matched.append(index)
    if unknown:
        raise DataError(f"{file}: {len(unknown)} entr{'y is' if len(unknown) == 1 else 'ies are'} not in the "
                        f"{definition.name} pool of {len(pool_pairs)} images under {root}: {first_items(unknown)}")
    if not matched:
        raise DataError(f"{file} lists no samples")
    return [pool_pairs[i] for i in matched]
