"""Config files: ``extends:`` inheritance, and every shipped config resolving as it did before the
tree was rewritten to inherit (tests/data/resolved_configs.json is that snapshot)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from equiseg.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).resolve().parent / "data" / "resolved_configs.json"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """\
data:
  dataset: synthetic
  root: data
  crop_size: [64, 64]
  batch_size: 4
method:
  name: ael
  bank_momentum: 0.9
"""


def test_child_states_only_what_differs(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\ndata:\n  batch_size: 2\n")
    cfg = load_config(child)
    assert cfg.data.batch_size == 2 and cfg.data.crop_size == (64, 64) and cfg.data.root == "data"
    assert cfg.method.name == "ael" and cfg.method.bank_momentum == 0.9


def test_bases_merge_in_order_and_chain(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    write(tmp_path / "mid.yaml", "extends: base.yaml\noptim:\n  lr: 0.5\n")
    write(tmp_path / "other.yaml", "optim:\n  lr: 0.25\n  iterations: 7\n")
    child = write(tmp_path / "child.yaml", "extends: [mid.yaml, other.yaml]\n")
    cfg = load_config(child, ["optim.iterations=9"])
    assert cfg.optim.lr == 0.25 and cfg.optim.iterations == 9 and cfg.data.batch_size == 4


def test_another_method_replaces_the_method_section(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nmethod:\n  name: cutmix\n")
    assert load_config(child).method.name == "cutmix"  # ael's bank_momentum is not carried over
    same = write(tmp_path / "same.yaml", "extends: base.yaml\nmethod:\n  gamma: 3.0\n")
    method = load_config(same).method
    assert method.gamma == 3.0 and method.bank_momentum == 0.9


def test_errors_name_the_key_and_the_file_that_set_it(tmp_path):
    write(tmp_path / "base.yaml", BASE.replace("bank_momentum: 0.9", "bank_momentum: 2.0"))
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ndata:\n  crop_sise: [1, 1]\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    lines = str(err.value).splitlines()
    assert any("'data.crop_sise'" in line and "crop_size" in line and "child.yaml" in line for line in lines)
    assert any("'method.bank_momentum'" in line and "base.yaml" in line for line in lines)
    with pytest.raises(ConfigError, match=r"'optim.lr'.*override optim.lr=-1"):
        load_config(write(tmp_path / "ok.yaml", "extends: base.yaml\nmethod:\n  bank_momentum: 0.5\n"),
                    ["optim.lr=-1"])


@pytest.mark.parametrize("text, message", [
    ("extends: missing.yaml\n", r"missing.yaml \(extended by"),
    ("extends: loop.yaml\n", "extend each other in a loop"),
    ("extends: 3\n", "'extends' must be a file name"),
])
def test_bad_extends(tmp_path, text, message):
    path = write(tmp_path / "loop.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_every_shipped_config_resolves_as_before():
    snapshot = json.loads(SNAPSHOT.read_text())
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "configs").rglob("*.yaml"))
    assert files == sorted(snapshot)
    for name in files:
        assert load_config(REPO_ROOT / name).model_dump(mode="json") == snapshot[name], name
