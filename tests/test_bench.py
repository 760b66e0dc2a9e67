"""``equiseg bench``: the table and its statistics, config-equality caching, presets, and a tiny
end-to-end bench of two methods on synthetic data (trained in spawned processes, then reused)."""
from __future__ import annotations

import json
import math
import queue
from pathlib import Path

import pytest
import torch
import yaml

import equiseg
from equiseg.bench import runner
from equiseg.bench.cache import RunState, comparable, differences, find_finished_run, run_state
from equiseg.bench.presets import PRESETS, preset_configs
from equiseg.bench.table import RunRecord, Stat, bench_json, bench_markdown, paired_gains, summarize
from equiseg.cli.main import main as cli
from equiseg.config import config_to_yaml, load_config, validate_config
from equiseg.data.synthetic import make_synthetic_dataset
from equiseg.errors import ConfigError
from equiseg.provenance import code_stamp, describe, same_code, source_digest
from test_training import tiny_config

BENCH_ITERATIONS = 4


# --------------------------------------------------------------------------- statistics and the table


def test_mean_and_sample_spread():
    two = Stat.of([0.5, None, 0.7, float("nan")])  # unknown values are left out
    assert two.n == 2 and two.mean == pytest.approx(0.6) and two.spread == pytest.approx(math.sqrt(0.02))
    assert two.format(100) == "60.00 ± 14.14"
    one = Stat.of([0.42])
    assert one.spread is None and one.format(100) == "42.00"
    assert Stat.of([None]).format() == "n/a" and Stat.of([]).n == 0


def _fake_groups() -> dict[str, list[RunRecord]]:
    def record(method, seed, miou, tail, iou, **kw):
        return RunRecord(method, seed, f"out/{method}_seed{seed}", miou_last=miou, tail_miou_last=tail,
                         miou_best=miou + 0.01, tail_miou_best=tail, best_iteration="600", iou_last=iou,
                         iterations=600, wall_s=600.0 + 60 * seed, peak_memory_bytes=2 * 1024 ** 3,
                         memory_kind="max_rss", **kw)

    return {
        "supervised": [record("supervised", 0, 0.50, 0.10, [0.9, 0.1, 0.5]),
                       record("supervised", 1, 0.70, 0.30, [0.7, 0.3, 1.1])],
        "ael": [record("ael", 0, 0.60, 0.20, [0.8, 0.2, 0.8]),
                RunRecord("ael", 1, "out/ael_seed1", status="failed", error="FloatingPointError: loss is nan")],
    }


def test_markdown_and_json_tables_on_fake_results():
    groups = _fake_groups()
    protocol = {"dataset": "camvid", "iterations": {"supervised": "600", "ael": "600 (x2)"}, "seeds": "0, 1"}
    md = bench_markdown(groups, protocol, ["road", "pole", "sky"], [1], "maximum resident set size")
    rows: dict[str, str] = {}
    for line in md.splitlines():  # the results table's rows come first
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)
    # supervised: mIoU 60 ± 14.14 over seeds 0, 1; wall 10 and 11 min; 1 s / iteration on average.
    assert rows["supervised"].startswith("| supervised | 0, 1 | 60.00 ± 14.14 | 20.00 ± 14.14 | 61.00 ± 14.14 |")
    assert "| 10.5 ± 0.7 | 1.050 ± 0.071 | 2.00 ± 0.00 | trained |" in rows["supervised"]
    assert rows["ael"].startswith("| ael | 0, 1 | 60.00 | 20.00 | 61.00 | 20.00 | 600 |")  # the failure is left out
    assert "failed, trained" in rows["ael"]
    assert "- dataset: camvid" in md and "- iterations: supervised: 600; ael: 600 (x2)" in md
    assert "Peak memory: maximum resident set size" in md and "sample standard deviation" in md
    assert "| pole * | 20.00 | 20.00 |" in md and "| sky | 80.00 | 80.00 |" in md  # 1.1 and 0.5: mean 0.8
    assert "ael seed 1 (out/ael_seed1): FloatingPointError: loss is nan" in md
    assert "| ael | 0 | +10.00 | +10.00 | +10.00 | +10.00 | 1 of 1 | no (14.14) |" in md  # seed 1 failed: unpaired

    data = bench_json(groups, protocol, ["road", "pole", "sky"], [1], "rss")
    json.dumps(data)  # plain JSON
    sup = data["methods"][0]
    assert sup["method"] == "supervised" and sup["summary"]["miou_last"]["mean"] == pytest.approx(0.6)
    assert sup["summary"]["miou_last"]["n"] == 2 and sup["iou_last_mean"] == pytest.approx([0.8, 0.2, 0.8])
    assert sup["runs"][1]["s_per_iteration"] == pytest.approx(1.1)
    assert data["tail_ids"] == [1] and data["memory"] == "rss"
    assert summarize(groups["ael"])["miou_last"].n == 1


