"""The mechanisms that make the semi-supervised methods work on short schedules (supervised warm-up,
the all-valid-pixel L_u normaliser, class-adaptive thresholds from the confidence bank, OHEM at a
fraction of the batch) and the pseudo-label audit, which must never reach the loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equiseg.config import validate_config
from equiseg.errors import ConfigError
from equiseg.data.synthetic import SYNTHETIC_SPEC
from equiseg.engine.trainer import Trainer
from equiseg.evaluation.pseudo_label_audit import PseudoLabelAudit
from equiseg.methods.components import Ohem, make_pseudo_labels, partial_label_cross_entropy, pixel_cross_entropy
from equiseg.methods.components.confidence_bank import ConfidenceBank
from equiseg.methods.components.class_quantiles import RunningClassThresholds
from equiseg.methods.components.class_prior import PRIOR_FLOOR, LogitAdjustment, RunningClassDistribution
from equiseg.methods.components.debias import PseudoLabelDebias
from equiseg.methods.components.losses import ohem_cross_entropy

try:
    from test_semisup_helpers import IGNORE, NUM_CLASSES, batches, make_method
    from test_training import data_root, tiny_config  # noqa: F401  (the module-scoped fixture)
except ImportError:  # tests/ collected as a package
    from tests.test_semisup_helpers import IGNORE, NUM_CLASSES, batches, make_method
    from tests.test_training import data_root, tiny_config  # noqa: F401


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["cutmix", "fixmatch", "ael", "hagseg", "mean_teacher"])
def test_supervised_warmup_then_teacher_is_student_at_the_switch(name):
    method, student, labeled, unlabeled = make_method(name, supervised_warmup=3, ema_momentum=0.99)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    initial_teacher = {k: v.clone() for k, v in method.teacher.model.state_dict().items()}
    student.train()
    for it in range(5):
        l_batch, u_batch = batches(labeled, unlabeled, it)
        out = method.training_step(l_batch, u_batch, it)
        if it < 3:  # warm-up: L_s alone, no unlabeled targets
            assert float(out.logs["loss_unsup"]) == 0.0 and out.pseudo_targets is None
        else:
            assert out.pseudo_targets is not None
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.after_optimizer_step(it)
        if it < 2:  # the teacher waits during the warm-up
            assert all(torch.equal(v, initial_teacher[k]) for k, v in method.teacher.model.state_dict().items())
        if it == 2:  # the switch: teacher = student, BatchNorm buffers included
            assert _same_state(method.teacher.model, student)
        if it == 4:  # the EMA restarted: step 4 is EMA step t = 1 (decay 0.5), not t = 4
            assert not _same_state(method.teacher.model, student)
    assert method.ema_step(4) == 1 and method.ema_step(2) is None
    # Before the switch there is no teacher to evaluate (its head would be random); after it, both.
    assert list(method.eval_models(2)) == ["student"]
    assert list(method.eval_models(3)) == ["teacher", "student"]


def test_warmup_evaluations_log_the_student_and_best_is_the_teacher(data_root, tmp_path):  # noqa: F811
    raw = tiny_config(data_root, tmp_path, method="cutmix", iterations=4, method__supervised_warmup=2,
                      train__eval_every=1)
    Trainer(validate_config(raw), tmp_path / "run").fit()
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    # Evaluated after 1-4 optimizer steps; the teacher is made from the student after the 2nd.
    assert [(r["iteration"], sorted(r["eval"])) for r in evals] == [
        (1, ["student"]), (2, ["student", "teacher"]), (3, ["student", "teacher"]), (4, ["student", "teacher"])]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["best"]["model"] == "teacher" and results["best_iteration"] >= 2


def test_restarted_warmup_schedule_is_a_whole_supervised_training(data_root, tmp_path):  # noqa: F811
    raw = tiny_config(data_root, tmp_path, method="cutmix", iterations=6, method__supervised_warmup=3,
                      method__warmup_schedule="restart", train__log_every=1, optim__poly_power=1.0,
                      optim__warmup_iterations=0)
    Trainer(validate_config(raw), tmp_path / "run").fit()
    lr = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    # Logged after each step: the rate of the next one. Each phase of 3 steps decays by thirds to 0,
    # so the first semi-supervised step (index 3) starts again at the full rate.
    base = lr[2]
    assert base > 0 and lr == pytest.approx([base * 2 / 3, base / 3, base, base * 2 / 3, base / 3, 0.0])
    with pytest.raises(ConfigError, match="needs a supervised_warmup"):
        validate_config({"method": {"name": "cutmix", "warmup_schedule": "restart"}})


def test_warmup_as_long_as_the_run_is_a_config_error():
    with pytest.raises(ConfigError, match=r"method.supervised_warmup \(10\) must be below optim.iterations \(10\)"):
        validate_config({"optim": {"iterations": 10}, "method": {"name": "cutmix", "supervised_warmup": 10}})


def test_no_warmup_keeps_the_papers_ema_schedule():
    method, *_ = make_method("cutmix")
    assert [method.ema_step(i) for i in range(3)] == [0, 1, 2]


def test_all_valid_pixel_normaliser():
    """L_u = 1/B Σ_i Σ_{j kept} ℓ_ij / |valid_i| ('valid') against Σ_{j kept} ℓ_ij / |kept_i|."""
    logits = torch.randn(2, NUM_CLASSES, 4, 4, generator=torch.Generator().manual_seed(0))
    label = torch.randint(NUM_CLASSES, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    label[0, :2] = IGNORE              # image 0: 8 of 16 pixels below the threshold
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, :, 0] = False             # image 1: a padded column
    label[1, :, 0] = IGNORE
    ce = pixel_cross_entropy(logits, label, IGNORE)
    by_valid = (ce[0].sum() / 16 + ce[1].sum() / 12) / 2
    by_kept = (ce[0].sum() / 8 + ce[1].sum() / 12) / 2
    for denominator, expected in (("valid", by_valid), ("pseudo_labeled", by_kept)):
        method, *_ = make_method("cutmix", loss_denominator=denominator)
        target = {"label": label, "valid": valid}
        weight = label != IGNORE
        from equiseg.methods.components import weighted_mean
        loss = weighted_mean(ce, weight, method.unsupervised_denominator(target))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        # the audit's per-pixel shares add up to the loss
        shares = method.pseudo_targets({**target, "origin": torch.zeros_like(label)}, weight,
                                       method.unsupervised_denominator(target)).weight
        assert (shares * ce).sum().item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_adaptive_thresholds_on_a_hand_computed_bank():
    bank = ConfidenceBank(4, IGNORE, momentum=0.9)
    assert torch.allclose(bank.class_thresholds(0.9), torch.full((4,), 0.9))   # empty bank: global τ
    bank.conf.copy_(torch.tensor([0.9, 0.45, 0.0, 0.3]))
    # x = Conf / max = [1, 1/2, 0, 1/3]; M(x) = x / (2 - x) = [1, 1/3, 0, 1/5]; τ_c = 0.9 M(x).
    expected = torch.tensor([0.9, 0.3, 0.0, 0.18])
    assert torch.allclose(bank.class_thresholds(0.9), expected)
    # Per-class thresholds in the pseudo-labels: class 1 at 0.35 passes its 0.3, class 0 at 0.85 fails 0.9.
    probs = torch.zeros(1, 4, 1, 2)
    probs[0, :, 0, 0] = torch.tensor([0.85, 0.05, 0.05, 0.05])
    probs[0, :, 0, 1] = torch.tensor([0.3, 0.35, 0.2, 0.15])
    pl = make_pseudo_labels(probs, torch.ones(1, 1, 2, dtype=torch.bool), expected, IGNORE)
    assert pl.label.tolist() == [[[IGNORE, 1]]]
    method, *_ = make_method("ael", adaptive_threshold=True, confidence_threshold=0.9)
    method.bank.conf.copy_(torch.tensor([0.9, 0.45, 0.0, 0.3]))
    assert torch.allclose(method.threshold(), expected)


def test_debiased_pseudo_labels_on_a_hand_computed_prior():
    """DebiasPL: p̂ ← m p̂ + (1 − m) mean p over valid pixels; p̃ = softmax(log p − λ log p̂)."""
    debias = PseudoLabelDebias(2, strength=1.0, momentum=0.5)
    assert torch.allclose(debias.prior.distribution, torch.tensor([0.5, 0.5]))
    probs = torch.zeros(1, 2, 1, 3)
    probs[0, :, 0, 0] = torch.tensor([0.8, 0.2])
    probs[0, :, 0, 1] = torch.tensor([0.6, 0.4])
    probs[0, :, 0, 2] = torch.tensor([0.0, 1.0])    # crop padding: not in the prior
    valid = torch.tensor([[[True, True, False]]])
    adjusted = debias(probs, valid)
    # mean over the two valid pixels [0.7, 0.3]; p̂ = 0.5 [0.5, 0.5] + 0.5 [0.7, 0.3] = [0.6, 0.4]
    assert torch.allclose(debias.prior.distribution, torch.tensor([0.6, 0.4]))
    # pixel 1: p / p̂ = [1.0, 1.0] → [0.5, 0.5]; pixel 0: [4/3, 1/2] → normalised [8/11, 3/11]
    assert torch.allclose(adjusted[0, :, 0, 1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(adjusted[0, :, 0, 0], torch.tensor([8 / 11, 3 / 11]))
    # In a method: the rarely predicted class wins the pixel the teacher was unsure of.
    method, *_ = make_method("cutmix", debias_strength=1.0, debias_momentum=0.0)
    assert method.debias is not None and "debias.prior.distribution" in method.state_dict()  # checkpointed, resumes
    assert make_method("cutmix")[0].debias is None                             # off by default
    probs4 = torch.tensor([[0.7, 0.5], [0.1, 0.3], [0.1, 0.1], [0.1, 0.1]]).view(1, 4, 1, 2)
    pl = make_pseudo_labels(method.debias(probs4, torch.ones(1, 1, 2, dtype=torch.bool)), valid[..., :2], 0.0, IGNORE)
    # momentum 0: p̂ = [0.6, 0.2, 0.1, 0.1]; pixel 1: p / p̂ = [0.83, 1.5, 1, 1], class 1 wins
    assert pl.label[0, 0].tolist() == [0, 1] and pl.prediction[0, 0].tolist() == [0, 1]


def test_distribution_alignment_on_hand_computed_marginals():
    """ReMixMatch's distribution alignment: π from the labeled ground truth, p̂ from the teacher,
    both set by their first batch, then EMAs; p̃ ∝ p · π / p̂."""
    labeled_prior = RunningClassDistribution(2, momentum=0.5)
    labeled_prior.update_labels(torch.tensor([[[0, 0, 1, IGNORE]]]), IGNORE)   # first batch: π = [2/3, 1/3]
    assert torch.allclose(labeled_prior.distribution, torch.tensor([2 / 3, 1 / 3]))
    labeled_prior.update_labels(torch.tensor([[[1, 1, 1, 1]]]), IGNORE)        # π = ½ π + ½ [0, 1]
    assert torch.allclose(labeled_prior.distribution, torch.tensor([1 / 3, 2 / 3]))
    align = PseudoLabelDebias(2, strength=1.0, momentum=0.5, target="labeled")
    probs = torch.zeros(1, 2, 1, 3)
    probs[0, :, 0, 0] = torch.tensor([0.8, 0.2])
    probs[0, :, 0, 1] = torch.tensor([1.0, 0.0])
    probs[0, :, 0, 2] = torch.tensor([0.0, 1.0])    # crop padding: not in p̂
    adjusted = align(probs, torch.tensor([[[True, True, False]]]), labeled_prior)
    assert torch.allclose(align.prior.distribution, torch.tensor([0.9, 0.1]))  # first batch: the mean
    # pixel 0: p · π / p̂ = [0.8 · (1/3) / 0.9, 0.2 · (2/3) / 0.1] = [0.296, 1.333] → class 1 wins
    expected = torch.tensor([0.8 / 3 / 0.9, 0.2 * 2 / 3 / 0.1])
    assert torch.allclose(adjusted[0, :, 0, 0], expected / expected.sum())
    # In a method: π comes from the labeled batch before anything is pasted into it.
    method, _, labeled, unlabeled = make_method("ael", debias_strength=1.0, debias_target="labeled",
                                                acp_probability=1.0)
    assert "labeled_prior.distribution" in method.state_dict()               # checkpointed, resumes
    l, u = batches(labeled, unlabeled, 0)
    known = l["label"][l["label"] != IGNORE]
    raw = torch.bincount(known, minlength=method.ctx.num_classes).float() / known.numel()
    out = method.training_step(l, u, 0)
    assert out.logs["acp_pixel_ratio"] > 0 and torch.allclose(method.labeled_prior.distribution, raw)
    with pytest.raises(ValueError, match="needs debias_strength"):
        make_method("cutmix", debias_target="labeled")


def test_logit_adjusted_unlabeled_loss_on_hand_computed_marginals():
    """δ = τ (log q̂ − log π): L_u is ℓ_ce on logits + δ, q̂ the pseudo-labels' class distribution."""
    labeled_prior = RunningClassDistribution(3, momentum=0.5)
    labeled_prior.update_labels(torch.tensor([[0, 0, 1, 2]]), IGNORE)          # π = [1/2, 1/4, 1/4]
    adjust = LogitAdjustment(3, strength=1.0, momentum=0.5)
    pseudo = torch.tensor([[0, 0, 0, 1, IGNORE]])                              # q̂ = [3/4, 1/4, 0]
    delta = adjust.offsets(pseudo, IGNORE, labeled_prior)
    expected = torch.tensor([3 / 4, 1 / 4, PRIOR_FLOOR]).log() - torch.tensor([1 / 2, 1 / 4, 1 / 4]).log()
    assert torch.allclose(delta, expected)
    assert delta[1] == 0 and delta[2] < -10   # class 2, never pseudo-labeled, is hardly pushed down
    # Pixels count by their weight in L_u (AEL: equalization sampling x re-weighting).
    weighted = LogitAdjustment(3, strength=1.0, momentum=0.5)
    weighted.offsets(pseudo, IGNORE, labeled_prior, torch.tensor([[1.0, 1.0, 0.0, 2.0, 5.0]]))
    assert torch.allclose(weighted.pseudo.distribution, torch.tensor([0.5, 0.5, 0.0]))   # 2 : 2 : 0
    # In a method: the step's L_u is ℓ_ce on the offset logits, and off by default.
    method, _, labeled, unlabeled = make_method("cutmix", seed=3, unlabeled_logit_adjustment=1.0)
    assert make_method("cutmix")[0].logit_adjustment is None
    logits = torch.randn(2, NUM_CLASSES, 4, 4)
    target = {"label": torch.randint(0, NUM_CLASSES, (2, 4, 4))}
    method.labeled_prior.update_labels(torch.arange(NUM_CLASSES).repeat(3), IGNORE)  # π uniform
    loss = method.unlabeled_pixel_loss(logits, target)
    q = torch.bincount(target["label"].flatten(), minlength=NUM_CLASSES).float() / target["label"].numel()
    offsets = q.clamp_min(PRIOR_FLOOR).log() - torch.full((NUM_CLASSES,), 1 / NUM_CLASSES).log()
    assert torch.allclose(loss, pixel_cross_entropy(logits + offsets.view(1, -1, 1, 1), target["label"], IGNORE))


