"""Run reports: ``equiseg report RUN_DIR`` writes one self-contained HTML page about a run."""
from .html import build_html, write_report
from .run_folder import RunFolder, RunFolderError, load_run

__all__ = ["RunFolder", "RunFolderError", "build_html", "load_run", "write_report"]