def test_gains_over_supervised_are_paired_by_seed():
    def record(method, seed, miou, tail, error=None):
        return RunRecord(method, seed, f"out/{method}_seed{seed}", miou_last=miou, tail_miou_last=tail, error=error)

    groups = {
        "supervised": [record("supervised", 0, 0.48, 0.16), record("supervised", 1, 0.50, 0.17),
                       record("supervised", 2, 0.46, 0.15)],
        # Every seed better by 0.01-0.03, although seed 2 (0.475) is below supervised's seed 1 (0.50).
        "cutmix": [record("cutmix", 0, 0.49, 0.18), record("cutmix", 1, 0.53, 0.16), record("cutmix", 2, 0.475, 0.15)],
        # Seed 1 failed: only seeds 0 and 2 are paired; seed 5 has no supervised partner.
        "ael": [record("ael", 0, 0.55, 0.20), record("ael", 1, None, None, error="nan"),
                record("ael", 2, 0.51, 0.19), record("ael", 5, 0.60, 0.30)],
    }
    gains = paired_gains(groups)
    assert list(gains) == ["cutmix", "ael"]
    cutmix, ael = gains["cutmix"], gains["ael"]
    assert cutmix.seeds == [0, 1, 2] and cutmix.miou == pytest.approx([0.01, 0.03, 0.015])
    assert cutmix.tail_miou == pytest.approx([0.02, -0.01, 0.0]) and cutmix.wins == 3
    # supervised's sample std is 0.02: a mean gain of 0.0183 is not beyond it, ael's 0.06 is.
    assert cutmix.baseline_spread == pytest.approx(0.02) and cutmix.beyond_spread is False
    assert ael.seeds == [0, 2] and ael.miou == pytest.approx([0.07, 0.05]) and ael.beyond_spread is True

    md = bench_markdown(groups, {}, [], [], "rss")
    row = next(line for line in md.splitlines() if line.startswith("| cutmix | 0, 1, 2 | +1.00"))
    assert "| +1.00, +3.00, +1.50 | +1.83 ± 1.04 | +2.00, -1.00, +0.00 | +0.33 ± 1.53 | 3 of 3 | no (2.00) |" in row
    assert "| ael | 0, 2 | +7.00, +5.00 | +6.00 ± 1.41 |" in md and "| 2 of 2 | yes (2.00) | 0 of 2 |" in md
    # Pairs count as made on one machine kind only when both stamps name the same CPU kernels.
    stamped = {"supervised": [RunRecord("supervised", s, "o", miou_last=0.5, tail_miou_last=0.1, code={"cpu": "AVX2"})
                              for s in (0, 1, 2)],
               "cutmix": [RunRecord("cutmix", 0, "o", miou_last=0.5, tail_miou_last=0.1, code={"cpu": "AVX2"}),
                          RunRecord("cutmix", 1, "o", miou_last=0.5, tail_miou_last=0.1, code={"cpu": "AVX512"}),
                          RunRecord("cutmix", 2, "o", miou_last=0.5, tail_miou_last=0.1)]}
    assert paired_gains(stamped)["cutmix"].same_cpu == 1
    assert "| 1 of 3 |" in bench_markdown(stamped, {}, [], [], "rss")
    data = bench_json(groups, {}, [], [], "rss")["paired_gain"]
    assert data["baseline"] == "supervised" and data["methods"]["ael"]["beyond_spread"] is True
    assert bench_json({"ael": groups["ael"]}, {}, [], [], "rss")["paired_gain"] is None  # no baseline benched


