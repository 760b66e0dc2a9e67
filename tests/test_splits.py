"""Partition protocols: determinism, nesting, completeness, persistence, peer-list import."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_png
from equiseg.data.io import Pair
from equiseg.data.definitions import get_dataset_definition
from equiseg.data.splits import (complement, import_split, list_hash, make_split, parse_labeled, read_split,
                                 split_key, write_split)
from equiseg.errors import DataError

POOL = [Pair(f"images/{i:04d}.png", f"masks/{i:04d}.png") for i in range(100)]

# Computed once with this implementation; a change means every published split changes.
EXPECTED = {
    ("1/8", 0): (13, "4f1f83e0385c817e09612a218a0d5d9471fe91e0bc7d2bc2691046c59118934e"),
    ("1/8", 1): (13, "93cdda99ededa92b46dbc49f064c52c1c838606dfa87275ba20ba87b46215236"),
    ("1/16", 0): (7, "d2fd4ba521b304a43b9fc74b7c10e0ff2aa8ff254b871a1f585a1d09eb83b0ce"),
    ("46", 0): (46, "cda0a705111af7efad22404d9687e3eb68ebf774631d3dfc3fab1220272ec6d5"),
}


@pytest.mark.parametrize("labeled,fold", list(EXPECTED))
def test_split_is_stable(labeled, fold):
    lab, unl = make_split(POOL, labeled, fold)
    count, digest = EXPECTED[(labeled, fold)]
    assert len(lab) == count and len(unl) == 100 - count
    assert list_hash(lab) == digest


def test_split_does_not_depend_on_process_or_pool_order():
    shuffled = POOL[:]
    random.Random(5).shuffle(shuffled)
    assert {p.image for p in make_split(shuffled, "1/8", 0)[0]} == {p.image for p in make_split(POOL, "1/8", 0)[0]}
    # A fresh interpreter with another hash seed gives the same split.
    code = ("from equiseg.data.splits import make_split, list_hash; from equiseg.data.io import Pair;"
            "pool=[Pair(f'images/{i:04d}.png', f'masks/{i:04d}.png') for i in range(100)];"
            "print(list_hash(make_split(pool, '1/8', 0)[0]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == EXPECTED[("1/8", 0)][1]


@pytest.mark.parametrize("fold", range(3))
def test_splits_are_nested_disjoint_and_complete(fold):
    previous = set()
    for share in ("1/32", "1/16", "1/8", "1/4", "1/2", "1/1"):
        lab, unl = make_split(POOL, share, fold)
        lab_set, unl_set = {p.image for p in lab}, {p.image for p in unl}
        assert previous <= lab_set
        assert not lab_set & unl_set and len(lab) + len(unl) == len(POOL)
        assert lab_set | unl_set == {p.image for p in POOL}
        assert [p for p in POOL if p.image in lab_set] == lab  # pool order kept
        previous = lab_set


def test_folds_and_seed_base_differ():
    folds = [{p.image for p in make_split(POOL, "1/8", f)[0]} for f in range(4)]
    assert all(a != b for i, a in enumerate(folds) for b in folds[i + 1:])
    assert {p.image for p in make_split(POOL, "1/8", 0, seed_base="other")[0]} != folds[0]
    assert split_key("a.png", 0) == split_key("a.png", 0) != split_key("a.png", 1)


def test_published_counts():
    assert [parse_labeled(s, 2975) for s in ("1/32", "1/16", "1/8", "1/4", "1/2")] == [93, 186, 372, 744, 1488]
    assert [parse_labeled(s, 10582) for s in ("1/16", "1/8", "1/4", "1/2")] == [662, 1323, 2646, 5291]
    assert parse_labeled("1/8", 367) == parse_labeled("0.125", 367) == parse_labeled("46", 367) == 46
    assert parse_labeled(92, 1464) == 92


@pytest.mark.parametrize("bad", ["1/0", "0", "0/8", "-1", "3/2", "abc", "1/8/2", "101", "1.5", ""])
def test_bad_labeled_values(bad):
    with pytest.raises(DataError, match=f"labeled share '{bad}'"):
        make_split(POOL, bad, 0)


def test_pool_errors():
    with pytest.raises(DataError, match="twice"):
        make_split(POOL + POOL[:1], "1/8", 0)
    with pytest.raises(DataError, match="fold"):
        make_split(POOL, "1/8", -1)


def test_write_and_read_split(tmp_path):
    lab, unl = make_split(POOL, "1/8", 0)
    unl = unl[:-1] + [Pair("images/extra.png")]  # an unlabeled image without a known label
    out = write_split(tmp_path / "split", lab, unl, {"dataset": "demo", "labeled_share": "1/8"})
    lines = (out / "unlabeled.txt").read_text().splitlines()
    assert lines[0] == f"{unl[0].image} {unl[0].label}" and lines[-1] == "images/extra.png"
    meta = json.loads((out / "split.json").read_text())
    assert meta["labeled"]["count"] == 13 and meta["unlabeled"]["count"] == 87 and meta["dataset"] == "demo"
    assert meta["labeled"]["sha256"] == list_hash(lab) == EXPECTED[("1/8", 0)][1]
    r_lab, r_unl, r_meta = read_split(out)
    assert r_lab == lab and r_unl == unl and r_meta == meta
    (out / "labeled.txt").write_text((out / "labeled.txt").read_text() + "images/0000.png masks/0000.png\n")
    with pytest.raises(DataError, match="labeled.txt does not match"):
        read_split(out)
    with pytest.raises(DataError, match="need label paths"):
        write_split(tmp_path / "x", [Pair("a.png")], [])


def test_complement_keeps_pool_order():
    lab = [POOL[5], POOL[2]]
    rest = complement(POOL, lab)
    assert len(rest) == 98 and rest[:3] == [POOL[0], POOL[1], POOL[3]]


# --------------------------------------------------------------------------- peer lists


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = ["2007_000032", "2007_000039", "2007_000063", "2008_000008"]
    for i in ids:
        write_png(root / "JPEGImages" / f"{i}.jpg", np.zeros((4, 4, 3), np.uint8))
        write_png(root / "SegmentationClass" / f"{i}.png", np.zeros((4, 4), np.uint8), "L")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return tmp_path


def test_import_peer_lists_voc(voc_root, tmp_path):
    d = get_dataset_definition("voc")
    expected = [Pair("JPEGImages/2007_000063.jpg", "SegmentationClass/2007_000063.png"),
                Pair("JPEGImages/2007_000032.jpg", "SegmentationClass/2007_000032.png")]
    formats = {
        "u2pl_ids.txt": "2007_000063\n2007_000032\n",
        "unimatch.txt": "JPEGImages/2007_000063.jpg SegmentationClass/2007_000063.png\n"
                        "JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n",
        "deeplab.txt": "/JPEGImages/2007_000063.jpg /SegmentationClassAug/2007_000063.png\n"
                       "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n",
        "abs.txt": "# exported elsewhere\n/data/VOC2012/JPEGImages/2007_000063.jpg\n\n"
                   "/data/VOC2012/JPEGImages/2007_000032.jpg\n",
    }
    for name, text in formats.items():
        (tmp_path / name).write_text(text)
        assert import_split(tmp_path / name, voc_root, d) == expected, name
    # The result plugs into the complement for the unlabeled part.
    assert len(complement(d.pairs(voc_root, "train"), expected)) == 2


def test_import_errors(voc_root, tmp_path):
    d = get_dataset_definition("voc")
    cases = {
        "missing.txt": ("2007_000063\n2012_999999\n",
                        r"missing\.txt: 1 entry is not in the voc pool.*line 2: 2012_999999"),
        "mismatch.txt": ("JPEGImages/2007_000063.jpg SegmentationClass/2007_000032.png\n", r"mismatch\.txt:1: label"),
        "repeat.txt": ("2007_000063\n2007_000039\nJPEGImages/2007_000063.jpg\n", r"repeat\.txt:3: .*line 1"),
        "fields.txt": ("a b c\n", r"fields\.txt:1"),
        "empty.txt": ("# nothing\n", "lists no samples"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=pattern):
            import_split(tmp_path / name, voc_root, d)
    with pytest.raises(DataError, match="not found"):
        import_split(tmp_path / "absent.txt", voc_root, d)


def test_import_cityscapes_unimatch_list_onto_label_ids_pool(tmp_path):
    pytest.importorskip("cityscapesscripts")
    for city, n in (("aachen", 3), ("bremen", 2)):
        for k in range(n):
            base = f"{city}_{k:06d}_000019"
            write_png(tmp_path / "leftImg8bit/train" / city / f"{base}_leftImg8bit.png", np.zeros((2, 2, 3), np.uint8))
            write_png(tmp_path / "gtFine/train" / city / f"{base}_gtFine_labelIds.png", np.zeros((2, 2), np.uint8), "L")
    lst = tmp_path / "labeled.txt"
    lst.write_text("leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png "
                   "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png\n"
                   "aachen_000002_000019\n")
    got = import_split(lst, tmp_path, get_dataset_definition("cityscapes"))
    assert got == [Pair("leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png",
                        "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png"),
                   Pair("leftImg8bit/train/aachen/aachen_000002_000019_leftImg8bit.png",
                        "gtFine/train/aachen/aachen_000002_000019_gtFine_labelIds.png")]


def test_import_with_ambiguous_stems_uses_the_path(tmp_path):
    pool = [Pair("a/x.png", "a/x_m.png"), Pair("b/x.png", "b/x_m.png")]
    d = get_dataset_definition("folder", classes=["bg", "fg"])
    (tmp_path / "l.txt").write_text("root/b/x.png\n")
    assert import_split(tmp_path / "l.txt", tmp_path, d, pool=pool) == [pool[1]]
    (tmp_path / "l.txt").write_text("x.png\n")
    with pytest.raises(DataError, match="matches 2 pool images"):
        import_split(tmp_path / "l.txt", tmp_path, d, pool=pool)


def test_camvid_split_on_real_data(camvid_root):
    d = get_dataset_definition("camvid")
    lab, unl = make_split(d.pairs(camvid_root, "train"), "1/8", 0)
    assert (len(lab), len(unl)) == (46, 321)
