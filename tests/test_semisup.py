"""The teacher-student core (EMA teacher, pseudo-labels, CutMix) and the baseline methods
mean_teacher, cutmix and fixmatch on a tiny random problem."""
from __future__ import annotations

import math

import pytest
import torch

from equiseg.config import validate_config
from equiseg.errors import ConfigError
from equiseg.methods import available_methods
from equiseg.methods.components import (EMATeacher, make_pseudo_labels, mixing_partners, paste, random_boxes,
                                        sigmoid_rampup, softmax_mse)

try:
    from test_semisup_helpers import IGNORE, TinySegNet, batches, make_method, train_steps
except ImportError:  # tests/ collected as a package
    from tests.test_semisup_helpers import IGNORE, TinySegNet, batches, make_method, train_steps


def test_methods_are_registered():
    assert {"mean_teacher", "cutmix", "fixmatch", "ael"} <= set(available_methods())


# --------------------------------------------------------------------------- EMA teacher


def test_ema_warmup_decay_formula():
    assert EMATeacher.decay(0, 0.99) == 0.0            # first step copies the student
    assert EMATeacher.decay(1, 0.99) == pytest.approx(0.5)
    assert EMATeacher.decay(9, 0.99) == pytest.approx(0.9)
    assert EMATeacher.decay(98, 0.99) == pytest.approx(1 - 1 / 99)
    assert EMATeacher.decay(99, 0.99) == pytest.approx(0.99)
    assert EMATeacher.decay(10_000, 0.99) == 0.99      # capped at m
    assert EMATeacher.decay(5, 0.0) == 0.0


def test_ema_update_parameters_and_buffer_modes():
    student = TinySegNet()
    for mode in ("teacher", "copy", "ema"):
        teacher = EMATeacher(student, momentum=0.99, buffers=mode)
        assert all(not p.requires_grad for p in teacher.parameters())
        before = [p.clone() for p in teacher.parameters()]
        bn_before = teacher.model.body[1].running_mean.clone()
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)
            student.body[1].running_mean.add_(2.0)
        teacher.update(student, iteration=3)          # d = min(1 - 1/4, 0.99) = 0.75
        for t, b, s in zip(teacher.parameters(), before, student.parameters()):
            assert torch.allclose(t, 0.75 * b + 0.25 * s)
        bn = teacher.model.body[1].running_mean
        expected = {"teacher": bn_before, "copy": student.body[1].running_mean,
                    "ema": 0.75 * bn_before + 0.25 * student.body[1].running_mean}[mode]
        assert torch.allclose(bn, expected)
        with torch.no_grad():
            for p in student.parameters():
                p.sub_(1.0)
            student.body[1].running_mean.sub_(2.0)


def test_teacher_bn_modes():
    student = TinySegNet()
    x = torch.randn(2, 3, 8, 8) * 3 + 1
    train_teacher = EMATeacher(student, 0.99, buffers="teacher", bn_mode="train")
    stats = train_teacher.model.body[1].running_mean.clone()
    train_teacher.probabilities(x)
    assert train_teacher.model.training and not torch.equal(stats, train_teacher.model.body[1].running_mean)
    eval_teacher = EMATeacher(student, 0.99, buffers="copy", bn_mode="eval")
    probs = eval_teacher.probabilities(x)
    assert not eval_teacher.model.training and torch.equal(stats, eval_teacher.model.body[1].running_mean)
    assert probs.shape == (2, 4, 8, 8) and torch.allclose(probs.sum(1), torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="eval-mode teacher"):
        EMATeacher(student, 0.99, buffers="teacher", bn_mode="eval")


def test_pseudo_labels_threshold_and_padding():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]).t().reshape(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])
    pl = make_pseudo_labels(probs, valid, threshold=0.7, ignore_index=IGNORE)
    assert pl.prediction.tolist() == [[[0, 1, IGNORE]]]
    assert pl.label.tolist() == [[[0, IGNORE, IGNORE]]]
    assert pl.confidence.flatten().tolist() == pytest.approx([0.9, 0.6, 0.8])


# --------------------------------------------------------------------------- mixing


def test_random_boxes_area_and_partners():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(64, 40, 40, g, area=0.5)
    fractions = boxes.float().mean((1, 2))
    assert ((fractions - 0.5).abs() < 0.05).all()
    for b in range(boxes.shape[0]):  # a single axis-aligned rectangle
        ys, xs = boxes[b].nonzero(as_tuple=True)
        assert boxes[b, ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    partners = mixing_partners(5, g)
    assert sorted(partners.tolist()) == list(range(5)) and (partners != torch.arange(5)).all()
    assert mixing_partners(1, g).tolist() == [0]


def test_paste_mixes_every_field_consistently():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    target = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4, dtype=torch.long),
              "confidence": torch.zeros(2, 4, 4), "valid": torch.ones(2, 4, 4, dtype=torch.bool)}
    source = {"image": torch.ones(2, 3, 4, 4), "label": torch.full((2, 4, 4), 3),
              "confidence": torch.full((2, 4, 4), 0.5), "valid": torch.zeros(2, 4, 4, dtype=torch.bool)}
    out = paste(mask, target, source)
    assert (out["image"][:, :, :2] == 1).all() and (out["image"][:, :, 2:] == 0).all()
    assert (out["label"][mask] == 3).all() and (out["label"][~mask] == 0).all()
    assert (out["confidence"][mask] == 0.5).all() and (~out["valid"][mask]).all() and out["valid"][~mask].all()


