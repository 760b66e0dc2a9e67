"""Tiny fakes shared by the semi-supervised tests (no test functions here): a 2-layer conv net
returning {"out"} (+ "aux"), in-memory datasets with ``load(index, seed)``, and a method context."""
from __future__ import annotations

import torch
from torch import nn

from equiseg.methods import method_class, method_config_class
from equiseg.methods.base import MethodContext

NUM_CLASSES = 4
CLASS_NAMES = ("road", "car", "person", "bicycle")
IGNORE = 255
SIZE = (16, 16)


class TinySegNet(nn.Module):
    """conv-BN-ReLU-dropout, then a 1x1 classifier; logits at input size."""

    def __init__(self, num_classes: int = NUM_CLASSES, aux: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.1))
        self.head = nn.Conv2d(8, num_classes, 1)
        self.aux = nn.Conv2d(8, num_classes, 1) if aux else None

    def forward(self, x: torch.Tensor) -> dict:
        features = self.body(x)
        out = {"out": self.head(features)}
        if self.aux is not None and self.training:
            out["aux"] = self.aux(features)
        return out


def block_label(index: int, size=SIZE) -> torch.Tensor:
    """A label map of rectangles whose classes depend on the index (so images differ)."""
    h, w = size
    label = torch.zeros(h, w, dtype=torch.long)
    label[: h // 2, w // 2:] = 1 + index % 3
    label[h // 2:, : w // 2] = 1 + (index + 1) % 3
    label[h - 2:, w - 2:] = IGNORE
    return label


class FakeDataset:
    """``len`` images; ``load(index, seed)`` returns a sample dict and records the call."""

    def __init__(self, length: int, with_labels: bool = True, strong_view: bool = False, size=SIZE):
        self.length, self.with_labels, self.strong_view, self.size = length, with_labels, strong_view, size
        self.loads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(1000 * index + seed % 1000)
        label = block_label(index, self.size)
        image = torch.randn(3, *self.size, generator=g) + label.clamp(max=NUM_CLASSES).float()
        valid = torch.ones(self.size, dtype=torch.bool)
        valid[:, -1] = False  # a padded column
        out = {"image": image, "valid": valid, "index": index, "name": f"img{index}"}
        if self.with_labels:
            out["label"] = label.masked_fill(~valid, IGNORE)
        if self.strong_view:
            out["image_strong"] = image * 0.8 + 0.1 * torch.randn(3, *self.size, generator=g)
        return out

    def load(self, index: int, seed: int) -> dict:
        self.loads.append((int(index), int(seed)))
        return self.sample(index, seed)

    def batch(self, indices) -> dict:
        samples = [self.sample(i) for i in indices]
        out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if torch.is_tensor(samples[0][k])}
        out["index"] = torch.tensor([s["index"] for s in samples])
        out["name"] = [s["name"] for s in samples]
        return out


def make_context(labeled=None, unlabeled=None, seed: int = 0) -> MethodContext:
    return MethodContext(num_classes=NUM_CLASSES, ignore_index=IGNORE, device=torch.device("cpu"),
                         class_names=CLASS_NAMES, labeled_dataset=labeled, unlabeled_dataset=unlabeled,
                         total_iterations=10, generator=torch.Generator().manual_seed(seed))


def make_method(name: str, seed: int = 0, aux: bool = False, **options):
    """A method on a fresh TinySegNet (weights from ``seed``) with fake datasets."""
    torch.manual_seed(seed)
    student = TinySegNet(aux=aux)
    cls = method_class(name)
    labeled = FakeDataset(6)
    unlabeled = FakeDataset(10, with_labels=False, strong_view=cls.strong_view)
    cfg = method_config_class(name)(name=name, **options)
    method = cls(cfg, student, make_context(labeled, unlabeled, seed))
    return method, student, labeled, unlabeled


def batches(labeled: FakeDataset, unlabeled: FakeDataset, step: int, batch: int = 2) -> tuple[dict, dict]:
    l_idx = [(step * batch + i) % len(labeled) for i in range(batch)]
    u_idx = [(step * batch + i) % len(unlabeled) for i in range(batch)]
    return labeled.batch(l_idx), unlabeled.batch(u_idx)


def train_steps(method, student, labeled, unlabeled, steps: int = 3, lr: float = 0.05, start: int = 0) -> list:
    """Run ``steps`` SGD steps as the engine does, from iteration ``start``; check losses/gradients;
    return the outputs."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    student.train()
    method.train()
    outputs = []
    for it in range(start, start + steps):
        l_batch, u_batch = batches(labeled, unlabeled, it)
        out = method.training_step(l_batch, u_batch, it)
        assert torch.isfinite(out.loss), out.logs
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        for p in student.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        for p in method.teacher.parameters():
            assert not p.requires_grad and p.grad is None
        assert {id(p) for p in method.parameters()} == {id(p) for p in method.teacher.parameters()}
        optimizer.step()
        method.after_optimizer_step(it)
        outputs.append(out)
    return outputs
