"""DST-CBC: Algorithm 1 (class-balanced thresholds), the dynamic loss (Eq. 1-2), the DST-C and OW
variants, valtiny selection, the pseudo-labeled dataset and the round driver's resume bookkeeping."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from equiseg.config import DataConfig, load_config, validate_config
from equiseg.data.spec import DatasetSpec
from equiseg.data.synthetic import make_synthetic_dataset
from equiseg.data.transforms import train_transform
from equiseg.errors import ConfigError
from equiseg.data.pseudo_labeled import CONFIDENCE_LEVELS, PseudoLabeledDataset
from equiseg.engine.rounds import RoundLoop
from equiseg.engine.run import train_run
from equiseg.methods import method_class
from equiseg.methods.base import MethodContext, RoundJob
from equiseg.provenance import code_stamp
from equiseg.methods.components.class_balanced import (class_balanced_thresholds, confidence_bits, sample_pixels,
                                                       select_pseudo_labels, threshold_values)
from equiseg.methods.dst_cbc import draw_valtiny, dynamic_self_training_loss, dynamic_weights
from equiseg.methods.supervised import supervised_loss

IGNORE = 255
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dst_cbc"


def algorithm1(probs: torch.Tensor, alpha: float, per_class: bool = True, sample_ratio: float = 1.0) -> torch.Tensor:
    """Algorithm 1 on one (C, H, W) probability map, as the driver runs it."""
    mp, ml = probs.float().max(0)
    sample = sample_pixels(tuple(ml.shape), sample_ratio, (0, 1, 0))
    thresholds = class_balanced_thresholds(ml[sample], mp[sample], alpha, probs.shape[0], per_class)
    return select_pseudo_labels(ml, confidence_bits(mp), thresholds, IGNORE)


def hand_made_map(counts: dict[int, list[float]], num_classes: int) -> torch.Tensor:
    """A (C, 1, N) map: pixel j of class c has probability conf on c, the rest spread evenly."""
    pixels = [(c, p) for c, confs in counts.items() for p in confs]
    probs = torch.empty(num_classes, 1, len(pixels), dtype=torch.float64)
    for j, (c, p) in enumerate(pixels):
        probs[:, 0, j] = (1 - p) / (num_classes - 1)
        probs[c, 0, j] = p
    return probs


# --------------------------------------------------------------------------- Algorithm 1


def test_algorithm1_keeps_exactly_each_class_top_alpha():
    rng = np.random.default_rng(0)
    counts = {0: list(rng.uniform(0.5, 0.99, 40)), 1: list(rng.uniform(0.4, 0.9, 10)),
              2: list(rng.uniform(0.6, 0.7, 5))}
    probs = hand_made_map(counts, 3)
    ml = probs.argmax(0)[0]
    conf = probs.max(0).values[0]
    for alpha in (0.2, 0.4, 0.6, 0.8):
        y = algorithm1(probs, alpha)[0]
        for c, confs in counts.items():
            n_keep = math.ceil(round(alpha * len(confs), 9))
            top = set(torch.argsort(conf.masked_fill(ml != c, -1), descending=True)[:n_keep].tolist())
            assert set(torch.nonzero(y == c).flatten().tolist()) == top
        assert ((y == IGNORE) | (y == ml)).all()  # a kept pixel keeps its predicted class
    assert (algorithm1(probs, 1.0) == probs.argmax(0)).all()  # α = 100 %: every pixel


def test_thresholds_count_exactly_and_handle_absent_classes():
    ml = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    mp = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.7, 0.7, 0.7])  # 0.6 x 5 must keep 3, not ceil(3.0000000000000004)
    t = class_balanced_thresholds(ml, mp, 0.6, 3)                     # class 1: ties, all four share one value
    assert threshold_values(t) == [torch.tensor(0.3).item(), torch.tensor(0.7).item(), 0.0]  # class 2 absent: keep all
    assert class_balanced_thresholds(ml, mp, 1.0, 3).tolist() == [0, 0, 0]
    assert threshold_values(class_balanced_thresholds(ml, mp, 0.01, 3))[:2] == [torch.tensor(0.5).item(),
                                                                               torch.tensor(0.7).item()]  # the top pixel


def test_saturated_confidences_keep_the_float32_top_alpha_share():
    """A confident labeling model (logit margins 8-20): many confidences lie within 7.6e-6 of 1 and
    would tie on 16-bit levels; on float32 the kept share is the float32 top-α share, as the authors'."""
    g = torch.Generator().manual_seed(0)
    n = 20_000
    margins = 8 + 12 * torch.rand(n, generator=g)
    logits = torch.zeros(3, 1, n)
    logits[0, 0] = margins                       # every pixel predicted as class 0
    mp, ml = logits.softmax(0).max(0)
    assert (torch.round(mp * CONFIDENCE_LEVELS) == CONFIDENCE_LEVELS).float().mean() > 0.3   # levels would tie
    t = class_balanced_thresholds(ml.flatten(), mp.flatten(), 0.2, 3)
    kept = select_pseudo_labels(ml, confidence_bits(mp), t, IGNORE) != IGNORE
    authors = sorted(mp.flatten().tolist())      # the authors' float32 sort: ties only where float32 values tie
    float32_kept = sum(v >= authors[-math.ceil(0.2 * n)] for v in authors)
    assert int(kept.sum()) == float32_kept
    assert kept.float().mean().item() < 0.3      # 16-bit levels kept about 44 %


