"""The Python API: one keyword function per workflow, so that a script reads like the README.

    import updp
    updp.train("convnext_atto", data="mnist5k", input_size=32, epochs=10, out="base.pt")
    plan = updp.search("base.pt", data="mnist5k", target_blocks=4, out="plan.json")
    updp.prune("base.pt", plan, data="mnist5k", epochs=6, out="pruned.pt")
    updp.export("pruned.pt", "pruned.onnx")

Each function builds the workflow's typed config from its keywords (the keywords *are* the
config's fields, with its defaults: `help(updp.search)` lists them) and calls the workflow that
the CLI command and the `updp run` stage call. Training progress lines go to stderr, as on the
command line. The configs and workflows themselves are in `updp.workflows`.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from updp.pipeline.config import RunConfig
from updp.workflows.config import (
    BenchConfig,
    BlocksConfig,
    EvalConfig,
    ExportConfig,
    OptimizeConfig,
    PruneConfig,
    SearchConfig,
    TrainConfig,
    ordered_fields,
)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _keywords_of(config: type, *positional: str) -> Callable[[Callable], Callable]:
    """Give a facade function the signature of its config: `positional` first, then every other
    field as a keyword with the config's default (so `help()` and editors show the real options)."""

    def decorate(fn: Callable) -> Callable:
        by_name = {f.name: f for f in dataclasses.fields(config)}

        def default(f: dataclasses.Field) -> Any:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return inspect.Parameter.empty

        heads = [default(by_name[name]) for name in positional]
        for k in range(len(heads) - 2, -1, -1):  # a positional with a default only before defaulted ones
            if heads[k + 1] is inspect.Parameter.empty:
                heads[k] = inspect.Parameter.empty
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
                  for name, d in zip(positional, heads)]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default(f))
                   for f in ordered_fields(config) if f.name not in positional]
        fn.__signature__ = inspect.Signature(params)
        fn.__doc__ = (fn.__doc__ or "") + "\n\nOptions (`{}`):\n{}".format(
            config.__name__, "\n".join(f"    {f.name}: {by_name[f.name].metadata.get('help', '')}"
                                       for f in ordered_fields(config) if f.name not in positional))
        return fn

    return decorate


@_keywords_of(BlocksConfig, "model")
def list_blocks(model: str, **options: Any):
    """The recognized blocks of a model (`updp blocks`); returns a `BlocksReport`."""
    from updp.workflows.blocks import list_blocks as run  # lazy: `import updp` stays free of torch

    return run(BlocksConfig(model=model, **options))


@_keywords_of(TrainConfig, "model")
def train(model: str, **options: Any):
    """Train (or, from `checkpoint`, fine-tune) a baseline on a local dataset (`updp train`).

    Returns:
        `BaselineResult` (val accuracy, history, checkpoint path, model spec).
    """
    from updp.workflows.train import train as run  # lazy: `import updp` stays free of torch

    return run(TrainConfig(model=model, **options), echo=_stderr)


@_keywords_of(SearchConfig, "checkpoint")
def search(checkpoint: str, **options: Any):
    """Supernet + subnet search from a trained baseline (`updp search`); writes the plan to `out`.

    Returns:
        `SearchResult`; its `.plan` is the `PrunePlan` (also saved at `out`).
    """
    from updp.workflows.search import run_search  # lazy: `import updp` stays free of torch

    return run_search(SearchConfig(checkpoint=str(checkpoint), **options), echo=_stderr)


@_keywords_of(PruneConfig, "checkpoint", "plan")
def prune(checkpoint: str, plan: Any = None, **options: Any):
    """Progressive training of the chosen blocks (`updp prune`); the checkpoint at `out` carries its plan.

    `plan` is a `PrunePlan`, a `SearchResult` (its plan) or a plan .json path; or give `blocks` or
    `prune` (N blocks by the default rule) instead.

    Returns:
        `PruneResult` (plan, training result, baseline and at-start accuracies).
    """
    from updp.workflows.prune import prune as run  # lazy: `import updp` stays free of torch

    return run(PruneConfig(checkpoint=str(checkpoint), plan=plan, **options), echo=_stderr)


@_keywords_of(ExportConfig, "checkpoint", "out")
def export(checkpoint: str | None, out: str, **options: Any):
    """Export to ONNX, merge the pruned blocks, verify, write `out` (`updp export`).

    `checkpoint` is one of `updp train` / `updp prune` (the model comes from it), or None for
    random weights (then give `model`).

    Returns:
        `ExportResult` (`.max_abs_diff` of the verified merge, nodes, ops, decisions).
    """
    from updp.workflows.export import export as run  # lazy: `import updp` stays free of torch

    return run(ExportConfig(checkpoint=str(checkpoint) if checkpoint else None, out=str(out), **options))


@_keywords_of(OptimizeConfig, "input", "out")
def optimize(input: str, out: str, **options: Any):
    """updp's passes on any ONNX file, verified before writing `out` (`updp optimize`)."""
    from updp.workflows.optimize import optimize as run  # lazy: `import updp` stays free of torch

    return run(OptimizeConfig(input=str(input), out=str(out), **options))


@_keywords_of(EvalConfig, "file")
def evaluate(file: str, **options: Any) -> dict:
    """Accuracy of an ONNX file (ONNX Runtime) or a checkpoint (torch) (`updp eval`)."""
    from updp.workflows.evaluate import evaluate as run  # lazy: `import updp` stays free of torch

    return run(EvalConfig(file=str(file), **options))


@_keywords_of(BenchConfig, "models")
def bench(models: list[str], **options: Any):
    """Interleaved latency of ONNX files under ORT_DISABLE_ALL and ORT_ENABLE_ALL (`updp bench`).

    Returns:
        `BenchSweep`: one `BenchReport` per batch size (`.report(batch)`); speedups relative to the
        first file (`.format_table()`, `.get(name, level, batch=None)`).
    """
    from updp.workflows.bench import bench as run  # lazy: `import updp` stays free of torch

    return run(BenchConfig(models=[str(p) for p in models], **options))


def run(config=None, out_dir: str | Path = "runs/updp", *, resume: bool = False, **overrides):
    """The whole chain in a run directory (`updp run`); returns the `RunOutcome`.

    Args:
        config: a `RunConfig`, a path to a .toml/.yaml/.json run config, or None for the defaults.
        out_dir: the run directory.
        resume: continue the run in `out_dir` (with its saved config, unless `config` is given).
        overrides: sections to change, e.g. `prune={"epochs": 8}`, `device="cpu"`.
    """
    from updp.pipeline.run import resolve_config, run_pipeline  # lazy: `import updp` stays free of torch

    if config is None and not resume:
        config = RunConfig()
    elif config is not None and not isinstance(config, RunConfig):
        config = RunConfig.load(config)
    if overrides:
        if config is None:
            config = resolve_config(None, Path(out_dir), resume=True)
        config = config.replace(**overrides)
    return run_pipeline(config, out_dir, resume=resume)


__all__ = ["bench", "evaluate", "export", "list_blocks", "optimize", "prune", "run", "search", "train"]