# --------------------------------------------------------------------------- caching


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("bench_data"), n_train=16, n_val=4, size=(48, 64), seed=2)


def _finished_run(run_dir: Path, cfg) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    (run_dir / "results.json").write_text("{}")
    return run_dir


def test_comparable_drops_only_result_neutral_keys():
    raw = {"run": {"name": "a", "output_dir": "x", "seed": 1}, "data": {"num_workers": 4, "batch_size": 8},
           "train": {"progress_bar": True, "log_every": 5, "eval_every": 100}}
    assert comparable(raw) == {"run": {"seed": 1}, "data": {"batch_size": 8}, "train": {"eval_every": 100}}
    assert raw["run"]["name"] == "a"  # the input is left alone
    assert differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 0}}) == ["a.c", "a.d"]


def test_run_state_reuses_only_an_identical_config(data_root, tmp_path):
    cfg = validate_config(tiny_config(data_root, tmp_path / "bench", iterations=BENCH_ITERATIONS))
    run_dir = tmp_path / "bench" / "t"
    assert run_state(cfg, run_dir) == (RunState.ABSENT, [])
    _finished_run(run_dir, cfg)
    assert run_state(cfg, run_dir) == (RunState.FINISHED, [])

    # Where it was written, loader processes, logging: same results, still reused.
    neutral = validate_config(tiny_config(data_root, tmp_path / "elsewhere", iterations=BENCH_ITERATIONS,
                                          run__name="other", data__num_workers=3, train__log_every=7,
                                          train__progress_bar=True, train__sample_every=3))
    assert run_state(neutral, run_dir) == (RunState.FINISHED, [])
    # A labeled-only method never reads the unlabeled batch size (a DST-CBC round 0 is a supervised run)...
    round0 = validate_config(tiny_config(data_root, tmp_path / "bench", iterations=BENCH_ITERATIONS,
                                         data__unlabeled_batch_size=2))
    assert run_state(round0, run_dir) == (RunState.FINISHED, [])
    # ... a semi-supervised one does.
    semi_dir = _finished_run(tmp_path / "semi" / "t", validate_config(
        tiny_config(data_root, tmp_path / "semi", method="cutmix", iterations=BENCH_ITERATIONS)))
    semi = validate_config(tiny_config(data_root, tmp_path / "semi", method="cutmix", iterations=BENCH_ITERATIONS,
                                       data__unlabeled_batch_size=2))
    assert run_state(semi, semi_dir) == (RunState.DIFFERENT, ["data.unlabeled_batch_size"])
    changed = validate_config(tiny_config(data_root, tmp_path / "bench", iterations=BENCH_ITERATIONS,
                                          optim__lr=0.5, run__seed=4))
    assert run_state(changed, run_dir) == (RunState.DIFFERENT, ["optim.lr", "run.seed"])

    (run_dir / "results.json").unlink()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    assert run_state(cfg, run_dir)[0] is RunState.INTERRUPTED

    # Never taken for a crashed start: a folder with other files and no config.yaml.
    stranger = tmp_path / "bench" / "stranger"
    stranger.mkdir()
    (stranger / "split").mkdir()
    assert run_state(cfg, stranger)[0] is RunState.ABSENT  # what a trainer writes before config.yaml
    (stranger / "notes.txt").write_text("mine")
    assert run_state(cfg, stranger) == (RunState.DIFFERENT, ["no readable config.yaml"])

    # A user's finished run elsewhere with the same protocol stands in for the bench run.
    user_run = _finished_run(tmp_path / "runs" / "my_run", neutral)
    assert find_finished_run(cfg, [tmp_path / "runs", tmp_path / "missing"]) == user_run
    assert find_finished_run(changed, [tmp_path / "runs"]) is None


