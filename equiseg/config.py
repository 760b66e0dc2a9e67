"""Typed, validated run configuration.

A config is a YAML file validated into these pydantic models. Every section forbids unknown
keys, so a misspelt key is an error naming it and the closest valid key, never a silent default.
Method-specific options live under ``method:``; each method registers its own config class
(see :mod:`equiseg.methods`), so ``method.name`` decides which keys are valid there.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from .errors import ConfigError
from .registry import METHODS


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DataConfig(Section):
    dataset: str = "camvid"
    """Name of a dataset definition (a file of equiseg/data/definitions/, e.g. ``camvid``, ``folder``, ``synthetic``)."""
    root: str = "../shared/data/camvid"
    classes: Optional[list[str]] = None
    """Class names, required by the ``folder`` dataset only."""
    train_list: Optional[str] = None
    """Pool of training pairs; defaults to the dataset definition's train split."""
    val_list: Optional[str] = None
    labeled_list: Optional[str] = None
    unlabeled_list: Optional[str] = None
    labeled: Optional[str] = None
    """Labeled share of ``train_list`` when no explicit lists are given: ``1/8`` or a count like ``46``."""
    fold: int = 0
    image_scale: float = Field(1.0, gt=0, le=1.0)
    """Fixed downscale applied at decode time to every image and mask (train and eval)."""
    crop_size: tuple[int, int] = (321, 321)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    batch_size: int = Field(8, ge=1)
    """Global labeled batch, split across ranks."""
    unlabeled_batch_size: Optional[int] = None
    """Global unlabeled batch; defaults to ``batch_size``."""
    num_workers: int = Field(2, ge=0)
    check_files: bool = True
    """Check every listed file of the train pool and the val list before training (existence,
    readability, truncation, image/mask sizes, mask values; equiseg.data.check), with a cache so a
    second run is instant. False skips it (a bad file then fails when it is first read)."""

    @field_validator("labeled", mode="before")
    @classmethod
    def _labeled_count(cls, value: Any) -> Any:
        # ``data.labeled=46`` on the command line (or in YAML) is a count, as "46" is.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"data.scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if min(self.crop_size) < 1:
            raise ValueError(f"data.crop_size must be positive, got {self.crop_size}")
        if self.labeled is not None and self.labeled_list is not None:
            raise ValueError("give either data.labeled (a fraction/count) or data.labeled_list, not both")
        return self


class ModelConfig(Section):
    arch: Literal["deeplabv3plus", "deeplabv2"] = "deeplabv3plus"
    backbone: Literal["mobilenet_v2", "resnet50", "resnet101"] = "mobilenet_v2"
    output_stride: Literal[8, 16] = 16
    deep_stem: bool = False
    multi_grid: bool = False
    aux_head: bool = False
    pretrained: Optional[str] = None
    """Path to an ImageNet checkpoint for the backbone (torchvision or deep-stem layout)."""
    sync_bn: bool = True
    """Convert BatchNorm to SyncBatchNorm under multi-GPU DDP (CUDA only)."""
    dropout: float = Field(0.1, ge=0, lt=1)
    head_channels: int = Field(256, ge=8)
    """Width of DeepLabv3+'s ASPP and decoder convs: 256 in the papers; the demo uses 64 to fit minutes of CPU."""


