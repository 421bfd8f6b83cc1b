"""`updp run`: the whole UPDP chain (baseline → search → prune → export → eval → bench → report)
in one run directory, with content-hashed stages that skip when their inputs are unchanged.

    from updp.pipeline.config import RunConfig
    from updp.pipeline.run import run_pipeline
    outcome = run_pipeline(RunConfig.load("run.toml"), "runs/atto")

`updp.pipeline.config` is light (the CLI reads it at start-up); `run`, `stages` and `report`
import the workflows, so import them from their modules.
"""