def test_global_threshold_starves_the_rare_class():
    # Imbalanced map: 90 confident pixels of a head class, 10 less confident ones of a rare class.
    counts = {0: list(np.linspace(0.90, 0.99, 90)), 1: list(np.linspace(0.51, 0.60, 10))}
    probs = hand_made_map(counts, 2)
    cbc = algorithm1(probs, 0.2, per_class=True)
    dst_c = algorithm1(probs, 0.2, per_class=False)
    assert (cbc == 1).sum() == 2 and (cbc == 0).sum() == 18   # 20 % of each class
    assert (dst_c == 1).sum() == 0 and (dst_c == 0).sum() == 20  # 20 % of all pixels, all from the head class
    t = class_balanced_thresholds(probs.argmax(0), probs.float().max(0).values, 0.2, 2, per_class=False)
    assert t[0] == t[1]


def test_pixel_sample_is_reproducible_and_near_its_ratio():
    a = sample_pixels((200, 300), 0.0625, (3, 1, 7))
    assert torch.equal(a, sample_pixels((200, 300), 0.0625, (3, 1, 7)))
    assert not torch.equal(a, sample_pixels((200, 300), 0.0625, (3, 2, 7)))
    assert abs(a.float().mean().item() - 0.0625) < 0.005
    assert sample_pixels((4, 4), 1.0, (0,)).all()


# --------------------------------------------------------------------------- dynamic loss


def test_dynamic_weights_are_the_current_probability_of_the_pseudo_label():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]).T.reshape(1, 3, 1, 2)  # (B, C, H, W)
    y_hat = torch.tensor([[[0, IGNORE]]])
    p = logits.softmax(1)
    omega = dynamic_weights(logits, y_hat, gamma=9, ignore_index=IGNORE)
    assert omega[0, 0, 0].item() == pytest.approx(p[0, 0, 0, 0].item() ** 9)
    assert omega[0, 0, 1].item() == 0.0
    y_disagree = torch.tensor([[[2, 1]]])  # the current model thinks pixel 0 is class 0, not 2
    omega = dynamic_weights(logits, y_disagree, gamma=9, ignore_index=IGNORE)
    assert omega[0, 0, 0] < 1e-6 < omega[0, 0, 1]
    assert torch.equal(dynamic_weights(logits, y_disagree, gamma=0, ignore_index=IGNORE), torch.ones(1, 1, 2))
    logits.requires_grad_(True)
    dynamic_weights(logits, y_disagree, 9, IGNORE).sum()  # detached: no graph
    assert not dynamic_weights(logits, y_disagree, 9, IGNORE).requires_grad


def test_dynamic_loss_normalisation_follows_the_authors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (4, 6, 7), generator=g)
    target[:, 0] = IGNORE
    ones = torch.ones(4, 6, 7)
    # γ = 0 (ST): ω ≡ 1, the plain cross-entropy of the joint batch, i.e. the supervised loss.
    st = dynamic_self_training_loss(logits, target, ones, IGNORE)
    assert st.item() == pytest.approx(supervised_loss({"out": logits}, target, IGNORE, 0.0).item(), rel=1e-6)
    # Σ ω·ℓ over the supervised pixels' count, not over Σ ω.
    omega = torch.rand(4, 6, 7, generator=g)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    known = target != IGNORE
    expected = (omega * ce)[known].sum() / known.sum()
    assert dynamic_self_training_loss(logits, target, omega, IGNORE).item() == pytest.approx(expected.item(), rel=1e-6)
    assert dynamic_self_training_loss(logits, torch.full_like(target, IGNORE), omega, IGNORE).item() == 0.0


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return {"out": self.head(self.body(x))}


