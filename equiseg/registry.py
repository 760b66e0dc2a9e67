"""Plug-ins found by name.

This module imports nothing of equiseg, so any layer can look a plug-in up without importing the
layer that defines it: the config finds a method's options and the engine its training step, and
neither imports ``equiseg.methods``. A registry knows the modules that define its entries and
imports them (by name) the first time it is asked.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Iterable


class Registry:
    def __init__(self, kind: str, plugin_modules: Iterable[str]) -> None:
        self.kind = kind
        self._plugin_modules = tuple(plugin_modules)
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, entry: Any) -> Any:
        known = self._entries.get(name)
        if known is not None and known is not entry:
            raise ValueError(f"two {self.kind}s are registered as '{name}': {known!r} and {entry!r}")
        self._entries[name] = entry
        return entry

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._plugin_modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown {self.kind} '{name}'{hint} (available: {', '.join(self.names())})")
        return self._entries[name]


METHODS = Registry("method", [f"equiseg.methods.{module}" for module in
                              ("supervised", "mean_teacher", "cutmix", "fixmatch", "ael", "dst_cbc", "hagseg")])
"""Training methods by ``method.name``: each a :class:`equiseg.methods.base.Method` subclass."""

DATASETS = Registry("dataset", ["equiseg.data.definitions"])
"""Dataset definitions by ``data.dataset``: :class:`equiseg.data.definitions.base.DatasetDefinition`
subclasses, one file each in ``equiseg/data/definitions/``."""