def test_class_balanced_thresholds_on_hand_computed_histograms():
    """t_c: top-α of each class's recent confidences; τ_c = min(τ, t_c); absent classes keep theirs."""
    def batch(pixels):  # (predicted class, confidence) per pixel; the rest of the mass on the others
        probs = torch.zeros(1, 3, 1, len(pixels))
        for x, (c, p) in enumerate(pixels):
            probs[0, :, 0, x] = (1 - p) / 2
            probs[0, c, 0, x] = p
        return probs

    balance = RunningClassThresholds(3, fraction=0.5, momentum=0.5)
    assert balance.thresholds(0.95).tolist() == pytest.approx([0.95] * 3)      # nothing seen yet: τ
    valid = torch.tensor([[[True] * 5 + [False]]])                             # the last pixel: padding
    tau = balance(*batch([(0, .99), (0, .98), (0, .97), (0, .96), (1, .6), (2, .9)]).max(1), valid, 0.95)
    # class 0: top half ≥ 0.98, above τ; class 1: its one pixel, 0.6; class 2: only on padding, τ
    assert tau.tolist() == pytest.approx([0.95, 0.6, 0.95], abs=1e-6)
    # The first batch of a class fills its histogram; later ones are averaged in with momentum 0.5.
    tau = balance(*batch([(1, .8), (0, .98), (0, .97), (0, .96), (1, .8), (2, .9)]).max(1), valid,
                  torch.tensor([0.5, 0.95, 0.95]))
    # class 1: mass 0.5 at 0.6 and 1.0 at 0.8; the top half of 1.5 is reached at 0.8.
    # class 0: 0.5 at .99, 1 at .98, .97 and .96; the top half of 3.5 at 0.97, above its τ of 0.5.
    assert tau.tolist() == pytest.approx([0.5, 0.8, 0.95], abs=1e-6)
    # CBST / DST-CBC's rule: t_c alone, so a frequent class's bar rises above τ too.
    replace = RunningClassThresholds(3, fraction=0.5, momentum=0.5, only_lower=False)
    replace.load_state_dict(balance.state_dict())
    assert replace.thresholds(0.5).tolist() == pytest.approx([0.97, 0.8, 0.5], abs=1e-6)
    with pytest.raises(ValueError, match="confidence_threshold"):
        make_method("cutmix", class_balanced_fraction=0.5, class_balanced_rule="replace", confidence_threshold=0.95)
    # In a method: checkpointed (resumes), off by default.
    method, *_ = make_method("cutmix", class_balanced_fraction=0.5, confidence_threshold=0.95)
    assert "class_balance.histogram" in method.state_dict()
    assert make_method("cutmix")[0].class_balance is None