# --------------------------------------------------------------------------- losses


def test_softmax_mse_and_rampup():
    logits = torch.zeros(1, 2, 1, 2)
    teacher = torch.tensor([[1.0, 0.5], [0.0, 0.5]]).view(1, 2, 1, 2)
    valid = torch.tensor([[[True, False]]])
    # pixel 0: (0.5-1)^2 + (0.5-0)^2 = 0.5; pixel 1 padded.
    assert softmax_mse(logits, teacher, valid).item() == pytest.approx(0.5)
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(3, 0) == 1.0


# --------------------------------------------------------------------------- the methods


@pytest.mark.parametrize("name, options", [
    ("mean_teacher", {}),
    ("mean_teacher", {"consistency": "ce", "rampup_iterations": 10}),
    ("cutmix", {}),
    ("cutmix", {"confidence_threshold": 0.3, "teacher_bn": "eval", "ema_buffers": "copy", "student_forward": "joint"}),
    ("fixmatch", {}),
])
def test_baseline_methods_train(name, options):
    method, student, labeled, unlabeled = make_method(name, **options)
    outputs = train_steps(method, student, labeled, unlabeled, steps=3)
    assert all(math.isfinite(float(v)) for out in outputs for v in out.logs.values())
    assert labeled.loads == [] and unlabeled.loads == []  # baselines never fetch extra images


def test_aux_head_adds_to_supervised_loss():
    method, student, labeled, unlabeled = make_method("cutmix", aux=True, aux_weight=0.4)
    train_steps(method, student, labeled, unlabeled, steps=1)
    assert student.aux.weight.grad is not None


def test_teacher_is_saved_with_the_method_and_reported_first():
    method, student, labeled, unlabeled = make_method("cutmix")
    train_steps(method, student, labeled, unlabeled, steps=2)
    state = method.state_dict()
    assert any(k.startswith("teacher.model.") for k in state)
    assert not any(k.startswith("student") for k in state)
    assert list(method.eval_models(2)) == ["teacher", "student"]
    other, *_ = make_method("cutmix", seed=1, report_model="student")
    assert list(other.eval_models(2)) == ["student", "teacher"]
    other.load_state_dict(state)
    for a, b in zip(other.teacher.parameters(), method.teacher.parameters()):
        assert torch.equal(a, b)


def test_teacher_copies_student_after_first_step():
    method, student, labeled, unlabeled = make_method("cutmix")
    train_steps(method, student, labeled, unlabeled, steps=1)  # iteration 0: decay 0
    for t, s in zip(method.teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_fixmatch_uses_strong_view_and_threshold():
    method, student, labeled, unlabeled = make_method("fixmatch", confidence_threshold=0.0, student_forward="joint")
    assert method.strong_view
    l_batch, u_batch = batches(labeled, unlabeled, 0)
    seen = []
    student.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    method.training_step(l_batch, u_batch, 0)
    strong = u_batch["image_strong"]
    mixed = seen[-1][l_batch["image"].shape[0]:]
    # Each mixed pixel comes from the strong view of this image or of its partner.
    from_strong = (mixed.unsqueeze(1) == strong.unsqueeze(0)).all(2).any(1)
    assert from_strong.all()
    # With τ = 1 nothing is confident: L_u = 0 but the step still trains on the labeled images.
    method, student, labeled, unlabeled = make_method("fixmatch", confidence_threshold=1.0)
    out = train_steps(method, student, labeled, unlabeled, steps=1)[0]
    assert out.logs["loss_unsup"] == 0 and out.logs["pl_ratio"] == 0


def test_mean_teacher_rampup_weight():
    method, student, labeled, unlabeled = make_method("mean_teacher", rampup_iterations=4, alpha=2.0)
    out = train_steps(method, student, labeled, unlabeled, steps=1)[0]
    assert out.logs["unsup_weight"] == pytest.approx(2.0 * math.exp(-5))


def test_method_sections_validate_and_reject_typos():
    cfg = validate_config({"method": {"name": "fixmatch", "confidence_threshold": 0.9}})
    assert cfg.method.confidence_threshold == 0.9 and cfg.method.cutmix_area == 0.5
    assert validate_config({"method": {"name": "fixmatch"}}).method.confidence_threshold == 0.95
    with pytest.raises(ConfigError, match="ema_momentum"):
        validate_config({"method": {"name": "cutmix", "ema_momentun": 0.9}})
    with pytest.raises(ConfigError, match="teacher_bn"):
        validate_config({"method": {"name": "mean_teacher", "teacher_bn": "eval"}})


@pytest.mark.parametrize("mode, forwards", [("separate", 2), ("joint", 1)])
def test_student_forward_modes(mode, forwards):
    method, student, labeled, unlabeled = make_method("cutmix", student_forward=mode)
    calls = []
    student.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    l_batch, u_batch = batches(labeled, unlabeled, 0)
    method.training_step(l_batch, u_batch, 0)
    assert len(calls) == forwards and sum(calls) == 4
