"""Studies: a grid of training variants x seeds, resumable, with mean +- std and paired differences per variant."""

from .config import RunSpec, StudyConfig, load_study_config, plan_runs
from .runner import StudyResult, run_study

__all__ = ["RunSpec", "StudyConfig", "StudyResult", "load_study_config", "plan_runs", "run_study"]
