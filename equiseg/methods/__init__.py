"""Training methods. Each method lives in one file and registers itself by name.

``method_config_class(name)`` and ``build_method(...)`` are how configs and the engine reach a
method; the engine never imports a particular method.
"""
from __future__ import annotations

import difflib
import importlib

from .base import METHOD_REGISTRY, Method, MethodContext, StepOutput, register_method

# Modules that define methods; importing them fills the registry.
_METHOD_MODULES = ("supervised", "mean_teacher", "cutmix", "fixmatch", "ael", "dst_cbc", "hagseg")


def _load_all() -> None:
    for module in _METHOD_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def available_methods() -> list[str]:
    _load_all()
    return sorted(METHOD_REGISTRY)


def method_class(name: str) -> type[Method]:
    _load_all()
    if name not in METHOD_REGISTRY:
        close = difflib.get_close_matches(name, list(METHOD_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown method '{name}'{hint} (available: {', '.join(sorted(METHOD_REGISTRY))})")
    return METHOD_REGISTRY[name]


def method_config_class(name: str):
    return method_class(name).config_class


__all__ = [
    "Method",
    "MethodContext",
    "StepOutput",
    "register_method",
    "available_methods",
    "method_class",
    "method_config_class",
]