def test_ohem_min_kept_scales_with_the_batch():
    ohem = Ohem(threshold=0.0, min_kept=100_000, min_kept_fraction=0.25)
    assert ohem.kept_at_least(400) == 100 and ohem.kept_at_least(800) == 200
    assert Ohem(min_kept=7).kept_at_least(10_000) == 7
    torch.manual_seed(0)
    for size in (8, 16):  # the same logits tiled: a batch twice the size keeps twice the pixels
        logits = torch.randn(1, 3, 8, 8).repeat(1, 1, size // 8, 1)
        target = torch.zeros(1, size, 8, dtype=torch.long)
        ce = pixel_cross_entropy(logits, target, IGNORE)
        kept = ce.flatten().topk(size * 8 // 4).values.mean()   # the hardest quarter
        assert ohem_cross_entropy(logits, target, IGNORE, ohem).item() == pytest.approx(kept.item(), rel=1e-5)
    with pytest.raises(Exception, match="ohem is false"):
        make_method("cutmix", ohem_min_kept_fraction=0.1)


def test_audit_on_a_hand_built_case():
    audit = PseudoLabelAudit(num_classes=3, ignore_index=IGNORE)
    truth = torch.tensor([[[0, 0, 1, 2]]])                       # the loaded batch: 1 image of 1 x 4
    label = torch.tensor([[[0, 1, 1, IGNORE], [0, 0, 0, 0]]])     # 2 trained rows: one traced, one fetched
    origin = torch.tensor([[[0, 1, 2, 3], [-1, -1, -1, -1]]])
    weight = torch.tensor([[[0.1, 0.2, 0.3, 0.0], [0.1, 0.1, 0.1, 0.1]]])
    audit.update(label, weight, origin, truth)
    s = audit.summary(["a", "b", "c"], tail_ids=[2])
    assert s["precision"] == {"a": 1.0, "b": 0.5, "c": None}
    assert s["recall"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert s["iou"]["a"] == 0.5 and s["iou"]["b"] == 0.5 and s["iou"]["c"] == 0.0
    assert s["kept"] == pytest.approx(3 / 4)
    assert s["weight_share"]["a"] == pytest.approx(0.5) and s["weight_share"]["b"] == pytest.approx(0.5)
    assert s["wrong_weight"] == pytest.approx(0.2 / 1.0)
    assert s["untraced_weight"] == pytest.approx(0.4 / 1.0)
    assert s["tail_miou"] == 0.0 and s["tail_weight_share"] == 0.0
    assert audit.summary(["a", "b", "c"]) is None                 # summary resets


def _audit_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_audit_masks_never_reach_the_method_or_the_loss(data_root, tmp_path, monkeypatch):  # noqa: F811
    """Same run with the audit on and off: bit-identical losses; the method never gets the masks."""
    seen_keys: set = set()
    from equiseg.methods.cutmix import CutMix
    original = CutMix.training_step

    def spy(self, labeled, unlabeled, iteration):
        seen_keys.update(unlabeled)
        return original(self, labeled, unlabeled, iteration)

    monkeypatch.setattr(CutMix, "training_step", spy)
    runs = {}
    for mode in ("on", "off"):
        raw = tiny_config(data_root, tmp_path, method="cutmix", iterations=6, train__pseudo_label_audit=mode,
                          method__supervised_warmup=2)
        Trainer(validate_config(raw), tmp_path / mode).fit()
        runs[mode] = _audit_records(tmp_path / mode)
    assert "audit_label" not in seen_keys and "label" not in seen_keys
    on = {r["iteration"]: r for r in runs["on"] if "loss" in r}
    off = {r["iteration"]: r for r in runs["off"] if "loss" in r}
    assert [on[i]["loss"] for i in sorted(on)] == [off[i]["loss"] for i in sorted(off)]
    audited = [r["pseudo_labels"] for i, r in sorted(on.items()) if "pseudo_labels" in r]
    assert len(audited) == 4 and not any("pseudo_labels" in r for r in off.values())   # none in warm-up
    record = audited[-1]
    assert set(record["iou"]) == set(SYNTHETIC_SPEC.class_names)
    assert 0 <= record["kept"] <= 1 and record["untraced_weight"] == 0.0
    assert sum(v for v in record["weight_share"].values() if v is not None) == pytest.approx(1.0)


def test_audit_needs_a_mask_for_every_unlabeled_image(data_root):  # noqa: F811
    from equiseg.data.list_dataset import ListDataset, WithAuditLabels
    from equiseg.errors import DataError
    images = [line.split()[0] for line in (data_root / "train.txt").read_text().split("\n") if line.strip()]
    plain = ListDataset(data_root, images[:3], SYNTHETIC_SPEC, with_labels=False)
    with pytest.raises(DataError, match="mask path for every unlabeled image"):
        WithAuditLabels(plain)
    pairs = [line.split() for line in (data_root / "train.txt").read_text().split("\n") if line.strip()]
    audited = WithAuditLabels(ListDataset(data_root, pairs[:3], SYNTHETIC_SPEC, with_labels=False))
    sample = audited[(1, 5)]
    assert "label" not in sample and sample["audit_label"].shape == sample["valid"].shape
    plain_sample = audited.dataset.load(1, 5)
    assert torch.equal(plain_sample["image"], sample["image"])   # the masks change no augmentation draw


def test_partial_label_loss_on_hand_computed_sets():
    """−log Σ_{c ∈ S} q^c with S = candidates ∪ {ŷ}; ℓ_ce when S = {ŷ}; 0 on ignored pixels."""
    logits = torch.tensor([1.0, 0.0, 2.0, -1.0]).view(1, 4, 1, 1).repeat(1, 1, 1, 3)
    q = logits[0, :, 0, 0].softmax(0)
    target = torch.tensor([[[0, 0, IGNORE]]])
    candidates = torch.zeros(1, 4, 1, 3, dtype=torch.bool)
    candidates[0, 2, 0, 0] = True                                   # pixel 0: S = {0, 2}
    loss = partial_label_cross_entropy(logits, target, candidates, IGNORE)
    assert torch.allclose(loss[0, 0, 0], -(q[0] + q[2]).log())
    assert torch.allclose(loss[0, 0, 1], pixel_cross_entropy(logits, target, IGNORE)[0, 0, 1])  # S = {0}
    assert loss[0, 0, 2] == 0
    # In a method: an ε no teacher probability reaches leaves every set a singleton, so L_u is
    # exactly the plain one; a small ε changes it.
    losses = {}
    for epsilon in (None, 0.999, 0.05):
        method, _, labeled, unlabeled = make_method("cutmix", seed=3, partial_label_threshold=epsilon)
        losses[epsilon] = method.training_step(*batches(labeled, unlabeled, 0), 0).logs["loss_unsup"]
    assert torch.allclose(losses[0.999], losses[None]) and losses[0.05] < losses[None] - 1e-3


def test_fixmatch_strong_view_comes_from_its_config(data_root, tmp_path):  # noqa: F811
    off = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    raw = tiny_config(data_root, tmp_path, method="fixmatch", method__strong_view=off)
    sample = Trainer(validate_config(raw), tmp_path / "off").data.unlabeled[0]
    assert torch.equal(sample["image_strong"], sample["image"])  # no photometric op left
    raw = tiny_config(data_root, tmp_path, method="fixmatch", method__strong_view={**off, "grayscale_p": 1.0})
    strong = Trainer(validate_config(raw), tmp_path / "gray").data.unlabeled[0]["image_strong"]
    assert not torch.equal(strong, sample["image"])
    # Grayscale: the three channels hold one luma, so after per-channel normalisation they are
    # affine images of each other.
    r, g = strong[0].flatten(), strong[1].flatten()
    assert torch.corrcoef(torch.stack([r, g]))[0, 1] > 0.999
    default = validate_config({"method": {"name": "fixmatch"}}).method.strong_view
    assert (default.jitter_p, default.jitter, default.grayscale_p, default.blur_p, default.blur_sigma) == \
        (0.8, (0.5, 0.5, 0.5, 0.25), 0.2, 0.5, (0.1, 2.0))  # UniMatch's recipe
    with pytest.raises(ConfigError, match="hue's at most 0.5"):
        validate_config({"method": {"name": "fixmatch", "strong_view": {"jitter": [0.5, 0.5, 0.5, 0.6]}}})
    with pytest.raises(ConfigError, match="blur_sigme"):
        validate_config({"method": {"name": "fixmatch", "strong_view": {"blur_sigme": [0.1, 1.0]}}})
