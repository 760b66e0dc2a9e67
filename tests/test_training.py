"""End-to-end behaviour of the engine on tiny synthetic data: learning, resuming, DDP, CLI."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from equiseg.cli.main import main as cli
from equiseg.config import validate_config
from equiseg.data.synthetic import SYNTHETIC_SPEC, make_synthetic_dataset
from equiseg.engine.trainer import Trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=32, n_val=6, size=(48, 64), seed=1)


def tiny_config(data_root: Path, out: Path, method: str = "supervised", iterations: int = 20, **extra) -> dict:
    raw = {
        "run": {"name": "t", "output_dir": str(out), "seed": 3},
        "data": {"dataset": "synthetic", "root": str(data_root), "labeled": "1/4", "crop_size": [32, 48],
                 "scale_range": [0.75, 1.25], "batch_size": 4, "num_workers": 0},
        "model": {"backbone": "mobilenet_v2", "output_stride": 16},
        "optim": {"iterations": iterations, "lr": 0.02, "warmup_iterations": 5},
        "train": {"log_every": 1, "eval_every": 1000, "checkpoint_every": 10, "sample_every": 1000,
                  "progress_bar": False},
        "method": {"name": method},
    }
    for dotted, value in extra.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["iteration"]] = rec["loss"]
    return out


def test_supervised_run_learns_and_beats_chance(data_root, tmp_path):
    cfg = validate_config(tiny_config(data_root, tmp_path, iterations=80, optim__lr=0.03,
                                      data__labeled=None, train__log_every=10))
    result = Trainer(cfg, tmp_path / "sup").fit()
    curve = losses(tmp_path / "sup")
    assert curve[80] < 0.6 * curve[10], curve
    # Chance: predicting the most frequent val class everywhere.
    from PIL import Image
    val_masks = [np.asarray(Image.open(data_root / line.split()[1])) for line in
                 (data_root / "val.txt").read_text().split("\n") if line.strip()]
    counts = np.bincount(np.concatenate([m.ravel() for m in val_masks]), minlength=9)
    majority_acc = counts.max() / counts.sum()
    assert result.last["pixel_acc"] > majority_acc + 0.2
    assert result.last["miou"] > 2.0 / 9  # the majority predictor's mIoU is below 0.04
    assert sum(map(sum, result.last["confusion"])) == counts.sum()
    saved = json.loads((tmp_path / "sup" / "results.json").read_text())
    assert saved["last"]["iteration"] == 80 and "best" in saved
    assert (tmp_path / "sup" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "sup" / "split" / "labeled.txt").is_file()
    # The evaluation record in metrics.jsonl carries the per-class IoU under the class names.
    evals = [json.loads(line)["eval"] for line in (tmp_path / "sup" / "metrics.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]
    assert evals[-1]["student"]["iou"] == {n: v for n, v in zip(SYNTHETIC_SPEC.class_names, result.last["iou"])
                                           if v is not None}


def test_trainer_takes_a_drivers_datasets_and_initial_weights(data_root, tmp_path):
    """What DST-CBC's rounds hand the Trainer: their own val / unlabeled sets and the best model so
    far, loaded before the method is built (so a teacher starts from them too)."""
    cfg = validate_config(tiny_config(data_root, tmp_path, method="mean_teacher", iterations=1))
    first = Trainer(cfg, tmp_path / "a")
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in first.model.state_dict().items()}
    val, unlabeled = first.data.labeled, first.data.labeled   # any datasets will do
    second = Trainer(cfg, tmp_path / "b", val_dataset=val, unlabeled_dataset=unlabeled, initial_weights=weights)
    assert second.data.val is val and second.data.unlabeled is unlabeled
    assert second.ctx.unlabeled_dataset is unlabeled
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    teacher = second.method.teacher.model.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in weights.items() if k in teacher)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["supervised", "ael"])
def test_resume_reproduces_uninterrupted_losses(data_root, tmp_path, monkeypatch, method):
    raw = tiny_config(data_root, tmp_path, method=method, iterations=20)
    full = Trainer(validate_config(raw), tmp_path / "full").fit()

    original = Trainer.save_checkpoint

    def save_then_die(self):
        original(self)
        if self.iteration == 10:
            raise _Killed()

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        Trainer(validate_config(raw), tmp_path / "killed").fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = Trainer(validate_config(raw), tmp_path / "killed",
                      resume=tmp_path / "killed" / "checkpoints" / "last.pt").fit()

    a, b = losses(tmp_path / "full"), losses(tmp_path / "killed")
    assert sorted(b) == list(range(1, 21))  # 1..10 before the kill, 11..20 after the resume
    for it in range(11, 21):
        assert b[it] == pytest.approx(a[it], rel=1e-5, abs=1e-6), (it, a[it], b[it])
    assert resumed.last["miou"] == pytest.approx(full.last["miou"], abs=1e-6)


def test_evaluating_does_not_change_what_is_trained(data_root, tmp_path):
    """An evaluation (and the TensorBoard sample grid) draws from the global RNG, which also drives
    dropout: evaluated every 2 iterations or never, a teacher-student run must train the same."""
    curves = {}
    for every in (2, 1000):
        raw = tiny_config(data_root, tmp_path / str(every), method="cutmix", iterations=12, train__eval_every=every,
                          train__sample_every=every, data__unlabeled_batch_size=4, method__supervised_warmup=4)
        Trainer(validate_config(raw), tmp_path / f"run{every}").fit()
        curves[every] = losses(tmp_path / f"run{every}")
    assert sorted(curves[2]) == list(range(1, 13))
    assert curves[2] == curves[1000]


def test_results_name_the_code_loaded_at_the_start(data_root, tmp_path, monkeypatch):
    """An editable install lets files change under a long run; results.json must name the code the
    process loaded when it started, not the files found when it finished."""
    from equiseg import provenance

    provenance.code_stamp.cache_clear()
    trainer = Trainer(validate_config(tiny_config(data_root, tmp_path, iterations=2)), tmp_path / "run")
    loaded = trainer.code
    provenance.code_stamp.cache_clear()
    monkeypatch.setattr(provenance, "source_digest", lambda package_dir: "edited-mid-run")
    trainer.fit()
    provenance.code_stamp.cache_clear()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["code"] == loaded
    assert loaded["source"] != "edited-mid-run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, raw: dict, run_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(validate_config(raw), Path(run_dir))
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_one_process(data_root, tmp_path):
    raw = tiny_config(data_root, tmp_path, iterations=6, train__checkpoint_every=6)
    Trainer(validate_config(raw), tmp_path / "one").fit()
    mp.spawn(_ddp_worker, args=(2, _free_port(), raw, str(tmp_path / "two"), str(tmp_path)), nprocs=2, join=True)

    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:  # DDP keeps the replicas identical; BN statistics are rank 0's, broadcast for eval
        assert torch.equal(r0[k], r1[k]), k
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    # Same samples per step; only BatchNorm sees 2 instead of 4 images per batch on each rank.
    assert two[1] == pytest.approx(one[1], rel=0.1)
    for it in one:
        assert two[it] == pytest.approx(one[it], rel=0.25), (it, one[it], two[it])


# --------------------------------------------------------------------------- CLI


def _write_config(tmp_path: Path, raw: dict) -> Path:
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_train_eval_predict_and_errors(data_root, tmp_path, capsys):
    cfg_path = _write_config(tmp_path, tiny_config(data_root, tmp_path, iterations=4))
    assert cli(["train", str(cfg_path), "train.checkpoint_every=2"]) == 0
    run_dir = tmp_path / "t"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "results.json").is_file()
    out = capsys.readouterr().out
    assert "last checkpoint (iteration 4)" in out and "best checkpoint" in out

    # A second train into the same folder must not clobber it silently.
    assert cli(["train", str(cfg_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # --resume auto on a finished run just re-reports it; --overwrite starts afresh.
    assert cli(["train", str(cfg_path), "--resume", "auto"]) == 0
    assert cli(["train", str(cfg_path), "--overwrite", "optim.iterations=2"]) == 0
    capsys.readouterr()

    assert cli(["eval", str(run_dir / "config.yaml"), "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
                "--json", str(tmp_path / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "bicycle" in table
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] is not None

    pred_dir = tmp_path / "pred"
    images = sorted((data_root / "images").glob("val_*.png"))[:2]
    assert cli(["predict", *map(str, images), "--checkpoint", str(run_dir / "checkpoints" / "best.pt"),
                "--output", str(pred_dir)]) == 0
    from PIL import Image
    for img in images:
        index_png = Image.open(pred_dir / f"{img.stem}.png")
        assert index_png.size == Image.open(img).size
        assert np.asarray(index_png).max() < 9
        assert Image.open(pred_dir / f"{img.stem}_color.png").mode == "RGB"

    # Misspelt key: an error naming it and the closest valid key.
    assert cli(["train", str(cfg_path), "optim.iteratons=3"]) == 2
    assert "did you mean 'iterations'" in capsys.readouterr().err
    assert cli(["train", str(cfg_path), "data.root=/nonexistent/place", "--overwrite"]) == 2
    assert "/nonexistent/place" in capsys.readouterr().err


def test_cli_splits_writes_nested_lists(data_root, tmp_path, capsys):
    out = tmp_path / "splits"
    assert cli(["splits", "--dataset", "synthetic", "--root", str(data_root), "--labeled", "1/8",
                "--labeled", "1/4", "--folds", "2", "--out", str(out)]) == 0
    small = (out / "1_8" / "fold0" / "labeled.txt").read_text().split("\n")
    large = (out / "1_4" / "fold0" / "labeled.txt").read_text().split("\n")
    assert set(filter(None, small)) < set(filter(None, large))
    meta = json.loads((out / "1_4" / "fold1" / "split.json").read_text())
    assert meta and (out / "1_4" / "fold1" / "unlabeled.txt").is_file()


def test_demo_quick(tmp_path, capsys):
    assert cli(["demo", "--quick", "--out", str(tmp_path / "demo"), "--iterations", "6"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("val IoU %"):]
    assert "supervised" in table and "cutmix" in table and "gain" in table
    assert "bicycle" in table and "tail mIoU" in table and "head mIoU" in table
    assert (tmp_path / "demo" / "data_quick" / "train.txt").is_file()
    assert not (tmp_path / "demo" / "data_full").exists()        # quick and full never share data
    meta = json.loads((tmp_path / "demo" / "data_quick" / "synthetic.json").read_text())
    assert meta["small_thing_scale"] == 2.0 and meta["colour_cast"] == 0.45  # the demo's scenes


def test_demo_rejects_a_bad_method_before_generating_data(tmp_path, capsys):
    with pytest.raises(SystemExit):                                # argparse: the choices are listed
        cli(["demo", "--method", "nope", "--out", str(tmp_path / "demo")])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_predict_with_a_camvid_cpu_config_at_half_scale(data_root, tmp_path, capsys):
    """The shipped CamVid CPU configs train at data.image_scale 0.5: predict must run at that scale
    and write its outputs at the input image's own size."""
    repo = Path(__file__).resolve().parents[1]
    overrides = ["data.dataset=synthetic", f"data.root={data_root}", "model.pretrained=null", "optim.iterations=2",
                 "data.crop_size=[24,32]", "data.num_workers=0", "train.progress_bar=false",
                 f"run.output_dir={tmp_path}", "run.name=half"]
    assert cli(["train", str(repo / "configs" / "camvid" / "supervised_mbv2.yaml"), *overrides]) == 0
    assert yaml.safe_load((tmp_path / "half" / "config.yaml").read_text())["data"]["image_scale"] == 0.5
    images = sorted((data_root / "images").glob("val_*.png"))[:1]
    assert cli(["predict", *map(str, images), "--checkpoint", str(tmp_path / "half" / "checkpoints" / "best.pt"),
                "--output", str(tmp_path / "pred")]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "pred" / f"{images[0].stem}.png").size == Image.open(images[0]).size