def _method(**options):
    cfg = validate_config({"method": {"name": "dst_cbc", **options}}).method
    student = TinyNet()
    ctx = MethodContext(num_classes=4, ignore_index=IGNORE, device=torch.device("cpu"))
    return method_class("dst_cbc")(cfg, student, ctx), student


def _batch(n: int, seed: int, confidence: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (n, 8, 8), generator=g)
    label[:, :2] = IGNORE
    out = {"image": torch.randn(n, 3, 8, 8, generator=g), "label": label}
    if confidence:
        out["confidence"] = torch.rand(n, 8, 8, generator=g)
    return out


@pytest.mark.parametrize("weights", ["current", "stored"])
def test_training_step_weighs_labeled_pixels_one_and_pseudo_pixels_omega(weights):
    method, student = _method(weights=weights, gamma=9)
    labeled, unlabeled = _batch(2, 1), _batch(2, 2, confidence=True)
    out = method.training_step(labeled, unlabeled, 0)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and student.head.weight.grad is not None
    assert 0 < out.logs["omega"] < 1 and 0 < out.logs["pseudo_share"] < 1
    # Reproduce the loss by hand from the same forward.
    student.eval()
    method, _ = _method(weights=weights, gamma=9)
    object.__setattr__(method, "student", student)
    logits = student(torch.cat([labeled["image"], unlabeled["image"]]))["out"]
    if weights == "current":
        p = logits[2:].softmax(1).gather(1, unlabeled["label"].clamp(max=3).unsqueeze(1)).squeeze(1)
    else:
        p = unlabeled["confidence"]
    omega = torch.cat([torch.ones(2, 8, 8), p.detach() ** 9])
    target = torch.cat([labeled["label"], unlabeled["label"]])
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    known = target != IGNORE
    expected = (omega * ce)[known].sum() / known.sum()
    assert method.training_step(labeled, unlabeled, 1).loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- valtiny


def test_valtiny_covers_every_class_and_is_reproducible():
    rng = np.random.default_rng(5)
    presence = rng.random((60, 8)) < 0.5
    presence[:, 0] = True          # a class in every image (VOC background)
    presence[:, 7] = False
    presence[13, 7] = True         # a class in one image only
    chosen = draw_valtiny(presence, per_class=1, seed=3)
    assert chosen == draw_valtiny(presence, per_class=1, seed=3)
    assert draw_valtiny(presence, per_class=1, seed=4) != chosen
    assert 13 in chosen and presence[chosen].any(0).all()
    assert len(chosen) == presence.shape[1]  # one image per class, as the paper's valtiny
    two = draw_valtiny(presence, per_class=2, seed=3)
    assert len(two) == 2 * presence.shape[1] - 1  # class 7 has one image only
    assert all(presence[two, c].sum() >= min(2, presence[:, c].sum()) for c in range(8))
    assert draw_valtiny(np.zeros((5, 3), dtype=bool)) == []


# --------------------------------------------------------------------------- pseudo-labeled data