def test_a_reused_run_says_which_code_made_it(data_root, tmp_path, capsys):
    cfg = validate_config(tiny_config(data_root, tmp_path / "bench", iterations=BENCH_ITERATIONS))
    run = runner.PlannedRun("supervised", 3, tmp_path / "t.yaml", cfg)
    results = _finished_run(run.run_dir, cfg) / "results.json"

    results.write_text(json.dumps({"code": code_stamp()}))  # made by this code
    assert runner.execute(run, []).status == "reused"
    assert "(identical config, finished)" in capsys.readouterr().out

    other = {**code_stamp(), "source": "0" * 16, "commit": "abc"}
    for made_by in (other, None):  # another source, or a run from before runs were stamped
        results.write_text(json.dumps({"code": made_by} if made_by else {}))
        record = runner.execute(run, [])
        assert record.status == "reused (other code)" and record.code == made_by
        printed = capsys.readouterr().out
        assert f"made by {describe(made_by)}, this is source {code_stamp()['source']}" in printed
    assert describe(other).startswith("source 0000000000000000 (equiseg ") and describe(None) == "unrecorded code"


def test_source_digest_follows_every_package_file(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "notes.txt").write_text("not code")
    first = source_digest(package)
    assert len(first) == 16 and source_digest(package) == first
    (package / "notes.txt").write_text("changed, still not code")
    assert source_digest(package) == first
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest(package) != first
    stamp = code_stamp()
    assert stamp["source"] == source_digest(Path(equiseg.__file__).parent) and stamp["torch"] == torch.__version__
    assert same_code(stamp, dict(stamp)) and not same_code(stamp, {**stamp, "torch": "0"}) and not same_code(None, stamp)
    assert stamp["cpu"] == torch.backends.cpu.get_cpu_capability()
    # Other CPU kernels, or a stamp from before the CPU was recorded: not known to be the same trajectory.
    assert not same_code(stamp, {**stamp, "cpu": "NO_SUCH_ISA"})
    assert not same_code({k: v for k, v in stamp.items() if k != "cpu"}, stamp)


def test_presets_name_existing_configs_with_one_protocol():
    for preset in PRESETS:
        configs = {m: load_config(p) for m, p in preset_configs(preset).items()}
        methods = {"supervised", "cutmix", "fixmatch", "mean_teacher", "ael", "hagseg", "dst_cbc"}
        paper_rows = {"cutmix_paper", "ael_paper", "hagseg_paper"} if preset == "cpu" else set()
        assert set(configs) == methods | paper_rows
        assert all(cfg.method.name == m.removesuffix("_paper") for m, cfg in configs.items())
        data = {m: comparable(c.data.model_dump(), ["unlabeled_batch_size"]) for m, c in configs.items()}
        assert all(d == data["supervised"] for d in data.values()), preset  # one dataset / split / crop / batch
        assert len({c.model.model_dump_json() for c in configs.values()}) == 1
    cpu = {m: load_config(p) for m, p in preset_configs("cpu").items()}
    for method in ("cutmix", "ael", "hagseg"):  # the paper rows differ in the method's settings only
        assert cpu[method].method.supervised_warmup > 0 and cpu[f"{method}_paper"].method.supervised_warmup == 0
        assert comparable(cpu[method].model_dump(), ["run.name", "method"]) == \
            comparable(cpu[f"{method}_paper"].model_dump(), ["run.name", "method"])
    gpu = load_config(preset_configs("gpu", ["ael"])["ael"])
    assert gpu.model.backbone == "resnet101" and gpu.data.image_scale == 1.0
    with pytest.raises(ConfigError, match="no config for nope"):
        preset_configs("cpu", ["ael", "nope"])


# --------------------------------------------------------------------------- end to end


