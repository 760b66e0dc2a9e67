"""Training methods. Each method lives in one file and registers itself by name.

Registering puts a method in :data:`equiseg.registry.METHODS`, through which the config finds
its options and the engine its step; neither imports a particular method.
"""
from __future__ import annotations

from ..registry import METHODS
from .base import Method, MethodContext, StepOutput, register_method


def available_methods() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


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
