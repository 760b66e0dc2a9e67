"""``equiseg bench``: several methods on one protocol, one table (Markdown and JSON)."""
from .presets import PRESETS
from .runner import BenchOptions, failed, run_bench

__all__ = ["PRESETS", "BenchOptions", "failed", "run_bench"]
