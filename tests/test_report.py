"""``equiseg report``: one self-contained HTML page per run folder, checked against the run's files
(and, when Debian's chromium is installed, as a browser renders it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from equiseg.cli.main import main as cli
from equiseg.config import validate_config
from equiseg.data.synthetic import make_synthetic_dataset
from equiseg.engine.run import train_run
from equiseg.report import RunFolder, RunFolderError, build_html, load_run, write_report
from equiseg.report.html import hardness_section
from test_dst_cbc import TinySegModel
from test_training import tiny_config

AEL_ITERATIONS, AEL_EVAL_EVERY = 12, 6
CHROMIUM_TIMEOUT_S = 120
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"section '{anchor}' missing"
    return match.group(1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("report_data"), n_train=32, n_val=6, size=(48, 64), seed=1)


@pytest.fixture(scope="module")
def ael_run(data_root, tmp_path_factory) -> Path:
    """A finished tiny AEL run: two evaluations, per-class bank logs, best.pt."""
    out = tmp_path_factory.mktemp("report_runs")
    raw = tiny_config(data_root, out, method="ael", iterations=AEL_ITERATIONS, train__eval_every=AEL_EVAL_EVERY,
                      train__log_every=2, method__bank_momentum=0.9)
    train_run(validate_config(raw), out / "ael")
    return out / "ael"


def test_report_of_an_ael_run_shows_its_files(ael_run, tmp_path):
    html_path = write_report(ael_run, tmp_path / "report.html", num_images=2)
    page = html_path.read_text()
    results = json.loads((ael_run / "results.json").read_text())
    last, best = results["last"], results["best"]
    names = last["class_names"]

    for anchor in ("summary", "curves", "per-class", "bank", "timing", "samples"):
        section(page, anchor)
    assert '<section id="hardness">' not in page and '<section id="rounds">' not in page  # AEL logs neither

    # Self-contained: nothing fetched, no script.
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page and "<link" not in page
    assert "@import" not in page and "url(" not in page

    summary = section(page, "summary")
    assert "ael" in summary and "synthetic" in summary and "8 labeled (1/4 of 32, fold 0) / 24 unlabeled" in summary
    assert "32x48" in summary and f"iteration {AEL_ITERATIONS}" in summary
    assert f"mIoU {pct(last['miou'])} % · tail mIoU {pct(last['tail_miou'])} %" in summary
    assert f"mIoU {pct(best['miou'])} %" in summary and f"iteration {results['best_iteration']}" in summary

    per_class = section(page, "per-class")
    tails = set(last["tail_ids"])
    for c, name in enumerate(names):
        row = (f'<td>{name}</td><td>{"*" if c in tails else ""}</td>'
               f"<td class=num>{pct(last['iou'][c])}</td><td class=num>{pct(best['iou'][c])}</td>")
        assert row in per_class, name
        assert (f"{name} *" in per_class) == (c in tails)
    assert f"<td>mIoU</td><td></td><td class=num>{pct(last['miou'])}</td>" in per_class
    assert f"<td class=num>{pct(last['tail_miou'])}</td>" in per_class
    # Where each class's pixels go: recall and precision from the last confusion matrix, by hand.
    matrix = np.asarray(last["confusion"], dtype=float)
    assert f"Where each class's pixels go (iteration {AEL_ITERATIONS})" in per_class
    for c, name in enumerate(names):
        truth, predicted = matrix[c].sum(), matrix[:, c].sum()
        recall = pct(matrix[c, c] / truth if truth else None)
        precision = pct(matrix[c, c] / predicted if predicted else None)
        assert f"<td>{name}</td><td>{'*' if c in tails else ''}</td><td class=num>{recall}</td>" \
               f"<td class=num>{precision}</td>" in per_class, name
    worst = int(np.argmax(matrix.sum(1) - np.diag(matrix)))                    # the class with most misses
    missed = matrix[worst].copy()
    missed[worst] = -1
    assert f"{names[int(np.argmax(missed))]} {pct(missed.max() / matrix[worst].sum())} %" in per_class
    # ... and the reported model's per-class val IoU at every evaluation, the last one at the right.
    assert f"Val IoU per class over training ({last['model']})" in per_class
    for c, name in enumerate(names):
        if last["iou"][c] is not None:
            assert f"<title>{name}, iteration {AEL_ITERATIONS}: " in per_class, name

    # The bank heat map: every class, its last logged value at the right.
    records = [json.loads(line) for line in (ael_run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "bank/sky" in r][-1]
    bank = section(page, "bank")
    for name in names:
        assert f"<title>{name}, iteration" in bank
        assert f">{final[f'bank/{name}']:.3f}</text>" in bank

    # The pseudo-label audit beside the bank (the synthetic unlabeled images have masks): per-class
    # heat maps with each class's last IoU at the right.
    from equiseg.report.svg import percent
    audited = [r["pseudo_labels"] for r in records if "pseudo_labels" in r]
    assert audited
    quality = section(page, "pseudo-labels")
    assert quality.count("<svg") == 5                       # IoU, precision, recall, weight share, summary
    for name in names:
        assert f"<title>{name}, iteration" in quality
    last_iou = next(v for v in (audited[-1]["iou"][n] for n in names) if v is not None)
    assert f">{percent(last_iou)}</text>" in quality
    assert page.index('<section id="bank">') < page.index('<section id="pseudo-labels">')

    curves = section(page, "curves")
    assert curves.count("<svg") == 3 and "teacher mIoU" in curves  # loss, LR, val mIoU (AEL reports the teacher)
    samples = section(page, "samples")
    assert samples.count("data:image/png;base64,") == 1 and all(name in samples for name in names)


def test_confusions_script_reads_pairs_from_results(ael_run, tmp_path, capsys):
    """benchmarks/confusions.py: per run, the share of A's true pixels predicted as B, from results.json."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "confusions.py"
    spec = importlib.util.spec_from_file_location("confusions", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    last = json.loads((ael_run / "results.json").read_text())["last"]
    names, matrix = last["class_names"], np.asarray(last["confusion"], dtype=float)
    a, b = names[0], names[3]
    assert script.main([str(ael_run), str(tmp_path), "--classes", f"{a},{b}"]) == 0   # tmp_path: no results, skipped
    captured = capsys.readouterr()
    assert "no results.json, skipped" in captured.err
    row = captured.out.splitlines()[1].split()
    assert row[0] == ael_run.name and len(row) == 1 + 3 * 2 + 2
    i, j = names.index(a), names.index(b)
    assert float(row[-2]) == pytest.approx(100 * matrix[i, j] / matrix[i].sum(), abs=0.051)
    assert float(row[-1]) == pytest.approx(100 * matrix[j, i] / matrix[j].sum(), abs=0.051)
    assert float(row[2]) == pytest.approx(100 * matrix[i, i] / matrix[i].sum(), abs=0.051)   # a's recall
    with pytest.raises(SystemExit):
        script.main([str(ael_run), "--classes", "nosuchclass"])


def test_report_cli_defaults_and_errors(ael_run, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(ael_run, run_dir)
    assert cli(["report", str(run_dir), "--no-images"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "data:image/png" not in page and '<section id="samples">' not in page

    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hello")
    assert cli(["report", str(not_a_run)]) == 2
    err = capsys.readouterr().err
    assert f"{not_a_run} is not a run folder" in err and "notes.txt" in err
    with pytest.raises(RunFolderError, match="no such directory"):
        load_run(tmp_path / "missing")


def test_report_of_a_run_in_progress(ael_run, tmp_path):
    """No results.json yet (still training, or killed): curves, no per-class section, a status line."""
    run_dir = tmp_path / "running"
    shutil.copytree(ael_run, run_dir, ignore=shutil.ignore_patterns("results.json", "checkpoints"))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 99, "lo')  # a line cut short by a kill
    page = write_report(run_dir, images=True).read_text()
    assert "in progress or stopped: no results.json" in page and f"of {AEL_ITERATIONS} iterations" in page
    assert '<section id="per-class">' not in page
    assert "no checkpoints/best.pt in the run folder (yet)" in section(page, "samples")


def test_an_archived_run_reports_and_is_reused_like_the_original(ael_run, tmp_path):
    """benchmarks/archive_runs.py keeps a run without checkpoints or TensorBoard, metrics.jsonl
    gzip-compressed: the report draws the same curves from it and a bench still finds it finished."""
    import importlib.util
    from equiseg.bench.cache import find_finished_run
    from equiseg.config import load_config
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "archive_runs.py"
    spec = importlib.util.spec_from_file_location("archive_runs", path)
    archive_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archive_runs)
    archive_runs.main([str(tmp_path / "kept"), str(ael_run), "--prefix", "bench_"])
    kept = tmp_path / "kept" / "bench_ael"
    assert (kept / "metrics.jsonl.gz").is_file() and not (kept / "metrics.jsonl").exists()
    assert not (kept / "checkpoints").exists() and not (kept / "tb").exists()
    assert (kept / "split" / "split.json").is_file() and (kept / "results.json").is_file()

    original, archived = load_run(ael_run), load_run(kept)
    assert archived.train == original.train and archived.evals == original.evals and archived.evals
    assert find_finished_run(load_config(ael_run / "config.yaml"), [tmp_path / "kept"]) == kept
    with pytest.raises(SystemExit, match="not a finished run"):
        archive_runs.main([str(tmp_path / "again"), str(tmp_path / "kept")])


def test_hardness_section_plots_mean_and_spread():
    run = RunFolder(path=Path("hagseg_run"), config={"method": {"name": "hagseg"}},
                    train=[{"iteration": 10 * i, "loss": 1.0, "hardness_mean": 0.2 + 0.1 * i, "hardness_std": 0.05}
                           for i in range(1, 4)])
    html = hardness_section(run)
    assert html.startswith('<section id="hardness">') and "<polygon" in html  # the ± std band
    assert "hardness mean: 0.5 at 30" in html  # the line's tooltip: last value
    assert '<section id="hardness">' in build_html(run)


def test_report_of_a_dst_cbc_run_shows_rounds(data_root, tmp_path, monkeypatch):
    """A real DST-CBC run (a tiny network in place of MobileNetV2): coverage and pseudo-label quality
    per round as round.json records them; curves of all rounds on one axis."""
    import equiseg.engine.trainer
    import equiseg.methods.dst_cbc
    import equiseg.models

    def build(model_cfg, num_classes):
        return TinySegModel(num_classes)

    for module in (equiseg.engine.trainer, equiseg.models):  # checkpoints become models through equiseg.models
        monkeypatch.setattr(module, "build_model", build)
    raw = tiny_config(data_root, tmp_path, method="dst_cbc", iterations=2, train__eval_every=100)
    raw["method"].update(alphas=[0.5, 1.0], threshold_sample_ratio=0.25, supervised_overrides={"optim.iterations": 3})
    run_dir = tmp_path / "dst"
    train_run(validate_config(raw), run_dir)

    page = write_report(run_dir, num_images=1).read_text()
    rounds = section(page, "rounds")
    for k in (1, 2):
        record = json.loads((run_dir / f"round_{k}" / "round.json").read_text())
        pseudo = record["pseudo_labels"]
        assert (f"<td>{k}</td><td class=num>{100 * record['alpha']:.0f}</td><td class=num>{pct(pseudo['coverage'])}</td>"
                f"<td class=num>{pct(pseudo['miou'])}</td>") in rounds
    assert "Coverage per class" in rounds and "Pseudo-label IoU per class" in rounds
    curves = section(page, "curves")
    assert "round 1" in curves and "round 2" in curves  # round boundaries marked
    run = load_run(run_dir)
    assert [r.start_iteration for r in run.rounds] == [0, 3, 5]  # round 0 trains 3, later rounds 2
    assert max(r["iteration"] for r in run.train) == 7
    selected = json.loads((run_dir / "results.json").read_text())["selected"]
    assert f"round {selected['round']}, iteration {selected['iteration']}" in section(page, "summary")
    assert section(page, "samples").count("data:image/png;base64,") == 1


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(ael_run, tmp_path):
    page = write_report(ael_run, tmp_path / "report.html", num_images=2)
    results = json.loads((ael_run / "results.json").read_text())

    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "Per-class IoU" in text and "AEL confidence bank" in text
    assert all(name in text for name in results["last"]["class_names"])
    assert f"mIoU {pct(results['last']['miou'])} %" in text
    assert text.count("<svg") >= 5  # loss, LR, mIoU, per-class bars, bank heat map and summary

    shot = tmp_path / "page.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1000,2400", page.as_uri(), profile=tmp_path / "profile")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1000)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # charts and pictures drawn, not a blank page
