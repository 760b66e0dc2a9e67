"""Evaluation layer: metrics, whole/slide/center inference, evaluator (incl. 2-process gloo), visuals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from equiseg.config import EvalConfig
from equiseg.data.spec import DatasetSpec
from equiseg.evaluation import (
    ConfusionMatrix,
    EvalResult,
    center_crop,
    class_confusions,
    collect_samples,
    colorize,
    denormalize,
    evaluate,
    make_eval_loader,
    make_grid,
    predict_probs,
    sample_grid,
    sample_row,
    save_prediction,
    shard_indices,
    sliding_windows,
    window_starts,
)
from equiseg.evaluation.visualize import GRID_GAP

IGNORE = 255
SPEC = DatasetSpec(
    name="tiny",
    class_names=("road", "car", "bike"),
    palette=((10, 20, 30), (40, 50, 60), (70, 80, 90)),
    tail_classes=("bike",),
)


# --------------------------------------------------------------------------- models and data


class PointwiseModel(nn.Module):
    """A 1x1 conv: every output pixel depends only on the same input pixel (translation-equivariant)."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.modes_seen: list[bool] = []

    def forward(self, x):
        self.modes_seen.append(self.training)
        return {"out": self.conv(x)}


class MirrorSymmetricConv(nn.Module):
    """A 3x3 conv whose kernels are left-right symmetric, hence exactly flip-equivariant."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)
        with torch.no_grad():
            w = self.conv.weight
            w.copy_((w + w.flip(-1)) / 2)

    def forward(self, x):
        return {"out": self.conv(x)}


class OracleModel(nn.Module):
    """Logits = the first C image channels, so an image that one-hot encodes the label is predicted
    perfectly. Has BatchNorm/Dropout so eval/train mode bookkeeping is exercised."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.modes_seen: list[bool] = []

    def forward(self, x):
        self.modes_seen.append(self.training)
        return {"out": x * 10.0 + 0.0 * self.drop(self.bn(x))}


def one_hot_image(label: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """(H, W) label -> (3, H, W) image whose argmax over channels is the label (ignore -> class 0)."""
    safe = label.clone()
    safe[safe == IGNORE] = 0
    return torch.nn.functional.one_hot(safe, num_classes).permute(2, 0, 1).float()


class TinySegDataset(Dataset):
    """Labelled samples of varying sizes; ``noise`` flips some predictions of the oracle model."""

    def __init__(self, n: int = 5, seed: int = 0, sizes=((6, 8), (6, 8), (5, 7), (9, 4))):
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            label = torch.randint(0, 3, (h, w), generator=g)
            image = one_hot_image(label) + 1.5 * torch.rand(3, h, w, generator=g)  # some errors
            label[0, 0] = IGNORE
            self.samples.append({"image": image, "label": label, "index": i, "name": f"img{i}"})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


# --------------------------------------------------------------------------- metrics


def hand_example():
    target = torch.tensor([[0, 0, 1, 1], [2, IGNORE, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0]])
    return pred, target


def test_confusion_matrix_matches_hand_computation():
    pred, target = hand_example()
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # Pairs (gt, pred) without the ignore pixel: (0,0) (0,1) (1,1) (1,1) (2,0) (2,2) (0,0)
    expected = np.array([[2, 1, 0],
                         [0, 2, 0],
                         [1, 0, 1]])
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    r = cm.compute(tail_ids=[2])
    # IoU = TP / (GT + Pred - TP): class 0: 2/(3+3-2) = 1/2; class 1: 2/(2+3-2) = 2/3; class 2: 1/(2+1-1) = 1/2
    assert r.iou == pytest.approx((1 / 2, 2 / 3, 1 / 2))
    assert r.miou == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)  # 5/9
    assert r.pixel_acc == pytest.approx(5 / 7)
    assert r.class_acc == pytest.approx((2 / 3, 1.0, 1 / 2))
    assert r.mean_class_acc == pytest.approx(13 / 18)
    assert r.tail_miou == pytest.approx(1 / 2)
    assert r.head_miou == pytest.approx((1 / 2 + 2 / 3) / 2)  # 7/12
    assert r.num_pixels == 7


