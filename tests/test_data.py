"""Data layer: list datasets, decoding errors, paired transforms, strong view, definitions."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import PATTERN_COLOURS, PATTERN_SPEC, pattern_pair, write_png
from equiseg.config import DataConfig
from equiseg.data.augment import StrongPhotometric, cutmix_box_mask, random_box_masks
from equiseg.data.build import build_run_data, resolve_split
from equiseg.data.list_dataset import ListDataset
from equiseg.data.io import Pair, read_list_file
from equiseg.data.definitions import get_dataset_definition
from equiseg.data.spec import IGNORE_INDEX
from equiseg.data.synthetic import (SYNTHETIC_CLASSES, SYNTHETIC_SPEC, SYNTHETIC_TAIL, class_frequencies,
                                    make_synthetic_arrays)
from equiseg.data.transforms import (Compose, HorizontalFlip, RandomCrop, RandomScale, ToTensor, denormalize,
                                     eval_transform, train_transform)
from equiseg.errors import DataError


def cfg(**kw) -> DataConfig:
    base = dict(crop_size=(40, 40), scale_range=(0.5, 2.0), flip=True)
    base.update(kw)
    return DataConfig(**base)


def assert_aligned(sample: dict, spec=PATTERN_SPEC, min_pure: float = 0.5) -> None:
    """Wherever the (denormalised) image shows a pure pattern colour, the label is that colour's class."""
    image = denormalize(sample["image"], spec).astype(np.int16)
    label, valid = sample["label"].numpy(), sample["valid"].numpy()
    pure = np.zeros(label.shape, dtype=bool)
    for cls, colour in enumerate(PATTERN_COLOURS):
        here = np.all(image == np.asarray(colour), axis=-1) & valid
        assert np.all(label[here] == cls), f"class {cls}: {np.sum(label[here] != cls)} misaligned pixels"
        pure |= here
    assert pure.sum() >= min_pure * valid.sum(), "too few pure pixels: the alignment check would be vacuous"
    assert np.all(label[~valid] == IGNORE_INDEX)


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_mask_aligned(pattern_root, seed):
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC, train_transform(cfg(), PATTERN_SPEC))
    sample = ds[(seed % len(ds), seed)]
    assert sample["image"].shape == (3, 40, 40) and sample["label"].shape == (40, 40)
    assert sample["label"].dtype == torch.long and sample["valid"].dtype == torch.bool
    assert_aligned(sample)


def test_each_geometric_step_moves_image_and_mask_together():
    image, mask = pattern_pair(np.random.default_rng(0), 48, 64, 8)
    base = {"image": image, "label": mask, "valid": np.ones(mask.shape, bool)}
    flipped = HorizontalFlip(p=1.0)(base, np.random.default_rng(0))
    assert np.array_equal(flipped["image"], image[:, ::-1]) and np.array_equal(flipped["label"], mask[:, ::-1])
    kept = HorizontalFlip(p=0.0)(base, np.random.default_rng(0))
    assert np.array_equal(kept["image"], image)
    scaled = RandomScale((1.5, 1.5))(base, np.random.default_rng(0))
    assert scaled["image"].shape[:2] == scaled["label"].shape == (72, 96)
    cropped = RandomCrop((30, 20), PATTERN_SPEC.mean)(base, np.random.default_rng(1))
    # A crop is a window of the original: find it and compare both arrays.
    hits = [(t, l) for t in range(48 - 30 + 1) for l in range(64 - 20 + 1)
            if np.array_equal(image[t:t + 30, l:l + 20], cropped["image"])]
    assert any(np.array_equal(mask[t:t + 30, l:l + 20], cropped["label"]) for t, l in hits)
    # Masks resize nearest: no new values appear between 0, 10, 20 and 255.
    sparse = {"image": image, "label": np.where(mask > 2, 255, mask * 10).astype(np.uint8), "valid": base["valid"]}
    for s in (0.37, 0.8, 1.7):
        assert set(np.unique(RandomScale((s, s))(sparse, np.random.default_rng(0))["label"])) <= {0, 10, 20, 255}
    to_tensor = ToTensor(PATTERN_SPEC.mean, PATTERN_SPEC.std)
    for step in (RandomScale((0.5, 0.7)), RandomScale((1.3, 2.0))):
        assert_aligned(to_tensor(step(base, np.random.default_rng(3)), None), min_pure=0.3)