def test_resume_after_a_kill_between_checkpoints_logs_each_iteration_once(data_root, tmp_path, monkeypatch):
    raw = tiny_config(data_root, tmp_path, iterations=16)   # checkpoints at 10 and 16
    original = Trainer._log_window

    def log_then_die(self, window, lr):
        original(self, window, lr)
        if self.iteration == 13:
            raise _Killed()

    monkeypatch.setattr(Trainer, "_log_window", log_then_die)
    with pytest.raises(_Killed):
        Trainer(validate_config(raw), tmp_path / "r").fit()
    monkeypatch.setattr(Trainer, "_log_window", original)
    Trainer(validate_config(raw), tmp_path / "r", resume=tmp_path / "r" / "checkpoints" / "last.pt").fit()
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == list(range(1, 17))


def test_labeled_count_may_be_an_integer():
    from equiseg.config import load_config
    assert load_config(None, ["data.labeled=4"]).data.labeled == "4"
    assert load_config(None, ["data.labeled=1/8"]).data.labeled == "1/8"


def test_teacher_probe_counts_every_unlabeled_pixel_of_a_class(data_root, tmp_path, capsys):
    """benchmarks/teacher_probe.py: the unlabeled masks' pixels of a class, split by prediction."""
    import importlib.util
    from PIL import Image
    cfg = validate_config(tiny_config(data_root, tmp_path, iterations=2))
    Trainer(cfg, tmp_path / "r").fit()
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_probe.py"
    spec = importlib.util.spec_from_file_location("teacher_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main([str(tmp_path / "r"), "--classes", "road,person", "--min-share", "0"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in (tmp_path / "r" / "split" / "unlabeled.txt").read_text().splitlines()]
    masks = [np.asarray(Image.open(data_root / mask)) for _, mask in lines]
    for name, c in (("road", 3), ("person", 5)):
        total = sum(int((m == c).sum()) for m in masks)
        assert f"true {name}: {total} pixels" in out
        block = out.split(f"true {name}:")[1].split("true ")[0]
        shares = [float(line.split()[2]) for line in block.splitlines() if line.strip().startswith("predicted")]
        assert sum(shares) == pytest.approx(100, abs=0.5)   # every pixel is predicted as some class
    # --thresholds: at t = 0 a class's recall is the share of its pixels predicted as it; above 1, none.
    assert probe.main([str(tmp_path / "r"), "--classes", "road", "--min-share", "0", "--thresholds", "0,1.01"]) == 0
    out = capsys.readouterr().out
    block = out.split("true road:")[1].split("pseudo-labels")[0]
    as_road = [float(line.split()[2]) for line in block.splitlines() if line.strip().startswith("predicted road")]
    cells = out.split("pseudo-labels 'argmax where max p >= t'")[1].split("road", 1)[1].split("t ")[1:]
    recall_at_0 = float(cells[0].split("/")[1])
    assert recall_at_0 == pytest.approx(as_road[0] if as_road else 0.0, abs=0.11)
    assert cells[1].split(":")[1].split() == ["0.0", "/", "0.0"]


def test_copy_paste_context_counts_ground_of_labeled_and_pasted_pixels(data_root, tmp_path, capsys):
    """benchmarks/copy_paste_context.py: the ground class of a class's pixels, before and after AEL's
    Copy-Paste (every labeled image receives a paste of the one allowed class)."""
    import importlib.util
    import yaml
    config = tmp_path / "ael.yaml"
    raw = tiny_config(data_root, tmp_path, method="ael", method__acp_probability=1.0,
                      method__acp_excluded_classes=["sky", "building", "grass", "road"])
    config.write_text(yaml.safe_dump(raw))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "copy_paste_context.py"
    spec = importlib.util.spec_from_file_location("copy_paste_context", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for placement in ("random", "ground"):
        assert script.main([str(config), "--classes", "person", "--batches", "2", "--top", "20",
                            "--set", f"method.acp_placement={placement}"]) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("person")]
        assert len(rows) == 2 and rows[0].split()[1:3] == ["as", "labeled"] and rows[1].split()[1] == "pasted"
        for row in rows:
            if "no pixel" not in row:
                shares = [float(part.split()[-2]) for part in row.split("px:")[1].split(",")]
                assert sum(shares) == pytest.approx(100, abs=0.5)            # every pixel has a ground or none
    with pytest.raises(SystemExit):
        script.main([str(config), "--classes", "nosuchclass", "--batches", "1"])