def test_class_confusions_read_rows_and_columns():
    # rows = truth, columns = prediction; class 2 is predicted but never true, class 3 is absent.
    mat = np.array([[8, 2, 0, 0],
                    [1, 5, 4, 0],
                    [0, 0, 0, 0],
                    [0, 0, 0, 0]])
    zero, one, two, three = class_confusions(mat, top=2)
    assert (zero.recall, zero.precision) == (8 / 10, 8 / 9)
    assert zero.missed_as == ((1, 2 / 10),) and zero.false_from == ((1, 1 / 9),)  # shares of 0 left out
    assert (one.recall, one.precision) == (5 / 10, 5 / 7)
    assert one.missed_as == ((2, 4 / 10), (0, 1 / 10))                          # largest first
    assert one.false_from == ((0, 2 / 7),)
    assert math.isnan(two.recall) and two.precision == 0 and two.false_from == ((1, 1.0),)
    assert math.isnan(three.recall) and math.isnan(three.precision) and three.missed_as == three.false_from == ()
    assert class_confusions(mat, top=1)[1].missed_as == ((2, 4 / 10),)
    with pytest.raises(ValueError, match="square"):
        class_confusions(np.zeros((2, 3)))


def test_ignore_pixels_do_not_count():
    pred, target = hand_example()
    cm_a, cm_b = ConfusionMatrix(3), ConfusionMatrix(3)
    cm_a.update(pred, target)
    other = pred.clone()
    other[target == IGNORE] = 1  # changing predictions under ignore changes nothing
    cm_b.update(other, target)
    assert torch.equal(cm_a.matrix, cm_b.matrix)
    assert int(cm_a.matrix.sum()) == int((target != IGNORE).sum())


def test_perfect_prediction_is_one():
    target = torch.tensor([[0, 1, 2], [2, 1, IGNORE]])
    pred = target.clone()
    pred[target == IGNORE] = 0
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    r = cm.compute()
    assert r.miou == 1.0 and r.pixel_acc == 1.0 and r.mean_class_acc == 1.0
    assert r.iou == (1.0, 1.0, 1.0)


def test_nan_for_classes_absent_from_gt_and_prediction():
    # 4 classes: class 3 appears nowhere (IoU NaN, excluded from mIoU);
    # class 2 is only predicted (IoU 0 counts, class accuracy NaN).
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    r = cm.compute(tail_ids=[3])
    assert r.iou[0] == pytest.approx(1 / 2) and r.iou[1] == 1.0 and r.iou[2] == 0.0
    assert math.isnan(r.iou[3])
    assert r.miou == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert math.isnan(r.class_acc[2]) and math.isnan(r.class_acc[3])
    assert r.mean_class_acc == pytest.approx((1 / 2 + 1) / 2)
    assert math.isnan(r.tail_miou)  # the only tail class is absent
    assert r.head_miou == pytest.approx(r.miou)
    d = r.to_dict(class_names=["a", "b", "c", "d"], include_confusion=True)
    json.dumps(d, allow_nan=False)  # JSON-safe: NaN -> None
    assert d["iou"][3] is None and d["tail_miou"] is None and d["confusion"][0] == [1, 0, 1, 0]


def test_update_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.zeros(3, dtype=torch.long), torch.tensor([0, 3, IGNORE]))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, -1]))
    with pytest.raises(TypeError):
        cm.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert int(cm.matrix.sum()) == 0  # nothing was counted by the failed updates