class OptimConfig(Section):
    iterations: int = Field(1000, ge=1)
    lr: float = Field(0.01, gt=0)
    head_lr_mult: float = Field(10.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    warmup_iterations: int = Field(0, ge=0)
    nesterov: bool = False


class TrainConfig(Section):
    amp: Literal["off", "bf16", "fp16"] = "off"
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    eval_every: int = Field(1000, ge=1)
    """Evaluate on the val list every N iterations (and always at the end)."""
    sample_every: int = Field(500, ge=1)
    """Write sample predictions to TensorBoard every N iterations."""
    progress_bar: bool = True
    """A tqdm bar while training, shown only when stderr is a terminal (log lines print above it)."""
    profile: bool = False
    """Synchronize CUDA at timing-section boundaries so the per-step breakdown is exact (slower)."""
    grad_clip: Optional[float] = Field(None, gt=0)
    pseudo_label_audit: Literal["auto", "on", "off"] = "auto"
    """Score the unlabeled loss's pseudo-labels against the unlabeled images' masks, per class, at
    every log step (metrics.jsonl ``pseudo_labels``, TensorBoard, ``equiseg report``). The masks are
    never given to the method. 'auto': when every unlabeled image has a mask path; 'on': an error
    otherwise; 'off': never."""


class EvalConfig(Section):
    mode: Literal["whole", "slide", "center"] = "whole"
    crop_size: Optional[tuple[int, int]] = None
    """Window (slide) or crop (center) size; defaults to data.crop_size."""
    stride: Optional[tuple[int, int]] = None
    """Sliding-window stride; defaults to 2/3 of the window, as AEL/UniMatch."""
    flip: bool = False
    batch_size: int = Field(1, ge=1)
    max_images: Optional[int] = Field(None, ge=1)
    """Evaluate only the first N images (quick checks); None means all."""


class MethodConfig(Section):
    """Base of every method's options; subclasses add their own keys."""

    name: str

    def check_against(self, cfg: "Config") -> None:
        """Checks of the method's options against the rest of the config (raise ValueError)."""


class Config(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    # SerializeAsAny: dump the method's own config class, not just the base's ``name``.
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: _method_config({"name": "supervised"}))

    @field_validator("method", mode="before")
    @classmethod
    def _validate_method(cls, value: Any) -> MethodConfig:
        if isinstance(value, MethodConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError("method must be a mapping with at least a 'name' key")
        return _method_config(value)

    @model_validator(mode="after")
    def _check_method(self) -> "Config":
        self.method.check_against(self)
        return self


def _method_config(value: dict) -> MethodConfig:
    name = value.get("name")
    if name is None:
        raise ValueError("method.name is required")
    cls = METHODS.get(name).config_class
    try:
        return cls.model_validate(value)
    except ValidationError as err:
        raise ValueError(_format_validation_error(err, cls, prefix="method.")) from None


# --------------------------------------------------------------------------- loading


def _valid_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the section that ``loc`` (a pydantic error location) points into."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
        if isinstance(cls, type) and issubclass(cls, MethodConfig):
            return []
    return list(getattr(cls, "model_fields", {}).keys())


def _format_validation_error(err: ValidationError, model_cls: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = prefix + ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            valid = _valid_keys(model_cls, loc)
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
            lines.append(f"unknown config key '{dotted}'{hint}")
        elif not dotted:  # a check across sections names its keys itself; the input is the whole config
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"invalid value for '{dotted}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_config(raw: dict) -> Config:
    """Validate a plain mapping into a :class:`Config`; errors name the key at fault."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        # Errors inside ``method`` are raised by the method's own class; reformat those too.
        raise ConfigError(_format_method_aware(err, raw)) from None


def _format_method_aware(err: ValidationError, raw: dict) -> str:
    lines = []
    for e in err.errors():
        if e["loc"] and e["loc"][0] == "method" and isinstance(e.get("ctx", {}).get("error"), ValueError):
            inner = e["ctx"]["error"]
            lines.append(str(inner))
            continue
        lines.append(_format_validation_error(ValidationError.from_exception_data(err.title, [e]), Config))
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML, so ``1e-3``, ``[1,2]`` and ``true`` work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, value = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key part")
    return key.split("."), yaml.safe_load(value) if value != "" else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


EXTENDS_KEY = "extends"
"""Top-level key naming the config file(s) a config builds on, relative to the file itself."""


def _merge(base: dict, child: dict, source: str, provenance: dict[str, str], prefix: str = "") -> dict:
    """``child`` laid over ``base`` key by key (sections merge, values replace); records which file
    set each key. A ``method`` section naming another method replaces the base's: the options of
    one method mean nothing to another."""
    merged = dict(base)
    for key, value in child.items():
        dotted = f"{prefix}{key}"
        replace = (dotted == "method" and isinstance(value, dict) and isinstance(base.get(key), dict)
                   and "name" in value and value["name"] != base[key].get("name"))
        if isinstance(value, dict) and isinstance(base.get(key), dict) and not replace:
            merged[key] = _merge(base[key], value, source, provenance, dotted + ".")
        else:
            if replace:
                for stale in [k for k in provenance if k.startswith(dotted + ".")]:
                    del provenance[stale]
            merged[key] = copy.deepcopy(value)
            _record(value, source, provenance, dotted)
    return merged


def _record(value: Any, source: str, provenance: dict[str, str], dotted: str) -> None:
    provenance[dotted] = source
    if isinstance(value, dict):
        for key, child in value.items():
            _record(child, source, provenance, f"{dotted}.{key}")


def read_config_file(path: Union[str, Path], provenance: Optional[dict[str, str]] = None,
                     _chain: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of a YAML config with its ``extends:`` bases merged in (bases first, in the
    order listed, then the file's own keys). ``provenance`` receives, for every dotted key, the
    file that set it."""
    p = Path(path)
    if not p.is_file():
        via = f" (extended by {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {p}{via}")
    if p.resolve() in [c.resolve() for c in _chain]:
        loop = " -> ".join(str(c) for c in (*_chain, p))
        raise ConfigError(f"config files extend each other in a loop: {loop}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    provenance = {} if provenance is None else provenance
    bases = raw.pop(EXTENDS_KEY, None)
    merged: dict = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not (isinstance(bases, list) and bases and all(isinstance(b, str) for b in bases)):
            raise ConfigError(f"config file {p}: '{EXTENDS_KEY}' must be a file name or a list of them, got {bases!r}")
        for base in bases:
            base_provenance: dict[str, str] = {}
            base_raw = read_config_file(p.parent / base, base_provenance, (*_chain, p))
            merged = _merge(merged, base_raw, "", provenance)
            provenance.update(base_provenance)
    return _merge(merged, raw, str(p), provenance)


def _name_sources(message: str, provenance: dict[str, str]) -> str:
    """Append to each error line the file (or override) that set the key it names."""
    lines = []
    for line in message.splitlines():
        match = re.search(r"'((?:[A-Za-z_][\w]*\.)+[\w]+)'", line)
        key = match.group(1) if match else None
        while key and key not in provenance and "." in key:
            key = key.rsplit(".", 1)[0]
        lines.append(f"{line} (in {provenance[key]})" if key in provenance else line)
    return "\n".join(lines)


def load_config(path: Union[str, Path, None], overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config (with its ``extends:`` bases; defaults when ``path`` is None), apply
    ``key=value`` overrides and validate; an error names the key and the file that set it."""
    provenance: dict[str, str] = {}
    raw = read_config_file(path, provenance) if path is not None else {}
    for text in overrides or []:
        provenance[".".join(parse_override(text)[0])] = f"override {text}"
    raw = apply_overrides(raw, overrides or [])
    try:
        return validate_config(raw)
    except ConfigError as err:
        raise ConfigError(_name_sources(str(err), provenance)) from None


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
