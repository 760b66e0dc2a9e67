"""Engine pieces that need no data or model: sampler, schedule, checkpoints, config."""
import os
import pickle

import pytest
import torch

from equiseg.config import Config, OptimConfig, load_config, validate_config
from equiseg.engine.checkpoint import save_atomic
from equiseg.models.checkpoint import load_checkpoint
from equiseg.engine.optim import build_scheduler, poly_factor
from equiseg.engine.sampler import InfiniteBatchSampler
from equiseg.errors import ConfigError, WeightsError


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_ranks_partition_the_global_batch():
    one = take(InfiniteBatchSampler(10, 4, rank=0, world_size=1, seed=3, stream=0), 6)
    r0 = take(InfiniteBatchSampler(10, 4, rank=0, world_size=2, seed=3, stream=0), 6)
    r1 = take(InfiniteBatchSampler(10, 4, rank=1, world_size=2, seed=3, stream=0), 6)
    for g, a, b in zip(one, r0, r1):
        assert g == a + b  # same (index, seed) draws, split between the ranks


def test_sampler_covers_each_epoch_and_resumes_exactly():
    batches = take(InfiniteBatchSampler(12, 4, 0, 1, seed=1, stream=0), 6)
    first_epoch = [i for b in batches[:3] for i, _ in b]
    assert sorted(first_epoch) == list(range(12))
    second_epoch = [i for b in batches[3:] for i, _ in b]
    assert sorted(second_epoch) == list(range(12)) and second_epoch != first_epoch
    resumed = take(InfiniteBatchSampler(12, 4, 0, 1, seed=1, stream=0, start_batch=4), 2)
    assert resumed == batches[4:6]
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)


def test_sampler_streams_and_seeds_differ():
    a = take(InfiniteBatchSampler(50, 5, 0, 1, seed=1, stream=0), 1)
    b = take(InfiniteBatchSampler(50, 5, 0, 1, seed=1, stream=1), 1)
    c = take(InfiniteBatchSampler(50, 5, 0, 1, seed=2, stream=0), 1)
    assert a != b and a != c


def test_sampler_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="divisible"):
        InfiniteBatchSampler(10, 3, 0, 2, seed=0, stream=0)


def test_poly_schedule_values():
    cfg = OptimConfig(iterations=100, lr=0.01, poly_power=0.9)
    assert poly_factor(0, cfg) == 1.0
    assert poly_factor(50, cfg) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, cfg) == 0.0
    warm = OptimConfig(iterations=100, warmup_iterations=10)
    assert poly_factor(0, warm) == pytest.approx(0.1)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.01}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    sched = build_scheduler(opt, cfg)
    for _ in range(50):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)


def test_poly_schedule_restarts_decay_each_phase_to_zero():
    cfg = OptimConfig(iterations=100, poly_power=1.0)
    # Phase [0, 40): 1 - t/40; phase [40, 100): 1 - (t - 40)/60.
    assert [poly_factor(t, cfg, (40,)) for t in (0, 20, 39, 40, 70, 100)] == pytest.approx(
        [1.0, 0.5, 1 / 40, 1.0, 0.5, 0.0])
    assert poly_factor(30, cfg, (0, 100)) == poly_factor(30, cfg)  # bounds outside the run change nothing


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "ck" / "last.pt"
    save_atomic({"a": torch.ones(2)}, target)
    assert load_checkpoint(target)["a"].sum() == 2

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("boom")

    with pytest.raises(Exception):
        save_atomic({"a": Unpicklable()}, target)
    assert load_checkpoint(target)["a"].sum() == 2  # the old file is intact
    assert os.listdir(target.parent) == ["last.pt"]  # no temp file left behind


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_config_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"optim.itrations.*did you mean 'iterations'"):
        validate_config({"optim": {"itrations": 10}})
    with pytest.raises(ConfigError, match=r"unknown config key 'dta'.*'data'"):
        validate_config({"dta": {}})
    with pytest.raises(ConfigError, match=r"method.aux_wieght.*aux_weight"):
        validate_config({"method": {"name": "supervised", "aux_wieght": 1}})
    with pytest.raises(ConfigError, match="unknown method 'supervisd'.*supervised"):
        validate_config({"method": {"name": "supervisd"}})


def test_config_bad_values_are_named():
    with pytest.raises(ConfigError, match="optim.lr"):
        validate_config({"optim": {"lr": -1}})
    with pytest.raises(ConfigError, match="model.backbone"):
        validate_config({"model": {"backbone": "vgg"}})
    with pytest.raises(ConfigError, match="scale_range"):
        validate_config({"data": {"scale_range": [2.0, 1.0]}})


def test_config_overrides_and_files(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  iterations: 5\nmethod:\n  name: supervised\n")
    cfg = load_config(f, ["optim.lr=1e-3", "data.crop_size=[64,96]"])
    assert cfg.optim.iterations == 5 and cfg.optim.lr == 1e-3 and cfg.data.crop_size == (64, 96)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(f, ["optim.lr"])
    assert isinstance(Config(), Config)


def test_every_shipped_config_validates():
    from pathlib import Path
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
