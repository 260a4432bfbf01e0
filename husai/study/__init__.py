"""The study: its config (grid of SAE runs over model seeds, hooks and architectures), the runner
and its executors (local, process pool, Ray), the results table, and the report with its figures.

May import: husai.analysis, husai.sae, husai.model and the plumbing.
"""

from husai._exports import lazy

_EXPORTS = {
    "StudyConfig": "husai.study.config",
    "load_study": "husai.study.config",
    "run_study": "husai.study.runner",
    "build_table": "husai.study.results",
    "write_report": "husai.study.report",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
