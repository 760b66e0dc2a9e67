"""Which config each method of a bench preset trains with.

``cpu``: the CPU-sized CamVid protocol (half resolution, MobileNetV2 with a 64-channel head, 2400
iterations of 160x224 crops) that the repository's CamVid configs share, each semi-supervised method with the
short-schedule settings chosen on val; the ``*_paper`` rows are the same methods with the papers'
settings, so the effect of those choices stays visible. ``gpu``: full-resolution CamVid with DeepLabv3+ ResNet-101
(``configs/bench/gpu/*.yaml``, one protocol, only the method section differs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Where ``configs/`` lives in a source checkout (also with ``pip install -e .``)."""

SPEED_BASELINES = ("supervised", "cutmix")
"""Methods every other one is compared with in the speed table, when profiled."""

PRESETS: dict[str, dict[str, str]] = {
    "cpu": {
        "supervised": "configs/camvid/supervised_mbv2.yaml",
        "cutmix": "configs/ael/camvid_cutmix_mbv2.yaml",
        "fixmatch": "configs/ael/camvid_fixmatch_mbv2.yaml",
        "mean_teacher": "configs/ael/camvid_mean_teacher_mbv2.yaml",
        "ael": "configs/ael/camvid_ael_mbv2.yaml",
        "hagseg": "configs/hagseg/camvid_mbv2.yaml",
        "dst_cbc": "configs/dst_cbc/camvid_mbv2.yaml",
        "cutmix_paper": "configs/ael/camvid_cutmix_paper_mbv2.yaml",
        "ael_paper": "configs/ael/camvid_ael_paper_mbv2.yaml",
        "hagseg_paper": "configs/hagseg/camvid_hagseg_paper_mbv2.yaml",
    },
    "gpu": {method: f"configs/bench/gpu/{method}.yaml"
            for method in ("supervised", "cutmix", "fixmatch", "mean_teacher", "ael", "hagseg", "dst_cbc")},
}


def resolve_config_path(path: str) -> Path:
    """A config path as given (relative to the working directory), else relative to the checkout."""
    given = Path(path)
    if given.is_file():
        return given
    in_repo = REPO_ROOT / path
    if in_repo.is_file():
        return in_repo
    raise ConfigError(f"config file not found: {path} (looked in {Path.cwd()} and {REPO_ROOT})")


def preset_configs(preset: str, methods: Optional[list[str]] = None) -> dict[str, Path]:
    """``{method: config path}`` of a preset, restricted to ``methods`` (in the order given)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown bench preset '{preset}' (available: {', '.join(PRESETS)})")
    table = PRESETS[preset]
    chosen = methods or list(table)
    unknown = [m for m in chosen if m not in table]
    if unknown:
        raise ConfigError(f"preset '{preset}' has no config for {', '.join(unknown)} "
                          f"(available: {', '.join(table)})")
    return {m: resolve_config_path(table[m]) for m in chosen}
