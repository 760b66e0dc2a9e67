"""The AEL method: training steps, the Table 3 switches, adaptive CutMix / Copy-Paste inside the
method, and checkpoint round-trips of its banks."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from equiseg.config import load_config, validate_config
from equiseg.errors import ConfigError
from equiseg.methods import method_config_class

try:
    from test_semisup_helpers import IGNORE, NUM_CLASSES, batches, make_method, train_steps
except ImportError:  # tests/ collected as a package
    from tests.test_semisup_helpers import IGNORE, NUM_CLASSES, batches, make_method, train_steps

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "ael"
ALL_OFF = dict(dynamic_reweighting=False, equalization_sampling=False, adaptive_cutmix=False,
               adaptive_copy_paste=False)
OFFICIAL = dict(ohem=True, ohem_min_kept=50, labeled_consistency=True, aes_classes="student",
                loss_normalization="batch", loss_denominator="valid", bank_init="random",
                bank_pooling="pixel", bank_absent="decay", acp_sqrt=True, acp_with_replacement=True,
                acp_source="random", confidence_threshold=0.3, acm_presence_ratio=0.01)


@pytest.mark.parametrize("options", [{}, ALL_OFF, OFFICIAL, {"indicator": "margin"}, {"indicator": "entropy"},
                                     {"acp_placement": "ground", "acp_probability": 1.0}],
                         ids=["paper", "all_off", "official", "margin", "entropy", "ground_placement"])
def test_ael_trains(options):
    method, student, labeled, unlabeled = make_method("ael", aux=bool(options.get("ohem")), **options)
    initial = method.bank.conf.clone()
    outputs = train_steps(method, student, labeled, unlabeled, steps=3)
    assert all(math.isfinite(float(v)) for out in outputs for v in out.logs.values())
    assert not torch.equal(method.bank.conf, initial)  # the bank follows the student (Eq. 7)


def test_all_components_off_is_the_basic_framework():
    ael, student_a, labeled, unlabeled = make_method("ael", seed=3, **ALL_OFF)
    cutmix, student_c, *_ = make_method("cutmix", seed=3)
    for it in range(2):
        l_batch, u_batch = batches(labeled, unlabeled, it)
        torch.manual_seed(it)
        loss_a = ael.training_step(l_batch, u_batch, it).loss
        torch.manual_seed(it)
        loss_c = cutmix.training_step(l_batch, u_batch, it).loss
        assert loss_a.item() == pytest.approx(loss_c.item(), rel=1e-6)


def test_acm_off_never_loads_and_on_loads_one_image_per_unlabeled_image():
    method, student, labeled, unlabeled = make_method("ael", adaptive_cutmix=False, adaptive_copy_paste=False)
    train_steps(method, student, labeled, unlabeled, steps=2)
    assert unlabeled.loads == [] and labeled.loads == []
    assert not hasattr(method, "unlabeled_presence")
    method, student, labeled, unlabeled = make_method("ael", adaptive_copy_paste=False)
    train_steps(method, student, labeled, unlabeled, steps=2)
    assert len(unlabeled.loads) == 4 and labeled.loads == []
    assert method.unlabeled_presence.present.any()  # filled from the teacher's predictions


def test_acm_replace_half_keeps_the_teacher_batch_of_cutmix(monkeypatch):
    seen = {}
    for mode in ("extra", "replace_half"):
        method, student, labeled, unlabeled = make_method("ael", acm_batch=mode, adaptive_copy_paste=False)
        teacher_calls, student_calls = [], []
        pseudo_labels, student_forward = method.pseudo_labels, method.student_forward
        monkeypatch.setattr(method, "pseudo_labels", lambda x, *a: teacher_calls.append(len(x)) or pseudo_labels(x, *a))
        monkeypatch.setattr(method, "student_forward",
                            lambda *xs: student_calls.append([len(x) for x in xs]) or student_forward(*xs))
        l_batch, u_batch = batches(labeled, unlabeled, 0)
        out = method.training_step(l_batch, u_batch, 0)
        assert math.isfinite(out.loss.item())
        seen[mode] = (len(u_batch["image"]), teacher_calls, student_calls, len(unlabeled.loads))
    b_u, teacher, student, loads = seen["extra"]
    assert teacher == [2 * b_u] and student == [[len(l_batch["image"]), b_u]] and loads == b_u
    b_u, teacher, student, loads = seen["replace_half"]
    assert teacher == [b_u] and student == [[len(l_batch["image"]), b_u // 2]] and loads == b_u // 2
    with pytest.raises(ValueError, match="at least 2 unlabeled images"):
        method.keep_half({"image": torch.zeros(1, 3, 4, 4)})


def test_acm_fetches_an_image_known_to_hold_the_sampled_class(monkeypatch):
    method, student, labeled, unlabeled = make_method("ael")
    method.unlabeled_presence.present.zero_()
    method.unlabeled_presence.present[7, 2] = 1
    monkeypatch.setattr("equiseg.methods.ael.categorical", lambda r, n, g, replacement=True: torch.tensor([2] * n))
    categories, fetched = method.fetch_by_category(3, logs := {})
    assert [index for index, _ in unlabeled.loads] == [7, 7, 7]
    assert categories.tolist() == [2, 2, 2] and fetched["index"].tolist() == [7, 7, 7]
    assert logs["acm_known_ratio"] == 1.0
    method.unlabeled_presence.present.zero_()  # no image known: fall back to random images
    method.fetch_by_category(2, logs)
    assert logs["acm_known_ratio"] == 0.0 and len(unlabeled.loads) == 5


def test_acm_region_contains_the_sampled_class():
    method, *_ = make_method("ael")
    h = w = 16
    prediction = torch.zeros(2, h, w, dtype=torch.long)
    prediction[0, 3:7, 9:14] = 3          # class 3 in image 0 of the fetched images
    fetched = {"image": torch.ones(2, 3, h, w), "label": prediction.clone(), "prediction": prediction,
               "confidence": torch.full((2, h, w), 0.9), "valid": torch.ones(2, h, w, dtype=torch.bool)}
    batch = {"image": torch.zeros(2, 3, h, w), "label": torch.ones(2, h, w, dtype=torch.long),
             "prediction": torch.ones(2, h, w, dtype=torch.long), "confidence": torch.full((2, h, w), 0.2),
             "valid": torch.ones(2, h, w, dtype=torch.bool)}
    mixed, boxes = method.adaptive_cutmix(batch, fetched, torch.tensor([3, 3]), logs := {})
    region = torch.zeros(h, w, dtype=torch.bool)
    region[3:7, 9:14] = True
    assert torch.equal(boxes[0], region)                     # tight box of the class's component
    assert (mixed["label"][0][region] == 3).all() and (mixed["label"][0][~region] == 1).all()
    assert (mixed["confidence"][0][region] == 0.9).all() and (mixed["image"][0][:, region] == 1).all()
    assert logs["acm_region_ratio"] == 0.5                   # image 1 lacks class 3: random box
    assert boxes[1].float().mean() == pytest.approx(0.5, abs=0.05)


def test_acp_moves_exactly_the_sampled_classes(monkeypatch):
    method, student, labeled, unlabeled = make_method("ael", acp_probability=1.0, acp_scale_range=(1.0, 1.0),
                                                      acp_source="random")
    monkeypatch.setattr("equiseg.methods.ael.categorical",
                        lambda r, n, g, replacement=True: torch.tensor([1, 3]))
    batch = labeled.batch([0, 1])
    out = method.adaptive_copy_paste(batch, logs := {})
    assert len(labeled.loads) == 2
    for i, (source_index, seed) in enumerate(labeled.loads):
        source = labeled.sample(source_index, seed)
        moved = torch.isin(source["label"], torch.tensor([1, 3])) & source["valid"]
        assert torch.equal(out["label"][i][moved], source["label"][moved])
        assert torch.equal(out["image"][i][:, moved], source["image"][:, moved])
        assert torch.equal(out["label"][i][~moved], batch["label"][i][~moved])
        assert torch.equal(out["image"][i][:, ~moved], batch["image"][i][:, ~moved])
    assert logs["acp_pixel_ratio"] > 0


def test_acp_ground_placement_stands_each_object_on_its_own_ground():
    method, *_ = make_method("ael", acp_placement="ground")
    # Source: class 2 (two pixels wide, rows 2-4) standing on class 1; class 3 touching the bottom
    # edge (no ground known); class 0 elsewhere.
    label = torch.zeros(8, 6, dtype=torch.long)
    label[2:5, 0:2], label[5, 0:2], label[6:8, 5] = 2, 1, 3
    source = {"image": torch.arange(3 * 8 * 6, dtype=torch.float).view(3, 8, 6), "label": label,
              "valid": torch.ones(8, 6, dtype=torch.bool)}
    moved = (label == 2) | (label == 3)
    target_label = torch.zeros(8, 6, dtype=torch.long)
    target_label[6, 3:5] = 1                                  # the target's only class-1 pixels
    valid = torch.ones(8, 6, dtype=torch.bool)
    placed, placed_moved, share = method._on_own_ground(source, moved, target_label, valid)
    expected = torch.zeros(8, 6, dtype=torch.bool)
    expected[3:6, 3:5] = True                                 # class 2 moved by (+1, +3): feet right above class 1
    expected[6:8, 5] = True                                   # class 3 stays where it was
    assert torch.equal(placed_moved, expected) and torch.equal(placed["valid"], expected)
    assert torch.equal(placed["label"][3:6, 3:5], torch.full((3, 2), 2))
    assert torch.equal(placed["image"][:, 3:6, 3:5], source["image"][:, 2:5, 0:2])
    assert (placed["label"][~expected] == IGNORE).all() and share == pytest.approx(6 / 8)
    # A target without the ground class leaves every object where it was.
    placed, placed_moved, share = method._on_own_ground(source, moved, torch.zeros_like(target_label), valid)
    assert torch.equal(placed_moved, moved) and share == 0
    assert torch.equal(placed["label"][moved], label[moved])


def test_acp_in_warmup_false_pastes_only_after_the_switch():
    method, student, labeled, unlabeled = make_method("ael", acp_probability=1.0, supervised_warmup=2,
                                                      acp_in_warmup=False, adaptive_cutmix=False)
    outputs = train_steps(method, student, labeled, unlabeled, steps=2)     # warm-up: plain L_s
    assert labeled.loads == [] and all("acp_pixel_ratio" not in out.logs for out in outputs)
    assert method.labeled_presence.present.any()                           # sources known at the switch
    out = train_steps(method, student, labeled, unlabeled, steps=1, start=2)[0]
    assert len(labeled.loads) == 2 and out.logs["acp_pixel_ratio"] > 0    # each labeled image gets a paste
    method, student, labeled, unlabeled = make_method("ael", acp_probability=1.0, supervised_warmup=2,
                                                      adaptive_cutmix=False)
    train_steps(method, student, labeled, unlabeled, steps=1)
    assert len(labeled.loads) == 2                                          # default: the warm-up pastes too


def test_acp_prefers_a_source_holding_the_class_and_excludes_classes(monkeypatch):
    method, student, labeled, unlabeled = make_method("ael", acp_probability=1.0, acp_excluded_classes=["road"])
    assert method.acp_allowed.tolist() == [False, True, True, True]
    r = method.bank.sampling_distribution(method.acp_allowed)
    assert r[0] == 0 and r.sum().item() == pytest.approx(1.0)
    method.labeled_presence.present.zero_()
    method.labeled_presence.present[4, 2] = 1
    assert method._acp_source(torch.tensor([2]), target_index=0) == 4
    with pytest.raises(ValueError, match="not class names"):
        make_method("ael", acp_excluded_classes=["sky"])


def test_aes_and_reweighting_switches():
    logits = torch.randn(2, NUM_CLASSES, 8, 8, generator=torch.Generator().manual_seed(0))
    label = torch.randint(NUM_CLASSES, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    label[:, 0] = IGNORE
    target = {"label": label, "prediction": label.clamp(max=NUM_CLASSES - 1),
              "confidence": torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2)),
              "valid": torch.ones(2, 8, 8, dtype=torch.bool)}
    ce = torch.nn.functional.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none")
    kept = label != IGNORE
    plain = torch.stack([ce[i][kept[i]].mean() for i in range(2)]).mean()

    off, *_ = make_method("ael", dynamic_reweighting=False, equalization_sampling=False)
    off.bank.conf.copy_(torch.tensor([0.9, 0.1, 0.5, 0.2]))
    assert off.unsupervised_loss(logits, target, logs := {})[0].item() == pytest.approx(plain.item(), rel=1e-6)
    assert logs["aes_ratio"] == 1.0 and logs["weight_mean"] == 1.0    # every pixel kept, uniform weights

    dr, *_ = make_method("ael", dynamic_reweighting=True, equalization_sampling=False, gamma=2.0)
    w = target["confidence"] ** 2
    expected = torch.stack([(w[i] * ce[i])[kept[i]].sum() / w[i][kept[i]].sum() for i in range(2)]).mean()
    assert dr.unsupervised_loss(logits, target, {})[0].item() == pytest.approx(expected.item(), rel=1e-5)

    aes, *_ = make_method("ael", dynamic_reweighting=False, equalization_sampling=True)
    aes.bank.conf.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))              # class 0 never sampled
    aes.unsupervised_loss(logits, target, logs := {})
    share0 = (target["prediction"][kept] == 0).float().mean().item()
    assert logs["aes_ratio"].item() == pytest.approx(1 - share0)


def test_resumed_ael_restores_bank_state():
    method, student, labeled, unlabeled = make_method("ael")
    train_steps(method, student, labeled, unlabeled, steps=3)
    state = method.state_dict()
    assert {"bank.conf", "unlabeled_presence.present", "labeled_presence.present"} <= set(state)
    resumed, *_ = make_method("ael", seed=5)
    assert not torch.equal(resumed.bank.conf, method.bank.conf)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.bank.conf, method.bank.conf)
    assert torch.equal(resumed.unlabeled_presence.present, method.unlabeled_presence.present)
    assert torch.equal(resumed.labeled_presence.present, method.labeled_presence.present)
    for a, b in zip(resumed.teacher.parameters(), method.teacher.parameters()):
        assert torch.equal(a, b)


def test_ael_config_validation():
    cfg = method_config_class("ael")(name="ael")
    assert (cfg.gamma, cfg.beta, cfg.bank_momentum, cfg.acm_area_ratio, cfg.acp_num_classes, cfg.alpha) == \
        (2.0, 1.0, 0.999, 0.005, 3, 1.0)
    with pytest.raises(ConfigError, match="acm_area_rato"):
        validate_config({"method": {"name": "ael", "acm_area_rato": 0.01}})
    with pytest.raises(ConfigError, match="acp_scale_range"):
        validate_config({"method": {"name": "ael", "acp_scale_range": [2.0, 0.1]}})
    assert validate_config({"method": {"name": "ael", "bank_init": "random"}}).method.bank_init == "random"


def test_ael_protocol_configs_load():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(files) >= 30
    for path in files:
        cfg = load_config(path)
        assert cfg.method.name in {"ael", "cutmix", "fixmatch", "mean_teacher"}, path
    rows = [load_config(p).method for p in sorted((CONFIG_DIR / "table3").glob("*.yaml"))]
    switches = {(m.dynamic_reweighting, m.equalization_sampling, m.adaptive_cutmix, m.adaptive_copy_paste)
                for m in rows}
    assert len(switches) == 8  # Table 3: eight distinct rows