def test_crop_padding_is_ignore_mean_colour_and_invalid():
    image, mask = pattern_pair(np.random.default_rng(0), 20, 30, 5)
    transform = Compose([RandomScale((1.0, 1.0)), RandomCrop((40, 50), PATTERN_SPEC.mean),
                         ToTensor(PATTERN_SPEC.mean, PATTERN_SPEC.std)])
    out = transform({"image": image, "label": mask, "valid": np.ones(mask.shape, bool)}, np.random.default_rng(0))
    label, valid = out["label"].numpy(), out["valid"].numpy()
    assert valid.sum() == 20 * 30
    assert np.all(label[~valid] == 255) and not np.any(label[valid] == 255)
    padded = denormalize(out["image"], PATTERN_SPEC)[~valid]
    assert np.all(padded == np.round(PATTERN_SPEC.mean).astype(np.uint8))
    # The mean colour normalises to (almost) zero: padding does not inject a bright border.
    assert out["image"].permute(1, 2, 0)[torch.from_numpy(~valid)].abs().max() < 0.01
    assert np.array_equal(label[:20, :30], mask)  # padding goes bottom/right, the image stays whole


def test_unlabeled_samples_have_valid_but_no_label(pattern_root):
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC,
                     train_transform(cfg(crop_size=(60, 80), scale_range=(1.0, 1.0)), PATTERN_SPEC, strong_view=True),
                     with_labels=False)
    s = ds[0]
    assert "label" not in s and s["valid"].sum() == 48 * 64
    assert set(s) == {"image", "image_strong", "valid", "index", "name"}


def test_same_seed_same_sample_different_seed_differs(synthetic_root):
    d = get_dataset_definition("synthetic")
    ds = d.dataset(synthetic_root, "train", train_transform(cfg(), d.spec, strong_view=True))
    a, b = ds[(3, 7)], ds[(3, 7)]
    ds[(5, 1)]  # unrelated draws in between must not matter (no global RNG state)
    c = ds.load(3, 7)
    for key in ("image", "image_strong", "label", "valid"):
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    assert (a["index"], a["name"]) == (3, "train_00003")
    other = ds[(3, 8)]
    assert not torch.equal(a["image"], other["image"])
    assert torch.equal(ds[3]["image"], ds[(3, 3)]["image"])  # an int index uses seed = index


def test_strong_view_shares_geometry_and_changes_colours(synthetic_root):
    d = get_dataset_definition("synthetic")
    weak = d.dataset(synthetic_root, "train", train_transform(cfg(), d.spec, strong_view=False))
    strong_ds = d.dataset(synthetic_root, "train", train_transform(cfg(), d.spec, strong_view=True))
    changed = 0
    for seed in range(6):
        w, s = weak[(1, seed)], strong_ds[(1, seed)]
        # Strong draws come after the geometric ones, so the weak view is identical.
        assert torch.equal(w["image"], s["image"]) and torch.equal(w["label"], s["label"])
        changed += not torch.equal(s["image"], s["image_strong"])
        # Replay: geometry on the decoded sample, then the strong aug on a copy of the crop.
        image, label = strong_ds.decode(1)
        rng = np.random.default_rng((seed, 1))
        sample = {"image": image, "label": label, "valid": np.ones(label.shape, bool)}
        for step in strong_ds.transform.steps[:3]:  # scale, crop, flip
            sample = step(sample, rng)
        expected = StrongPhotometric()(np.ascontiguousarray(sample["image"]), rng)
        assert np.array_equal(denormalize(s["image_strong"], d.spec), expected)
    assert changed >= 4  # colour jitter (p=0.8) or grayscale changes nearly every view