def test_table_marks_tail_and_ends_with_summary():
    pred, target = hand_example()
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    text = cm.compute(SPEC.tail_ids).table(SPEC.class_names)
    lines = text.splitlines()
    assert [ln.split()[0] for ln in lines[-3:]] == ["mIoU", "head", "tail"]
    assert lines[-3].endswith("55.56") and lines[-1].endswith("50.00")
    bike = next(ln for ln in lines if ln.startswith("bike"))
    road = next(ln for ln in lines if ln.startswith("road"))
    assert "*" in bike and "*" not in road
    assert len({len(ln) for ln in lines if not ln.startswith(("mIoU", "head", "tail"))}) == 1  # fixed width


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("length,window,stride,expected", [
    (10, 4, 3, [0, 3, 6]),       # divisible: last window ends at 10
    (11, 4, 3, [0, 3, 6, 7]),    # not divisible: last window shifted back to end at 11
    (4, 4, 3, [0]),
])
def test_window_starts(length, window, stride, expected):
    assert window_starts(length, window, stride) == expected


@pytest.mark.parametrize("h,w", [(5, 7), (16, 16), (17, 23), (3, 30), (40, 9)])
def test_windows_cover_every_pixel(h, w):
    crop, stride = (8, 10), (5, 6)
    count = np.zeros((max(h, crop[0]), max(w, crop[1])), dtype=int)
    for top, bottom, left, right in sliding_windows(h, w, crop, stride):
        assert bottom - top == crop[0] and right - left == crop[1]  # always full-size windows
        count[top:bottom, left:right] += 1
    assert count.min() >= 1


@pytest.mark.parametrize("h,w", [(20, 27), (8, 10), (5, 7), (6, 31)])
@pytest.mark.parametrize("flip", [False, True])
def test_slide_equals_whole_for_pointwise_model(h, w, flip):
    model = PointwiseModel().eval()
    image = torch.randn(2, 3, h, w)
    whole = predict_probs(model, image, "whole", flip=flip)
    slide = predict_probs(model, image, "slide", crop_size=(8, 10), stride=(5, 6), flip=flip, num_classes=3)
    assert slide.shape == (2, 3, h, w)
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.sum(1), torch.ones(2, h, w))


def test_slide_default_stride_and_averaging():
    # With a non-pointwise model the overlap average must still be a probability map.
    model = MirrorSymmetricConv().eval()
    probs = predict_probs(model, torch.randn(1, 3, 13, 17), "slide", crop_size=9)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 13, 17))


def test_flip_with_flip_equivariant_model_equals_no_flip():
    model = MirrorSymmetricConv().eval()
    image = torch.randn(2, 3, 11, 14)
    for mode in ("whole", "slide", "center"):
        a = predict_probs(model, image, mode, crop_size=(7, 9), flip=False)
        b = predict_probs(model, image, mode, crop_size=(7, 9), flip=True)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_flip_averages_image_and_mirror():
    model = PointwiseModel().eval()
    model.conv = nn.Conv2d(3, 3, (1, 3), padding=(0, 1))  # not mirror symmetric
    image = torch.randn(1, 3, 6, 9)
    expected = (predict_probs(model, image) + predict_probs(model, image.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(predict_probs(model, image, flip=True), expected)


def test_center_crop_keeps_image_and_target_aligned():
    h, w = 9, 12  # odd vertical margin for a crop of 6: top = 1
    grid = torch.arange(h * w).reshape(h, w)
    image = grid.float().expand(3, h, w)
    cropped_t = center_crop(grid, (6, 6))
    cropped_i = center_crop(image, (6, 6))
    assert cropped_t.shape == (6, 6) and cropped_t[0, 0] == 1 * w + 3
    assert torch.equal(cropped_i[0].long(), cropped_t)
    assert center_crop(grid, (20, 5)).shape == (9, 5)  # clipped, never padded
    model = PointwiseModel().eval()
    probs = predict_probs(model, image[None], "center", crop_size=(6, 6))
    torch.testing.assert_close(probs, predict_probs(model, cropped_i[None]))


def test_autocast_context_returns_float32_probabilities():
    model = PointwiseModel().eval()
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    probs = predict_probs(model, torch.randn(1, 3, 8, 8), "slide", crop_size=5, autocast=bf16)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 8, 8))


