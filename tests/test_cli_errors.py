"""Every failure a user can cause ends as one line ``equiseg <verb>: error: ...`` with exit code 2,
is written to the run's train.log, and ``--debug`` brings the full traceback back."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from equiseg.cli.main import main as cli
from equiseg.engine.checkpoint import save_atomic
from equiseg.errors import TrainingError

try:
    from test_training import _write_config, data_root, tiny_config  # noqa: F401  (module fixture)
except ImportError:  # tests/ collected as a package
    from tests.test_training import _write_config, data_root, tiny_config  # noqa: F401


def _one_error_line(err: str, verb: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"equiseg {verb}: error: "), err
    return lines[-1]


def test_nan_loss_is_one_line_and_in_train_log(data_root, tmp_path, capsys, monkeypatch):  # noqa: F811
    from equiseg.methods.base import StepOutput
    from equiseg.methods.supervised import Supervised
    original = Supervised.training_step

    def nan_at_3(self, labeled, unlabeled, iteration):
        out = original(self, labeled, unlabeled, iteration)
        return StepOutput(loss=out.loss * float("nan"), logs=out.logs) if iteration == 3 else out

    monkeypatch.setattr(Supervised, "training_step", nan_at_3)
    cfg = _write_config(tmp_path, tiny_config(data_root, tmp_path, iterations=6, train__checkpoint_every=2))
    assert cli(["train", str(cfg)]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert "loss is nan at iteration 3" in line and "last.pt" in line
    assert line in (tmp_path / "t" / "train.log").read_text()
    with pytest.raises(TrainingError):                              # --debug: the exception itself
        cli(["train", str(cfg), "--overwrite", "--debug"])


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"a": 1}, path)
    before = path.read_bytes()

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 448")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError) as err:
        save_atomic({"a": 2}, path)
    message = str(err.value)
    assert "is full" in message and str(path) in message and "intact" in message and "\n" not in message
    assert path.read_bytes() == before and list(path.parent.iterdir()) == [path]   # no temporary left


def test_checkpoint_saved_with_the_users_umask(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        save_atomic({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o644


def test_checkpoint_of_another_model_names_both(data_root, tmp_path, capsys):  # noqa: F811
    cfg = _write_config(tmp_path, tiny_config(data_root, tmp_path, iterations=1))
    assert cli(["train", str(cfg)]) == 0
    capsys.readouterr()
    best = tmp_path / "t" / "checkpoints" / "best.pt"
    assert cli(["eval", str(cfg), "--checkpoint", str(best), "model.backbone=resnet50"]) == 2
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert "is a deeplabv3plus/mobilenet_v2 with 9 classes; the config asks for deeplabv3plus/resnet50 with 9" in line
    assert len(line) < 400


def test_data_error_in_a_loader_worker_is_one_line(data_root, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    image = next(iter(sorted((root / "images").glob("train_*.png"))))
    image.write_bytes(image.read_bytes()[:200])   # a truncated PNG: the header reads, the pixels do not
    # check_files off: the start-up check would find the file first (tests/test_data_check.py)
    cfg = _write_config(tmp_path, tiny_config(root, tmp_path, iterations=30, data__num_workers=1,
                                              data__labeled=None, data__check_files=False))
    assert cli(["train", str(cfg)]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot decode image {image}" in line and "DataLoader worker" not in line


def test_permission_denied_names_the_file(data_root, tmp_path, capsys, monkeypatch):  # noqa: F811
    from equiseg.data import io as datasets
    victim = sorted((data_root / "images").glob("val_*.png"))[0]
    original = datasets.Image.open

    def open_or_deny(path, *args, **kwargs):
        if Path(path) == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(datasets.Image, "open", open_or_deny)
    cfg = _write_config(tmp_path, tiny_config(data_root, tmp_path, iterations=1))
    assert cli(["train", str(cfg)]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot read image {victim}: permission denied" in line