def test_eval_transform_keeps_full_image(synthetic_root):
    d = get_dataset_definition("synthetic")
    s = d.dataset(synthetic_root, "val", eval_transform(d.spec))[0]
    assert s["image"].shape == (3, 48, 64) and bool(s["valid"].all())
    assert s["label"].max() < len(SYNTHETIC_CLASSES)


def test_image_scale_resizes_image_and_mask(pattern_root):
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC, image_scale=0.5)
    s = ds[0]
    assert s["image"].shape == (3, 24, 32) and s["label"].shape == (24, 32)
    assert_aligned(s, min_pure=0.2)


# --------------------------------------------------------------------------- errors


def test_missing_listed_file_is_an_error_naming_it(pattern_root):
    (pattern_root / "bad.txt").write_text("img/p0.png lbl/p0.png\nimg/nope.png lbl/p1.png\n")
    with pytest.raises(DataError, match=r"bad\.txt.*img/nope\.png"):
        ListDataset(pattern_root, pattern_root / "bad.txt", PATTERN_SPEC)


def test_malformed_list_lines(pattern_root):
    (pattern_root / "three.txt").write_text("# comment\n\nimg/p0.png lbl/p0.png\nimg/p1.png lbl/p1.png extra\n")
    with pytest.raises(DataError, match=r"three\.txt:4"):
        read_list_file(pattern_root / "three.txt")
    (pattern_root / "nolabel.txt").write_text("img/p0.png lbl/p0.png\nimg/p1.png\n")
    with pytest.raises(DataError, match=r"nolabel\.txt:2.*no label"):
        ListDataset(pattern_root, pattern_root / "nolabel.txt", PATTERN_SPEC)
    # The same list is fine for unlabeled data.
    assert len(ListDataset(pattern_root, pattern_root / "nolabel.txt", PATTERN_SPEC, with_labels=False)) == 2
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(pattern_root / "absent.txt")


def test_corrupt_image_bytes(pattern_root):
    (pattern_root / "img" / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC)
    ds[0]
    with pytest.raises(DataError, match=r"cannot decode image .*p1\.png"):
        ds[1]


def test_truncated_image(pattern_root):
    data = (pattern_root / "img" / "p2.png").read_bytes()
    (pattern_root / "img" / "p2.png").write_bytes(data[: len(data) // 2])
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC)
    with pytest.raises(DataError, match=r"p2\.png"):
        ds[2]


def test_size_mismatch_names_both_files(pattern_root):
    write_png(pattern_root / "lbl" / "p0.png", np.zeros((40, 64), np.uint8), "L")
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC)
    with pytest.raises(DataError, match=r"img/p0\.png is 64x48 .*lbl/p0\.png is 64x40"):
        ds[0]


def test_out_of_range_mask_value(pattern_root):
    mask = np.zeros((48, 64), np.uint8)
    mask[0, :3] = (7, 9, 200)
    write_png(pattern_root / "lbl" / "p3.png", mask, "L")
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC)
    with pytest.raises(DataError, match=r"p3\.png has values \[7, 9, 200\]"):
        ds[3]


def test_rgb_mask_is_rejected(pattern_root):
    write_png(pattern_root / "lbl" / "p1.png", np.zeros((48, 64, 3), np.uint8))
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC)
    with pytest.raises(DataError, match=r"p1\.png has mode RGB"):
        ds[1]


def test_palette_mask_indices_are_the_values(pattern_root):
    from PIL import Image

    mask = np.full((48, 64), 2, np.uint8)
    mask[:, :10] = 255  # VOC-style border
    im = Image.fromarray(mask, mode="P")
    im.putpalette([0, 0, 0] * 256)  # colours are irrelevant: the indices are the labels
    im.save(pattern_root / "lbl" / "p0.png")
    label = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC).decode(0)[1]
    assert np.array_equal(label, mask)


