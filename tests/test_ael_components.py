"""AEL's components against hand-computed values on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from equiseg.methods.components import (ClassPresenceBank, ConfidenceBank, class_region_masks,
                                        connected_components, copy_paste_mask, equalization_sampling_mask,
                                        large_scale_jitter, paste, reweighting_weights, weighted_mean)
from equiseg.methods.components.mixing import foot_pixels, ground_below, shift
from equiseg.methods.components.losses import Ohem, ohem_cross_entropy, pixel_cross_entropy

IGNORE = 255


def probs_and_label():
    """One image of 4 pixels, 3 classes; ground truth [0, 0, 1, ignore]; class 2 absent."""
    p = torch.tensor([[0.7, 0.2, 0.1],
                      [0.5, 0.3, 0.2],
                      [0.1, 0.6, 0.3],
                      [0.2, 0.2, 0.6]])
    probs = p.t().reshape(1, 3, 1, 4)
    label = torch.tensor([[[0, 0, 1, IGNORE]]])
    return probs, label


# --------------------------------------------------------------------------- confidence bank (Eq. 4-7)


@pytest.mark.parametrize("indicator, expected", [
    ("confidence", [(0.7 + 0.5) / 2, 0.6]),                     # Eq. 4: mean p^c over pixels of c
    ("margin", [((0.7 - 0.2) + (0.5 - 0.3)) / 2, 0.6 - 0.3]),   # Eq. 5: p^c - second largest p
])
def test_bank_update_confidence_and_margin(indicator, expected):
    probs, label = probs_and_label()
    bank = ConfidenceBank(3, IGNORE, momentum=0.9, indicator=indicator, init=0.5)
    batch = bank.update(probs, label)
    assert batch[:2].tolist() == pytest.approx(expected)
    assert math.isnan(batch[2])
    # Eq. 7: Conf <- τ Conf + (1 - τ) Conf_batch; absent class 2 keeps its value.
    assert bank.conf.tolist() == pytest.approx([0.9 * 0.5 + 0.1 * expected[0], 0.9 * 0.5 + 0.1 * expected[1], 0.5])


def test_bank_entropy_indicator_is_normalised_entropy():
    probs, label = probs_and_label()
    bank = ConfidenceBank(3, IGNORE, momentum=0.0, indicator="entropy", init=0.0)
    bank.update(probs, label)

    def performance(p):  # 1 - H(p) / log C (Eq. 6 mapped so that higher is better)
        return 1 + sum(x * math.log(x) for x in p) / math.log(3)

    expected0 = (performance([0.7, 0.2, 0.1]) + performance([0.5, 0.3, 0.2])) / 2
    assert bank.conf[:2].tolist() == pytest.approx([expected0, performance([0.1, 0.6, 0.3])], abs=1e-6)


def test_bank_absent_class_decay_option():
    probs, label = probs_and_label()
    bank = ConfidenceBank(3, IGNORE, momentum=0.9, absent="decay", init=0.5)
    bank.update(probs, label)
    assert bank.conf[2].item() == pytest.approx(0.9 * 0.5)  # as if its batch value were 0


def test_bank_image_vs_pixel_pooling():
    # Class 0: image A has one pixel at p=0.9, image B three pixels at p=0.3.
    p0 = torch.tensor([[0.9, 0.3, 0.3, 0.3]])
    probs = torch.stack([p0, 1 - p0], dim=1).view(1, 2, 1, 4).repeat(2, 1, 1, 1)
    label = torch.tensor([[[0, IGNORE, IGNORE, IGNORE]], [[IGNORE, 0, 0, 0]]])
    image_bank = ConfidenceBank(2, IGNORE, momentum=0.0, pooling="image")
    pixel_bank = ConfidenceBank(2, IGNORE, momentum=0.0, pooling="pixel")
    image_bank.update(probs, label)
    pixel_bank.update(probs, label)
    assert image_bank.conf[0].item() == pytest.approx((0.9 + 0.3) / 2)      # Eq. 4: mean of image means
    assert pixel_bank.conf[0].item() == pytest.approx((0.9 + 0.3 * 3) / 4)  # official: pooled pixels


def test_bank_random_init_uses_generator():
    a = ConfidenceBank(5, IGNORE, init="random", generator=torch.Generator().manual_seed(3))
    b = ConfidenceBank(5, IGNORE, init="random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.conf, b.conf) and ((a.conf >= 0) & (a.conf < 1)).all()
    assert torch.equal(ConfidenceBank(5, IGNORE).conf, torch.zeros(5))


def test_bank_is_a_checkpointed_buffer():
    bank = ConfidenceBank(3, IGNORE, init=0.25)
    assert torch.equal(bank.state_dict()["conf"], torch.full((3,), 0.25))


# --------------------------------------------------------------------------- sampling (Eq. 9-11)


def test_sampling_distribution_eq9():
    bank = ConfidenceBank(3, IGNORE, init=0.0)
    bank.conf.copy_(torch.tensor([0.2, 0.5, 0.8]))
    r = bank.sampling_distribution()
    assert r.tolist() == pytest.approx(torch.softmax(torch.tensor([0.8, 0.5, 0.2]), 0).tolist())
    allowed = torch.tensor([False, True, True])
    r = bank.sampling_distribution(allowed)
    assert r[0] == 0 and r[1:].tolist() == pytest.approx(torch.softmax(torch.tensor([0.5, 0.2]), 0).tolist())
    r = bank.sampling_distribution(sqrt=True)  # official Copy-Paste variant
    assert r.tolist() == pytest.approx(torch.softmax(torch.tensor([0.8, 0.5, 0.2]).sqrt(), 0).tolist())


def test_sampling_rates_eq10():
    bank = ConfidenceBank(3, IGNORE)
    bank.conf.copy_(torch.tensor([0.2, 0.6, 1.0]))  # 1 - Conf = [0.8, 0.4, 0]
    assert bank.sampling_rates(1.0).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert bank.sampling_rates(2.0).tolist() == pytest.approx([1.0, 0.25, 0.0])
    bank.conf.fill_(1.0)
    assert bank.sampling_rates(1.0).tolist() == [1.0, 1.0, 1.0]  # nothing deficient: keep all


def test_equalization_sampling_mask_hand_values_and_rates():
    rates = torch.tensor([1.0, 0.5, 0.0])
    classes = torch.tensor([[0, 1, 1, 2, IGNORE]])
    field = torch.tensor([[0.99, 0.4, 0.6, 0.0, 0.0]])
    assert equalization_sampling_mask(classes, rates, field, IGNORE).tolist() == [[True, True, False, False, False]]
    # Empirically each class is kept at its rate s^c.
    classes = torch.arange(3).repeat_interleave(20000).view(1, -1)
    field = torch.rand(classes.shape, generator=torch.Generator().manual_seed(0))
    kept = equalization_sampling_mask(classes, rates, field, IGNORE).view(3, -1).float().mean(1)
    assert kept.tolist() == pytest.approx(rates.tolist(), abs=0.01)


# --------------------------------------------------------------------------- losses (Eq. 11-13)


def test_weighted_mean_per_image_ignored_not_in_denominator():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    weight = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 1.5]])  # zeros: ignored / not sampled
    expected = ((1 + 2) / 2 + (0.5 * 10 + 1.5 * 40) / (0.5 + 1.5)) / 2      # Eq. 12: per image, then mean
    assert weighted_mean(values, weight).item() == pytest.approx(expected)
    batch = (1 + 2 + 0.5 * 10 + 1.5 * 40) / (1 + 1 + 0.5 + 1.5)           # official: one batch ratio
    assert weighted_mean(values, weight, normalization="batch").item() == pytest.approx(batch)
    denominator = torch.ones_like(values)                                   # FixMatch-style: all pixels
    assert weighted_mean(values, weight, denominator).item() == pytest.approx((3 / 4 + 65 / 4) / 2)
    empty = torch.zeros_like(weight)
    assert weighted_mean(values, empty).item() == 0.0


def test_eq11_and_eq13_with_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).t().reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, IGNORE]]])
    ce = pixel_cross_entropy(logits, target, IGNORE)
    assert ce[0, 0, 2] == 0  # ignored pixel contributes nothing
    confidence = torch.tensor([[[0.9, 0.5, 0.8]]])
    w = reweighting_weights(confidence, 2.0) * (target != IGNORE)          # Eq. 13 with 𝟙 = 1
    expected = (0.81 * ce[0, 0, 0] + 0.25 * ce[0, 0, 1]) / (0.81 + 0.25)   # Eq. 12
    assert weighted_mean(ce, w).item() == pytest.approx(expected.item())
    # γ = 0: uniform weights, Eq. 11 / Eq. 2.
    w0 = reweighting_weights(confidence, 0.0) * (target != IGNORE)
    assert weighted_mean(ce, w0).item() == pytest.approx(((ce[0, 0, 0] + ce[0, 0, 1]) / 2).item())


def test_ohem_keeps_everything_when_min_kept_exceeds_pixels():
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randint(3, (1, 4, 4), generator=torch.Generator().manual_seed(1))
    plain = torch.nn.functional.cross_entropy(logits, target)
    assert ohem_cross_entropy(logits, target, IGNORE, Ohem(0.7, 10_000)).item() == pytest.approx(plain.item())
    hard = ohem_cross_entropy(logits, target, IGNORE, Ohem(0.0, 4))  # only the 4 hardest pixels
    ce = pixel_cross_entropy(logits, target, IGNORE).flatten()
    assert hard.item() == pytest.approx(ce.topk(4).values.mean().item(), rel=1e-5)


# --------------------------------------------------------------------------- class regions (ACM)


def test_connected_components_eight_connectivity():
    mask = torch.tensor([[1, 1, 0, 0, 0],
                         [0, 0, 1, 0, 1],
                         [0, 0, 0, 0, 1],
                         [1, 0, 0, 0, 0]], dtype=torch.bool)[None]
    labels = connected_components(mask)[0]
    assert (labels[~mask[0]] == 0).all()
    # (0,0),(0,1),(1,2) touch diagonally: one component; (1,4),(2,4) another; (3,0) a third.
    assert labels[0, 0] == labels[0, 1] == labels[1, 2]
    assert labels[1, 4] == labels[2, 4]
    assert len({labels[0, 0].item(), labels[1, 4].item(), labels[3, 0].item()}) == 3


def test_connected_components_snake_converges():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 0::2, :] = True
    mask[0, 1::4, -1] = True
    mask[0, 3::4, 0] = True
    labels = connected_components(mask)[0]
    assert labels[mask[0]].unique().numel() == 1


def test_class_region_is_the_box_of_a_large_component():
    prediction = torch.zeros(2, 8, 8, dtype=torch.long)
    prediction[0, 1:3, 2:5] = 2   # area 6
    prediction[0, 6, 6] = 2       # area 1, below the threshold
    prediction[1, 0, 0] = 2       # image 1: only a tiny region of class 2
    masks, found = class_region_masks(prediction, torch.tensor([2, 2]), min_area=3,
                                      generator=torch.Generator().manual_seed(0))
    assert found.tolist() == [True, False]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:3, 2:5] = True
    assert torch.equal(masks[0], expected)
    assert (prediction[0][masks[0]] == 2).all()  # the region holds the sampled class
    assert not masks[1].any()


def test_class_region_chooses_among_large_components():
    prediction = torch.zeros(1, 8, 8, dtype=torch.long)
    prediction[0, 0:2, 0:2] = 1
    prediction[0, 5:8, 5:8] = 1
    seen = set()
    for seed in range(20):
        masks, _ = class_region_masks(prediction, torch.tensor([1]), 4, torch.Generator().manual_seed(seed))
        assert (prediction[0][masks[0]] == 1).all()
        seen.add(int(masks[0].sum()))
    assert seen == {4, 9}


# --------------------------------------------------------------------------- Copy-Paste (ACP)


def test_copy_paste_moves_exactly_the_sampled_classes():
    target = {"image": torch.zeros(1, 3, 4, 4), "label": torch.zeros(1, 4, 4, dtype=torch.long),
              "valid": torch.ones(1, 4, 4, dtype=torch.bool)}
    source_label = torch.tensor([[1, 1, 2, 3], [3, 0, 2, IGNORE], [1, 2, 3, 0], [0, 0, 0, 0]])[None]
    source = {"image": torch.arange(48, dtype=torch.float).view(1, 3, 4, 4) + 1, "label": source_label,
              "valid": torch.ones(1, 4, 4, dtype=torch.bool)}
    moved = copy_paste_mask(source_label, torch.tensor([1, 3]))
    out = paste(moved, target, source)
    assert moved.sum() == 6
    assert torch.equal(out["label"][moved], source_label[moved])
    assert torch.equal(out["image"].permute(0, 2, 3, 1)[moved], source["image"].permute(0, 2, 3, 1)[moved])
    assert (out["label"][~moved] == 0).all() and (out["image"].permute(0, 2, 3, 1)[~moved] == 0).all()


def test_ground_below_foot_pixels_and_shift():
    label = torch.tensor([[0, 0, 0],
                          [5, 0, 0],
                          [5, 1, 2],
                          [1, 1, 2]])
    inside = label == 5
    # The first class below each pixel outside ``inside``; the bottom row has none.
    assert ground_below(label, inside, 3, IGNORE).tolist() == [[1, 0, 0], [1, 1, 2], [1, 1, 2], [IGNORE] * 3]
    assert ground_below(label, inside, 1, IGNORE)[0, 0] == IGNORE            # beyond reach: the object itself
    assert foot_pixels(inside).tolist() == [[False] * 3, [False] * 3, [True, False, False], [False] * 3]
    sample = {"image": label[None].float().expand(3, 4, 3).clone(), "label": label, "valid": torch.ones(4, 3, dtype=torch.bool)}
    moved = shift(sample, 1, -1, IGNORE)
    assert moved["label"].tolist() == [[IGNORE] * 3, [0, 0, IGNORE], [0, 0, IGNORE], [1, 2, IGNORE]]
    assert moved["valid"].tolist() == [[False] * 3, [True, True, False], [True, True, False], [True, True, False]]
    assert torch.equal(moved["image"][0][1:, :2], label[:3, 1:].float()) and (moved["image"][:, 0] == 0).all()
    assert (shift(sample, 4, 0, IGNORE)["label"] == IGNORE).all()          # shifted off the canvas


def test_large_scale_jitter_scales_and_pads():
    sample = {"image": torch.ones(3, 4, 4), "label": torch.full((4, 4), 2), "valid": torch.ones(4, 4, dtype=torch.bool)}
    small = large_scale_jitter(sample, 0.5, (4, 4), (0.0, 0.0), IGNORE)
    assert (small["label"] == 2).sum() == 4 and (small["label"] == IGNORE).sum() == 12
    assert torch.equal(small["valid"], small["label"] != IGNORE)
    big = large_scale_jitter(sample, 2.0, (4, 4), (0.5, 0.5), IGNORE)
    assert (big["label"] == 2).all() and big["valid"].all()
    same = large_scale_jitter(sample, 1.0, (4, 4), (0.3, 0.7), IGNORE)
    assert torch.equal(same["label"], sample["label"]) and torch.allclose(same["image"], sample["image"])


# --------------------------------------------------------------------------- class-presence bank


def test_presence_bank_area_ratio_and_lookup():
    bank = ClassPresenceBank(num_images=5, num_classes=3, ignore_index=IGNORE)
    label = torch.zeros(2, 10, 10, dtype=torch.long)
    label[0, :1, :1] = 1          # 1 % of the image
    label[1, :2, :5] = 2          # 10 %
    label[1, 9, 9] = IGNORE
    bank.update(torch.tensor([3, 1]), label, min_ratio=0.05)
    assert bank.present[3].tolist() == [1, 0, 0]
    assert bank.present[1].tolist() == [1, 0, 1]
    assert bank.images_with(torch.tensor([2])).tolist() == [1]
    assert bank.images_with(torch.tensor([0])).tolist() == [1, 3]
    label[1] = 0
    bank.update(torch.tensor([1]), label[1:], min_ratio=0.05)   # rows are overwritten when seen again
    assert bank.present[1].tolist() == [1, 0, 0]
    assert "present" in bank.state_dict()
