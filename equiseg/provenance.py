"""Which code made a run: a digest of the equiseg package's source files, the equiseg and torch
versions, and the git commit of a source checkout (for people; the digest decides). Written
into every results.json, so a run folder says what produced it and ``equiseg bench`` can tell
when it reuses a run made by other code or on other CPU kernels (same config, but any change on the
training path, or in the order floats are summed, moves a run as another seed would). Imports nothing of equiseg."""
from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

PACKAGE_DIR = Path(__file__).resolve().parent
GIT_TIMEOUT_S = 5
DIGEST_CHARS = 16


def source_digest(package_dir: Path) -> str:
    """SHA-256 over the relative paths and bytes of every ``.py`` file under ``package_dir``."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def _git_commit(checkout: Path) -> Optional[str]:
    if not (checkout / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


@functools.lru_cache(maxsize=1)
def code_stamp() -> dict[str, Any]:
    """``{"source", "equiseg", "torch", "cpu", "commit"}`` of the running code (commit: None outside a
    git checkout; a checkout with uncommitted changes has the commit but another source digest).
    ``cpu``: the instruction set torch's CPU kernels dispatch to (e.g. AVX2, AVX512): the same code
    and seed on another one sums floats in another order, and the run drifts like another seed."""
    import torch

    try:
        version: Optional[str] = metadata.version("equiseg")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = None
    return {"source": source_digest(PACKAGE_DIR), "equiseg": version, "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(), "commit": _git_commit(PACKAGE_DIR.parent)}


def same_cpu(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]]) -> bool:
    """Both stamps name the same CPU kernels (unknown for stamps made before the CPU was recorded)."""
    return bool(a and b and a.get("cpu") and a.get("cpu") == b.get("cpu"))


def same_code(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]]) -> bool:
    """The same package source, torch version and CPU kernels. A run without a stamp (made before
    stamps existed), or without the CPU in it, is not known to match."""
    return bool(same_cpu(a, b) and a.get("source") and a.get("source") == b.get("source")
                and a.get("torch") == b.get("torch"))


def describe(stamp: Optional[dict[str, Any]]) -> str:
    if not stamp:
        return "unrecorded code"
    where = f", commit {stamp['commit'][:10]}" if stamp.get("commit") else ""
    cpu = f", CPU kernels {stamp['cpu']}" if stamp.get("cpu") else ""
    return f"source {stamp.get('source')} (equiseg {stamp.get('equiseg')}, torch {stamp.get('torch')}{cpu}{where})"