def test_bad_keys_and_scale(pattern_root):
    ds = ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC)
    with pytest.raises(IndexError):
        ds[4]
    assert ds[-1]["index"] == 3
    with pytest.raises(ValueError):
        ListDataset(pattern_root, pattern_root / "list.txt", PATTERN_SPEC, image_scale=1.5)
    with pytest.raises(DataError, match="not a folder"):
        ListDataset(pattern_root / "nowhere", [("a.png", "b.png")], PATTERN_SPEC)


# --------------------------------------------------------------------------- definitions


def test_unknown_dataset_and_layout_errors(tmp_path):
    with pytest.raises(DataError, match="did you mean 'camvid'"):
        get_dataset_definition("camvd")
    with pytest.raises(DataError, match="data.classes"):
        get_dataset_definition("folder")
    with pytest.raises(DataError, match=r"trainannot"):
        get_dataset_definition("camvid").pairs(tmp_path, "train")
    with pytest.raises(DataError, match=r"JPEGImages"):
        get_dataset_definition("voc").pairs(tmp_path / "missing", "train")
    with pytest.raises(DataError, match="no default split 'test'"):
        get_dataset_definition("synthetic").pairs(tmp_path, "test")


def test_camvid_pairing_errors_on_unmatched_files(tmp_path):
    for split in ("train", "trainannot"):
        write_png(tmp_path / split / "a.png", np.zeros((4, 4), np.uint8), "L")
    write_png(tmp_path / "train" / "b.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"have no mask .*\bb\b"):
        get_dataset_definition("camvid").pairs(tmp_path, "train")


def test_camvid_definition_on_real_data(camvid_root):
    d = get_dataset_definition("camvid")
    assert d.spec.num_classes == 11 and d.spec.tail_classes == ("Pole", "SignSymbol", "Fence", "Pedestrian",
                                                                 "Bicyclist")
    train, val = d.pairs(camvid_root, "train"), d.pairs(camvid_root, "val")
    assert (len(train), len(val)) == (367, 101)
    assert all(p.image.split("/")[-1] == p.label.split("/")[-1] for p in train)
    ds = d.dataset(camvid_root, "train", train_transform(cfg(crop_size=(321, 321)), d.spec, strong_view=True))
    s = ds[(0, 0)]
    values = set(torch.unique(s["label"]).tolist())
    assert values <= set(range(11)) | {255} and values & set(range(11))
    # Raw void (11) becomes ignore.
    from equiseg.data.io import decode_mask

    raw = decode_mask(ds.label_path(0))
    label = ds.decode(0)[1]
    assert np.all(label[raw == 11] == 255) and np.array_equal(label[raw < 11], raw[raw < 11])
    t = time.perf_counter()
    for i in range(10):
        ds[(i, i)]
    print(f"\nCamVid decode + augment (strong view): {(time.perf_counter() - t) / 10 * 1000:.1f} ms/sample")


def _cityscapes_tree(root):
    ids = np.array([[7, 26, 0, 33], [24, 11, 19, 4]], np.uint8)  # road, car, unlabeled, bicycle / ...
    img = np.zeros((2, 4, 3), np.uint8)
    base = "aachen_000000_000019"
    write_png(root / "leftImg8bit/train/aachen" / f"{base}_leftImg8bit.png", img)
    write_png(root / "gtFine/train/aachen" / f"{base}_gtFine_labelIds.png", ids, "L")
    train_ids = np.array([[0, 13, 255, 18], [11, 2, 6, 255]], np.uint8)
    write_png(root / "leftImg8bit/train/bremen" / "bremen_000001_000019_leftImg8bit.png", img)
    write_png(root / "gtFine/train/bremen" / "bremen_000001_000019_gtFine_labelTrainIds.png", train_ids, "L")
    return train_ids


def test_cityscapes_definition_maps_label_ids(tmp_path):
    pytest.importorskip("cityscapesscripts")
    expected = _cityscapes_tree(tmp_path)
    d = get_dataset_definition("cityscapes")
    assert d.spec.num_classes == 19 and d.spec.class_names[0] == "road" and d.spec.palette[13] == (0, 0, 142)
    assert set(d.spec.tail_classes) == {"wall", "traffic light", "traffic sign", "rider", "truck", "bus", "train",
                                        "motorcycle", "bicycle"}
    pairs = d.pairs(tmp_path, "train")
    assert [p.label.rsplit("_", 1)[-1] for p in pairs] == ["labelIds.png", "labelTrainIds.png"]
    ds = d.dataset(tmp_path, pairs)
    assert np.array_equal(ds[0]["label"].numpy(), expected)  # labelIds → trainIds
    assert np.array_equal(ds[1]["label"].numpy(), expected)  # labelTrainIds as they are
    assert d.sample_id(pairs[0].image) == "aachen_000000_000019"
    bad = np.full((2, 4), 40, np.uint8)
    write_png(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", bad, "L")
    with pytest.raises(DataError, match=r"labelIds\.png has values \[40\]"):
        ds[0]
    (tmp_path / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match="bremen_000001_000019"):
        d.pairs(tmp_path, "train")


def test_ade20k_lut():
    lut = get_dataset_definition("ade20k").spec.lut_array()
    assert lut[0] == 255 and lut[1] == 0 and lut[150] == 149 and lut[151] == -1
    assert get_dataset_definition("ade20k").spec.num_classes == 150


def test_voc_root_and_lut(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    d = get_dataset_definition("voc")
    assert d.resolve_root(tmp_path) == voc
    assert d.pairs(tmp_path, "train")[1] == Pair("JPEGImages/2007_000039.jpg", "SegmentationClass/2007_000039.png")
    lut = d.spec.lut_array()
    assert lut[20] == 20 and lut[255] == 255 and lut[21] == -1


def test_voc_aug_rejects_val_leak(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    d = get_dataset_definition("voc_aug")
    with pytest.raises(DataError, match="train_aug list"):
        d.pairs(tmp_path, "train")
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000032\n2007_000033\n")
    with pytest.raises(DataError, match="VOC val image"):
        d.pairs(tmp_path, "train")
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    assert d.pairs(tmp_path, "train") == [Pair("JPEGImages/2007_000032.jpg", "SegmentationClassAug/2007_000032.png")]


def test_folder_definition(tmp_path):
    for stem in ("a", "b"):
        write_png(tmp_path / "images" / f"{stem}.jpg", np.zeros((8, 8, 3), np.uint8))
        write_png(tmp_path / "masks" / f"{stem}.png", np.ones((8, 8), np.uint8), "L")
    d = get_dataset_definition("folder", classes=["bg", "fg"])
    pairs = d.pairs(tmp_path, "train")
    assert pairs == [Pair("images/a.jpg", "masks/a.png"), Pair("images/b.jpg", "masks/b.png")]
    assert d.dataset(tmp_path, "train")[0]["label"].unique().tolist() == [1]
    with pytest.raises(DataError, match="val_list"):
        d.pairs(tmp_path, "val")
    write_png(tmp_path / "images" / "c.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"have no mask.*\bc\b"):
        d.pairs(tmp_path, "train")


# --------------------------------------------------------------------------- synthetic, CutMix, build


def test_synthetic_scenes_are_deterministic_and_long_tailed():
    a_img, a_mask = make_synthetic_arrays(40, (48, 64), seed=3)
    b_img, b_mask = make_synthetic_arrays(40, (48, 64), seed=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(make_synthetic_arrays(2, (48, 64), seed=4)[0], a_img[:2])
    freq = class_frequencies(a_mask)
    tail = [SYNTHETIC_CLASSES.index(c) for c in SYNTHETIC_TAIL]
    assert all(0 < freq[i] < 0.02 for i in tail)
    assert freq.max() / freq[tail].min() > 50  # about two orders of magnitude
    assert SYNTHETIC_SPEC.tail_ids == tail


def test_synthetic_definition_reads_generated_folder(synthetic_root):
    d = get_dataset_definition("synthetic")
    assert len(d.pairs(synthetic_root, "train")) == 12 and len(d.pairs(synthetic_root, "val")) == 4
    (synthetic_root / "classes.txt").write_text("sky\nroad\n")
    try:
        with pytest.raises(DataError, match="regenerate"):
            d.pairs(synthetic_root, "train")
    finally:
        (synthetic_root / "classes.txt").write_text("".join(c + "\n" for c in SYNTHETIC_CLASSES))


def test_cutmix_box_mask():
    boxes = [cutmix_box_mask(64, 96, np.random.default_rng(s), p=1.0) for s in range(50)]
    for m in boxes:
        assert m.dtype == bool and m.shape == (64, 96)
        ys, xs = np.nonzero(m)
        assert m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # one rectangle
        assert 0.01 < m.mean() <= 0.4
    again = [cutmix_box_mask(64, 96, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(*again)
    assert not cutmix_box_mask(64, 96, np.random.default_rng(0), p=0.0).any()
    with pytest.raises(ValueError):
        cutmix_box_mask(8, 8, np.random.default_rng(0), area=(0.5, 0.1))


def test_random_box_masks():
    g = torch.Generator().manual_seed(0)
    masks = random_box_masks(64, 32, 48, g)
    assert masks.shape == (64, 32, 48) and masks.dtype == torch.bool
    share = masks.float().mean(dim=(1, 2))
    assert share.min() > 0.005 and share.max() <= 0.4
    assert torch.equal(masks, random_box_masks(64, 32, 48, torch.Generator().manual_seed(0)))
    half = random_box_masks(400, 16, 16, torch.Generator().manual_seed(1), p=0.5)
    assert 0.35 < half.flatten(1).any(1).float().mean() < 0.65


def test_build_run_data_on_synthetic(synthetic_root, tmp_path):
    data = DataConfig(dataset="synthetic", root=str(synthetic_root), labeled="1/4", crop_size=(32, 32))
    run_cfg = SimpleNamespace(data=data, method=SimpleNamespace(name="unimatch"))
    rd = build_run_data(run_cfg, strong_view=True, needs_unlabeled=True, run_dir=tmp_path)
    assert (len(rd.labeled), len(rd.unlabeled), len(rd.val)) == (3, 9, 4)
    assert "image_strong" in rd.unlabeled[0] and "image_strong" not in rd.labeled[0]
    assert (tmp_path / "split" / "split.json").is_file()
    sup = DataConfig(dataset="synthetic", root=str(synthetic_root))
    assert len(resolve_split(sup).labeled) == 12
    with pytest.raises(DataError, match="all labeled"):
        build_run_data(SimpleNamespace(data=sup, method=SimpleNamespace(name="unimatch")), needs_unlabeled=True)


def test_train_id_labels_skip_the_raw_lut(pattern_root):
    from equiseg.data.spec import DatasetSpec

    lut = [-1] * 256
    lut[10], lut[20], lut[255] = 0, 1, 255  # raw masks use 10/20; pseudo-labels hold train ids 0/1
    spec = DatasetSpec("shifted", ("a", "b"), label_lut=tuple(lut))
    write_png(pattern_root / "raw.png", np.full((48, 64), 20, np.uint8), "L")
    write_png(pattern_root / "pseudo.png", np.full((48, 64), 1, np.uint8), "L")
    raw = ListDataset(pattern_root, [("img/p0.png", "raw.png")], spec)
    pseudo = ListDataset(pattern_root, [("img/p0.png", "pseudo.png")], spec, train_id_labels=True)
    assert raw[0]["label"].unique().tolist() == pseudo[0]["label"].unique().tolist() == [1]
    with pytest.raises(DataError, match=r"raw\.png has values \[20\]"):
        ListDataset(pattern_root, [("img/p0.png", "raw.png")], spec, train_id_labels=True)[0]


def test_cityscapes_without_cityscapesscripts_says_how_to_install(monkeypatch):
    from equiseg.data.io import OptionalDependencyError

    monkeypatch.setitem(__import__("sys").modules, "cityscapesscripts.helpers.labels", None)  # import fails
    with pytest.raises(OptionalDependencyError, match=r"pip install equiseg\[cityscapes\]"):
        get_dataset_definition("cityscapes")


def test_center_crop_is_centred_and_pads():
    from equiseg.data.transforms import CenterCrop

    image, mask = pattern_pair(np.random.default_rng(0), 48, 64, 8)
    sample = {"image": image, "label": mask, "valid": np.ones(mask.shape, bool)}
    out = CenterCrop((20, 30), PATTERN_SPEC.mean)(sample, None)
    assert np.array_equal(out["label"], mask[14:34, 17:47]) and np.array_equal(out["image"], image[14:34, 17:47])
    big = CenterCrop((60, 64), PATTERN_SPEC.mean)(sample, None)
    assert big["label"].shape == (60, 64) and np.all(big["label"][48:] == 255) and not big["valid"][48:].any()


def test_hue_shift_truncates_like_torchvision():
    """np.uint8(shift * 255) truncates toward zero (torchvision, iMAS): 0.1 -> 25 levels, -0.1 -> -25."""
    from PIL import Image

    from equiseg.data.augment import adjust_hue
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    for shift, levels in ((0.1, 25), (-0.1, -25), (0.3, 76)):
        same = np.asarray(adjust_hue(img, shift))
        assert np.array_equal(same, np.asarray(adjust_hue(img, levels / 255))), shift
        rounded = levels + (1 if levels > 0 else -1)
        assert not np.array_equal(same, np.asarray(adjust_hue(img, rounded / 255))), shift


def test_colour_cast_changes_the_look_not_the_scene():
    """The demo's per-image colour cast: same masks, same scenes at cast 0, channel gains within 1 ± cast."""
    plain, masks = make_synthetic_arrays(4, size=(24, 32), seed=3)
    cast, cast_masks = make_synthetic_arrays(4, size=(24, 32), seed=3, cast=0.45)
    assert (masks == cast_masks).all()
    assert (make_synthetic_arrays(4, size=(24, 32), seed=3, cast=0.0)[0] == plain).all()
    assert not (cast == plain).all()
    means = cast.reshape(4, -1, 3).mean(1) / plain.reshape(4, -1, 3).mean(1).clip(1)
    assert ((means > 0.5) & (means < 1.5)).all()
    assert (make_synthetic_arrays(4, size=(24, 32), seed=3, cast=0.45)[0] == cast).all()  # deterministic


def test_small_thing_scale_enlarges_the_smallest_classes_in_the_same_scenes():
    """The same draws, so the same layout and classes per scene; poles, signs and bicycles grow."""
    from equiseg.data.synthetic import BICYCLE, POLE, SIGN, render_scene
    for i in range(20):
        _, plain = render_scene(np.random.default_rng((0, 0, i)), (96, 128))
        _, large = render_scene(np.random.default_rng((0, 0, i)), (96, 128), small_thing_scale=2.0)
        assert set(np.unique(plain)) == set(np.unique(large)), i
        for cls in (POLE, SIGN, BICYCLE):
            assert (large == cls).sum() >= (plain == cls).sum(), (i, cls)
    _, again = render_scene(np.random.default_rng((0, 0, 3)), (96, 128), small_thing_scale=1.0)
    assert (again == render_scene(np.random.default_rng((0, 0, 3)), (96, 128))[1]).all()
