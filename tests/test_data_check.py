"""The start-up data check: bad files are found before the first step, named with their list."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from equiseg.cli.main import main as cli
from equiseg.data.check import ListToCheck, check_lists
from equiseg.data.io import Pair
from equiseg.data.synthetic import SYNTHETIC_SPEC, make_synthetic_dataset
from equiseg.errors import DataError

try:
    from test_training import _write_config, tiny_config
except ImportError:  # tests/ collected as a package
    from tests.test_training import _write_config, tiny_config


@pytest.fixture()
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("check"), n_train=12, n_val=3, size=(24, 32), seed=2)


def _pairs(root: Path, split: str) -> list[Pair]:
    return [Pair(*line.split()) for line in (root / f"{split}.txt").read_text().splitlines() if line.strip()]


def test_truncated_val_image_is_found_before_the_first_step(data, tmp_path, capsys):
    victim = data / _pairs(data, "val")[1].image
    victim.write_bytes(victim.read_bytes()[:150])
    cfg = _write_config(tmp_path, tiny_config(data, tmp_path, iterations=3))
    assert cli(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"equiseg train: error: cannot read image {victim}") and "val split" in err
    assert not (tmp_path / "t" / "metrics.jsonl").exists()          # no step was taken


@pytest.mark.parametrize("fault", ["size", "value", "missing", "mode"])
def test_bad_pool_files_name_the_file_and_the_list(data, fault):
    pair = _pairs(data, "train")[4]
    mask_path = data / pair.label
    mask = np.asarray(Image.open(mask_path))
    if fault == "size":
        Image.fromarray(mask[:-2]).save(mask_path)
    elif fault == "value":
        bad = mask.copy()
        bad[0, 0] = 77
        Image.fromarray(bad).save(mask_path)
    elif fault == "missing":
        (data / pair.image).unlink()
    else:
        Image.fromarray(np.stack([mask] * 3, -1)).save(mask_path)
    with pytest.raises(DataError) as err:
        check_lists(data, [ListToCheck("train.txt", _pairs(data, "train"))], SYNTHETIC_SPEC, use_cache=False)
    message = str(err.value)
    assert "(listed in train.txt)" in message
    expected = {"size": "is 32x24 but its mask", "value": "values [77]", "missing": "does not exist",
                "mode": "single-channel"}[fault]
    assert expected in message and (str(mask_path) in message or str(data / pair.image) in message)


def test_a_missing_unlabeled_file_stops_a_supervised_run(data, tmp_path, capsys):
    from equiseg.config import validate_config
    from equiseg.data.build import resolve_split
    raw = tiny_config(data, tmp_path, iterations=2)   # labeled: 1/4 of the pool
    unlabeled = resolve_split(validate_config(raw).data).unlabeled[0]
    (data / unlabeled.image).unlink()
    assert cli(["train", str(_write_config(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert f"image {data / unlabeled.image} does not exist (listed in the synthetic train split" in err


def test_cache_skips_checked_files_until_they_change(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUISEG_CACHE_DIR", str(tmp_path / "cache"))
    lists = [ListToCheck("train.txt", _pairs(data, "train")), ListToCheck("val.txt", _pairs(data, "val"))]
    assert check_lists(data, lists, SYNTHETIC_SPEC) == 15
    assert check_lists(data, lists, SYNTHETIC_SPEC) == 0
    touched = data / _pairs(data, "val")[0].image
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert check_lists(data, lists, SYNTHETIC_SPEC) == 1
    # Parallel workers give the same verdicts.
    shutil.rmtree(tmp_path / "cache")
    many = [ListToCheck("train.txt", _pairs(data, "train") * 6)]
    assert check_lists(data, many, SYNTHETIC_SPEC, workers=2) == 72

    cfg = _write_config(tmp_path, tiny_config(data, tmp_path))
    assert cli(["check-data", str(cfg)]) == 0
    assert "12 train pool + 3 val pairs fine" in capsys.readouterr().out