def test_bad_model_output_is_reported():
    class Downsampling(nn.Module):
        def forward(self, x):
            return {"out": x[:, :, ::2, ::2]}

    with pytest.raises(ValueError, match="input size"):
        predict_probs(Downsampling(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="classes"):
        predict_probs(PointwiseModel(), torch.randn(1, 3, 8, 8), num_classes=5)


# --------------------------------------------------------------------------- evaluator


def reference_matrix(model, dataset, mode="whole", crop=None):
    cm = ConfusionMatrix(3)
    for s in dataset:
        probs = predict_probs(model.eval(), s["image"][None], mode, crop_size=crop)
        label = center_crop(s["label"], crop) if mode == "center" else s["label"]
        cm.update(probs.argmax(1)[0], label)
    return cm.matrix


@pytest.mark.parametrize("batch_size", [1, 3])
def test_evaluate_matches_per_image_reference(batch_size):
    dataset = TinySegDataset(n=6)
    model = OracleModel()
    result = evaluate(model, dataset, SPEC, EvalConfig(batch_size=batch_size), "cpu")
    np.testing.assert_array_equal(result.confusion, reference_matrix(model, dataset).numpy())
    assert result.num_images == 6
    assert 0 < result.miou < 1  # the noise makes some errors
    assert result.num_pixels == sum(int((s["label"] != IGNORE).sum()) for s in dataset)


def test_evaluate_perfect_model_and_center_mode():
    dataset = TinySegDataset(n=4)
    for s in dataset.samples:
        s["image"] = one_hot_image(s["label"])  # no noise: the oracle is perfect
    cfg = EvalConfig(mode="center", crop_size=(4, 4))
    result = evaluate(OracleModel(), dataset, SPEC, cfg, "cpu", num_samples=2)
    assert result.miou == 1.0
    expected_pixels = sum(int((center_crop(s["label"], 4) != IGNORE).sum()) for s in dataset)
    assert result.num_pixels == expected_pixels
    assert len(result.samples) == 2
    first = result.samples[0]
    assert first["image"].shape[-2:] == first["label"].shape == first["pred"].shape == (4, 4)


def test_evaluate_restores_each_module_mode_and_runs_in_eval():
    model = OracleModel()
    model.train()
    model.bn.eval()  # e.g. frozen BN during training: must stay in eval afterwards
    evaluate(model, TinySegDataset(n=2), SPEC, EvalConfig(), "cpu")
    assert model.modes_seen and not any(model.modes_seen)
    assert model.training and model.drop.training and not model.bn.training
    model.eval()
    evaluate(model, TinySegDataset(n=2), SPEC, EvalConfig(), "cpu")
    assert not model.training and not model.drop.training


def test_evaluate_max_images_and_prebuilt_loader():
    dataset = TinySegDataset(n=6)
    cfg = EvalConfig(max_images=3, batch_size=2)
    a = evaluate(OracleModel(), dataset, SPEC, cfg, "cpu")
    b = evaluate(OracleModel(), make_eval_loader(dataset, EvalConfig(batch_size=2)), SPEC, cfg, "cpu")
    default_collated = DataLoader(dataset, batch_size=2)  # same-size images collate to dicts
    c = evaluate(OracleModel(), default_collated, SPEC, EvalConfig(batch_size=2), "cpu", max_images=2)
    expected = reference_matrix(OracleModel(), [dataset[i] for i in range(3)]).numpy()
    np.testing.assert_array_equal(a.confusion, expected)
    np.testing.assert_array_equal(b.confusion, expected)
    assert a.num_images == b.num_images == 3 and c.num_images == 2


def test_collect_samples():
    dataset = TinySegDataset(n=3)
    out = collect_samples(OracleModel(), dataset, [2, 0], EvalConfig(), "cpu", num_classes=3)
    assert [s["index"] for s in out] == [2, 0]
    assert out[0]["pred"].shape == dataset[2]["label"].shape


def test_shard_indices_disjoint_and_complete():
    shards = [list(shard_indices(7, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert list(shard_indices(1, 1, 2)) == []


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = TinySegDataset(n=5)  # odd: shards of 3 and 2 images, no padding duplicates
        model = OracleModel()
        full = evaluate(model, dataset, SPEC, EvalConfig(batch_size=2), "cpu")
        # One image only: rank 1's shard is empty but it must still join the all-reduce.
        single = evaluate(model, dataset, SPEC, EvalConfig(max_images=1), "cpu")
        torch.save(
            {"full": full.confusion, "full_n": full.num_images, "single": single.confusion, "single_n": single.num_images},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_match_single_process(tmp_path):
    world_size = 2
    mp.spawn(_ddp_worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)), nprocs=world_size, join=True)
    dataset = TinySegDataset(n=5)
    expected_full = reference_matrix(OracleModel(), dataset).numpy()
    expected_single = reference_matrix(OracleModel(), [dataset[0]]).numpy()
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        np.testing.assert_array_equal(got["full"], expected_full)
        np.testing.assert_array_equal(got["single"], expected_single)
        assert got["full_n"] == 5 and got["single_n"] == 1


# --------------------------------------------------------------------------- visualisation


def test_colorize_uses_palette_and_ignore_is_black():
    label = torch.tensor([[0, 1], [2, IGNORE]])
    rgb = colorize(label, SPEC)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [40, 50, 60]
    assert rgb[1, 0].tolist() == [70, 80, 90] and rgb[1, 1].tolist() == [0, 0, 0]


def test_save_prediction_writes_color_and_index_png(tmp_path):
    pred = np.array([[0, 1, 2], [2, 1, 0]])
    save_prediction(pred, tmp_path / "c" / "a.png", tmp_path / "i" / "a.png", SPEC)
    color = np.array(Image.open(tmp_path / "c" / "a.png"))
    np.testing.assert_array_equal(color, colorize(pred, SPEC))
    indexed = Image.open(tmp_path / "i" / "a.png")
    assert indexed.mode == "P"
    np.testing.assert_array_equal(np.array(indexed), pred)
    assert indexed.getpalette()[3:6] == [40, 50, 60]


def test_denormalize_inverts_normalization_and_grid_layout():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    mean, std = np.array(SPEC.mean), np.array(SPEC.std)
    normalized = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).float()
    np.testing.assert_array_equal(denormalize(normalized, SPEC), rgb)
    row = sample_row(normalized, torch.zeros(5, 6, dtype=torch.long), torch.ones(5, 6, dtype=torch.long), SPEC)
    small = [np.zeros((3, 2, 3), np.uint8)]
    grid = make_grid([row, small], gap=2)
    assert grid.shape == (5 * 2 + 2, 6 * 3 + 2 * 2, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:5, :6], rgb)
    np.testing.assert_array_equal(grid[:5, 16:22], colorize(torch.ones(5, 6, dtype=torch.long), SPEC))


def test_sample_grid_and_result_round_trip():
    dataset = TinySegDataset(n=3)
    model = OracleModel().train()
    grid = sample_grid(model, dataset, SPEC, "cpu", n=2)
    h, w = dataset[0]["label"].shape
    assert grid.shape == (2 * h + GRID_GAP, 3 * w + 2 * GRID_GAP, 3) and model.training
    result = evaluate(model, dataset, SPEC, EvalConfig(), "cpu")
    stored = {"iteration": 7, **result.to_dict(include_confusion=True)}  # as a trainer saves it
    back = EvalResult.from_dict(json.loads(json.dumps(stored)))
    assert back == result
    assert back.table(SPEC.class_names) == result.table(SPEC.class_names)