def test_pseudo_labeled_dataset_keeps_label_and_confidence_aligned(tmp_path):
    spec = DatasetSpec("toy", ("a", "b", "c"))
    h, w = 20, 30
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    label = np.tile(np.arange(w) // 7 % 3, (h, 1)).astype(np.uint8)
    label[:3] = IGNORE
    level = (label.astype(np.int64) * 250 + 7).astype(np.uint16)  # confidence is a function of the label
    Image.fromarray(image).save(tmp_path / "img.png")
    round_dir = tmp_path / "round_1"
    (round_dir / "pseudo_labels").mkdir(parents=True)
    (round_dir / "confidence").mkdir()
    Image.fromarray(label).save(round_dir / "pseudo_labels" / "img.png")
    Image.fromarray(level).save(round_dir / "confidence" / "img.png")
    (round_dir / "pseudo_labels.txt").write_text("img.png pseudo_labels/img.png\n")
    data_cfg = DataConfig(crop_size=(24, 24), scale_range=(0.6, 1.8), flip=True)
    ds = PseudoLabeledDataset(tmp_path, round_dir / "pseudo_labels.txt", spec, train_transform(data_cfg, spec),
                              with_confidence=True)
    padded = False
    for seed in range(12):
        s = ds[(0, seed)]
        y, conf, valid = s["label"], s["confidence"], s["valid"]
        assert y.shape == conf.shape == (24, 24) and y.dtype == torch.long
        assert (y[~valid] == IGNORE).all() and (conf[~valid] == 0).all()
        stored = torch.round(conf[valid] * CONFIDENCE_LEVELS).long()
        assert torch.equal(stored, y[valid] * 250 + 7)
        padded |= bool((~valid).any())
    assert padded  # some crops needed padding
    plain = PseudoLabeledDataset(tmp_path, round_dir / "pseudo_labels.txt", spec, train_transform(data_cfg, spec))
    assert "confidence" not in plain[(0, 3)] and torch.equal(plain[(0, 3)]["label"], ds[(0, 3)]["label"])


# --------------------------------------------------------------------------- configs


def test_config_keys_are_validated():
    with pytest.raises(ConfigError, match="supervised_overrides"):
        validate_config({"method": {"name": "dst_cbc", "supervised_overrides": {"model.arch": "deeplabv2"}}})
    with pytest.raises(ConfigError, match="supervised_overrides"):
        validate_config({"method": {"name": "dst_cbc", "supervised_overrides": {"optim.iterations": 0}}})
    with pytest.raises(ConfigError, match="valtiny_list"):
        validate_config({"method": {"name": "dst_cbc", "valtiny_list": "v.txt"}})
    with pytest.raises(ConfigError, match="alphas"):
        validate_config({"method": {"name": "dst_cbc", "alphas": []}})


def test_shipped_configs_load():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(files) >= 13
    variants = {}
    for f in files:
        cfg = load_config(f)
        assert cfg.method.name == "dst_cbc"
        variants[f.stem] = cfg.method
    assert variants["ablation_voc_1_20_st"].gamma == 0 and variants["ablation_voc_1_20_st"].alphas == [1.0]
    assert variants["ablation_voc_1_20_dst_c"].thresholds == "global"
    assert variants["ablation_voc_1_20_ow"].weights == "stored"
    assert variants["voc_1_8"].gamma == 4 and variants["voc_1_20"].gamma == 9


# --------------------------------------------------------------------------- the round driver


def _run_config(root: Path, **method) -> object:
    return validate_config({
        "run": {"seed": 0, "device": "cpu"},
        "data": {"dataset": "synthetic", "root": str(root), "labeled": "2", "crop_size": [24, 32],
                 "batch_size": 2, "num_workers": 0},
        "model": {"arch": "deeplabv3plus", "backbone": "mobilenet_v2", "pretrained": None},
        "optim": {"iterations": 2},
        "train": {"progress_bar": False, "log_every": 1, "eval_every": 100, "checkpoint_every": 1,
                  "sample_every": 1000},
        "method": {"name": "dst_cbc", "alphas": [0.5, 1.0], "threshold_sample_ratio": 0.25,
                   "supervised_overrides": {"optim.iterations": 2}, **method},
    })


class TinySegModel(nn.Module):
    """Stands in for ``build_model``'s networks in the driver tests (same contract, ~1k weights)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def backbone_parameters(self):
        return self.body.parameters()

    def head_parameters(self):
        return self.head.parameters()

    def forward(self, x):
        return {"out": self.head(self.body(x))}


@pytest.fixture
def tiny_models(monkeypatch):
    import equiseg.engine.trainer
    import equiseg.models

    def build(model_cfg, num_classes):
        return TinySegModel(num_classes)

    monkeypatch.setattr(equiseg.models, "build_model", build)  # model_from_checkpoint's builder
    monkeypatch.setattr(equiseg.engine.trainer, "build_model", build)
    return build


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """6 train (2 labeled, 4 unlabeled) + 3 val synthetic scenes of 24x32."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("dst_cbc_data"), n_train=6, n_val=3, size=(24, 32), seed=1)


def test_rounds_resume_where_they_stopped(tiny_root, tmp_path, tiny_models):
    from equiseg.engine.trainer import TrainResult

    cfg = _run_config(tiny_root, selection="valtiny")
    state = tiny_models(cfg.model, 9).state_dict()
    scores = {0: 0.30, 1: 0.50, 2: 0.40}

    def stub(calls, fail_round=None):
        def train(job: RoundJob):
            calls.append(job)
            ck = job.round_dir / "checkpoints"
            ck.mkdir(parents=True, exist_ok=True)
            torch.save({"model": state, "iteration": 2}, ck / "last.pt")
            if job.round == fail_round:
                raise RuntimeError("killed")
            torch.save({"model": state, "iteration": 1}, ck / "best.pt")
            best, last = {"iteration": 1, "miou": scores[job.round]}, {"iteration": 2, "miou": scores[job.round] - 0.1}
            return TrainResult(job.round_dir, last, best, 1)
        return train

    run_dir = tmp_path / "run"
    first: list[RoundJob] = []
    with pytest.raises(RuntimeError, match="killed"):
        RoundLoop(cfg, run_dir, train=stub(first, fail_round=2)).run()
    assert [j.round for j in first] == [0, 1, 2]
    assert first[0].init_checkpoint is None and first[1].init_checkpoint == run_dir / "round_0/checkpoints/best.pt"
    assert first[1].unlabeled is not None and len(first[1].unlabeled) == 4 and len(first[1].val) <= 3
    assert (run_dir / "round_1" / "round.json").is_file() and not (run_dir / "round_2" / "round.json").exists()
    stats_1 = json.loads((run_dir / "round_1" / "pseudo_labels.json").read_text())
    assert stats_1["num_images_with_gt"] == 4 and stats_1["miou"] is not None and 0 < stats_1["coverage"] < 1
    assert not (run_dir / "round_1" / "confidence").exists()  # kept for OW only
    finished = (run_dir / "round_1/pseudo_labels.json", run_dir / "round_2/pseudo_labels.json", run_dir / "valtiny.txt")
    marks = {p: p.stat().st_mtime_ns for p in finished}

    last_link = run_dir / "checkpoints" / "last.pt"  # lets the CLI's --resume auto / --overwrite see the run
    assert last_link.is_file() and last_link.resolve() == (run_dir / "round_1/checkpoints/last.pt").resolve()
    with pytest.raises(ConfigError, match="resume"):
        RoundLoop(cfg, run_dir, train=stub([])).run()  # a fresh start must not mix with old rounds

    second: list[RoundJob] = []
    result = RoundLoop(cfg, run_dir, resume=True, train=stub(second)).run()
    assert [j.round for j in second] == [2]  # finished rounds are not redone
    assert second[0].resume == run_dir / "round_2/checkpoints/last.pt"
    assert second[0].init_checkpoint == run_dir / "round_1/checkpoints/best.pt"  # the best model so far
    assert {p: p.stat().st_mtime_ns for p in marks} == marks  # nor are finished pseudo-labels / valtiny
    stats_2 = json.loads((run_dir / "round_2" / "pseudo_labels.json").read_text())
    assert stats_2["coverage"] == 1.0  # α = 100 %

    results = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    assert [r["selected_round"] for r in results["rounds"]] == [0, 1, 1]
    assert results["selected"]["round"] == 1 and results["last"]["round"] == 2
    assert results["code"]["source"] == code_stamp()["source"]  # rounds stamp their results.json too
    assert results["selected"]["selection_miou"] == 0.50 and results["last"]["selection_miou"] == pytest.approx(0.30)
    assert results["selected"]["miou"] is not None and results["rounds"][1]["pseudo_label_miou"] is not None
    assert all(r["best_val_miou"] is not None for r in results["rounds"])  # valtiny: tested on val each round
    assert result.best["round"] == 1 and (run_dir / "checkpoints" / "best.pt").is_file()
    record_2 = json.loads((run_dir / "round_2" / "round.json").read_text())
    assert record_2["labeler"]["round"] == 1 and record_2["selected"]["round"] == 1
    lines = (run_dir / "round_2" / "pseudo_labels.txt").read_text().split("\n")
    assert len([line for line in lines if line]) == 4


def test_tiny_real_run_with_stored_weights(tiny_root, tmp_path, tiny_models):
    """The real trainer for every round (a tiny network in place of MobileNetV2)."""
    cfg = _run_config(tiny_root, weights="stored")
    run_dir = tmp_path / "real"
    result = train_run(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["rounds"]) == 3 and math.isfinite(results["last"]["miou"])
    assert result.last["round"] == 2
    for k in (1, 2):
        assert (run_dir / f"round_{k}" / "confidence").is_dir()  # OW trains on them
        assert (run_dir / f"round_{k}" / "checkpoints" / "last.pt").is_file()
        metrics = [json.loads(line) for line in (run_dir / f"round_{k}" / "metrics.jsonl").read_text().splitlines()]
        assert any("omega" in m for m in metrics)
    assert load_config(run_dir / "config.yaml").method.weights == "stored"
