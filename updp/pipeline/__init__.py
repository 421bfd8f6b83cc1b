"""`updp run`: the whole UPDP chain (baseline → search → prune → export → eval → bench → report)
in one run directory, with content-hashed stages that skip when their inputs are unchanged.

    from updp.pipeline import RunConfig, run_pipeline
    outcome = run_pipeline(RunConfig.load("run.toml"), "runs/atto")
"""

from updp.pipeline.config import RunConfig, demo_config
from updp.pipeline.run import RunOutcome, demo_pipeline, format_headline, run_pipeline
from updp.pipeline.stages import STAGE_NAMES

__all__ = ["RunConfig", "RunOutcome", "STAGE_NAMES", "demo_config", "demo_pipeline", "format_headline",
           "run_pipeline"]
