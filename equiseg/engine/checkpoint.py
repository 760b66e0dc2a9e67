"""Atomic checkpoint files and RNG-state capture for exact resumption."""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import TrainingError
from ..run_layout import write_atomic


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a killed run never
    leaves a half-written checkpoint under the real name."""
    path = Path(path)
    try:
        write_atomic(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as exc:
        raise _write_error(exc, path) from None


def _write_error(exc: BaseException, path: Path) -> TrainingError:
    """A one-line error for a checkpoint write that failed, saying when the disk is full."""
    import errno
    import shutil

    kept = f"; {path} is intact" if path.exists() else ""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    # torch.save reports a full disk as RuntimeError "[enforce fail at inline_container.cc] unexpected pos".
    full = getattr(exc, "errno", None) == errno.ENOSPC or "unexpected pos" in str(exc) or free == 0
    if full:
        left = f" ({free} bytes free)" if free is not None else ""
        return TrainingError(f"cannot write checkpoint {path}: the disk holding {path.parent} is full{left}{kept} "
                             "(the write is atomic: no half-written file is left); free space and resume with "
                             "--resume auto")
    return TrainingError(f"cannot write checkpoint {path}: {str(exc).splitlines()[0]}{kept}")


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without moving the training's random streams: an evaluation draws from the
    global RNG (each DataLoader iterator takes its base seed there), and the same RNG drives
    dropout, so without this how often a run is evaluated would change its trajectory."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