def _write_config(path: Path, data_root: Path, method: str) -> Path:
    raw = tiny_config(data_root, path.parent / "unused", method=method, iterations=BENCH_ITERATIONS,
                      train__eval_every=2, train__log_every=2)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_tiny_bench_trains_tabulates_then_reuses(data_root, tmp_path, capsys, monkeypatch):
    configs = [_write_config(tmp_path / f"{m}.yaml", data_root, m) for m in ("supervised", "cutmix")]
    out = tmp_path / "bench"
    args = ["bench", "--config", str(configs[0]), "--config", str(configs[1]), "--seeds", "0", "--out", str(out),
            "--jobs", "2"]  # both train at once; the table keeps the planned order
    assert cli(args) == 0
    assert capsys.readouterr().out.count("seed 0: training") == 2

    data = json.loads((out / "bench.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["supervised", "cutmix"]
    for method in data["methods"]:
        run = method["runs"][0]
        results = json.loads((Path(run["run_dir"]) / "results.json").read_text())
        assert Path(run["run_dir"]) == out / f"{method['method']}_seed0" and run["status"] == "trained"
        assert results["code"] == code_stamp() and run["code"] == code_stamp()  # the spawned run's stamp
        assert run["miou_last"] == results["last"]["miou"] and run["iou_last"] == results["last"]["iou"]
        assert run["miou_best"] == results["best"]["miou"] and run["best_iteration"] == str(results["best_iteration"])
        assert run["wall_s"] > 0 and run["iterations"] == BENCH_ITERATIONS and run["memory_kind"] == "max_rss"
        assert run["peak_memory_bytes"] > 50 * 1024 ** 2  # a process holding torch and a model
    md = (out / "bench.md").read_text()
    assert "- labeled: 4 labeled (1/4 of 16, fold 0) / 12 unlabeled" in md
    assert "- batch: supervised: 4 labeled; cutmix: 4 labeled + 4 unlabeled" in md
    assert f"- iterations: {BENCH_ITERATIONS}" in md and "- eval split: val split" in md and "- seeds: 0" in md
    assert "resource.getrusage" in md
    first = data["methods"][0]["runs"][0]
    stamp = (out / "supervised_seed0" / "results.json").stat().st_mtime_ns

    # Again, with result-neutral changes and the step profile: nothing is retrained.
    assert cli([*args, "--set", "data.num_workers=1", "train.log_every=1", "--step-profile", "--profile-steps", "1",
                "--profile-rounds", "1", "--profile-warmup", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("seed 0: reusing") == 2 and "seed 0: training" not in printed
    assert (out / "supervised_seed0" / "results.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "bench.json").read_text())
    assert again["methods"][0]["runs"][0]["status"] == "reused"
    assert again["methods"][0]["runs"][0]["wall_s"] == first["wall_s"]  # kept from the bench record
    assert [p["name"] for p in again["step_profile"]] == ["supervised", "cutmix"]
    md = (out / "bench.md").read_text()
    assert "## Step time" in md and "| method | ms/step | x supervised | x cutmix | data ms |" in md

    # --reuse-only: a table from finished runs found elsewhere; a missing run stops it before any training.
    elsewhere = [*args[:-3], str(tmp_path / "table"), "--reuse-from", str(out), "--reuse-only"]
    assert cli(elsewhere) == 0 and capsys.readouterr().out.count("seed 0: reusing") == 2
    assert cli([*elsewhere, "--seeds", "0,1"]) == 2
    err = capsys.readouterr().err
    assert "no finished run with the planned config for supervised seed 1, cutmix seed 1" in err
    assert "nothing was trained" in err and not (tmp_path / "table" / "supervised_seed1").exists()

    # An interrupted run (a checkpoint, no results.json) is resumed, not restarted (in this process,
    # to spare a spawn: the subprocess path ran above).
    def train_here(run, resume, threads=None):
        box = queue.SimpleQueue()
        runner.train_worker(run.cfg.model_dump(mode="json"), str(run.run_dir), str(resume) if resume else None, box)
        return box.get()

    monkeypatch.setattr(runner, "train_in_subprocess", train_here)
    (out / "cutmix_seed0" / "results.json").unlink()
    assert cli(args) == 0
    assert "cutmix seed 0: resuming" in capsys.readouterr().out
    resumed = json.loads((out / "bench.json").read_text())["methods"][1]["runs"][0]
    assert resumed["status"] == "resumed" and resumed["wall_s"] is None  # only the resumed part was timed
    assert resumed["miou_last"] == data["methods"][1]["runs"][0]["miou_last"]

    # A changed protocol never overwrites a finished run.
    assert cli([*args, "--set", "optim.lr=0.5"]) == 2
    assert "holds another run (differs in optim.lr)" in capsys.readouterr().err
