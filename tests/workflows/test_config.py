"""One typed config per workflow: the CLI, the Python API and `updp run` take their options and
defaults from it, and every setting reaches the layer that uses it.

These tests fail when an entry point drifts from the configs (a flag with its own default, an API
keyword that is not a field, a run-config key the stage does not pass on, a lower-layer setting
with another default).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

import updp
from updp import api, cli
from updp.pipeline import config as run_config
from updp.pipeline.config import RunConfig
from updp.training.progressive import ProgressiveConfig
from updp.training.supernet import SupernetConfig
from updp.training.trainer import TrainerConfig
from updp.workflows.config import (
    WORKFLOW_CONFIGS,
    BenchConfig,
    ExportConfig,
    PruneConfig,
    SearchConfig,
    TrainConfig,
    field_default,
    pick,
)

# The smallest command line of each workflow (its required arguments).
REQUIRED = {
    "blocks": ["m"], "train": ["m", "--data", "d", "--out", "o"], "search": ["c", "--data", "d", "--out", "o"],
    "prune": ["--checkpoint", "c", "--data", "d", "--out", "o", "--blocks", "1"],
    "export": ["m", "--out", "o"], "optimize": ["i", "--out", "o"], "eval": ["f", "--data", "d"],
    "bench": ["a.onnx"], "demo": [],
}
# Values the smallest command line sets (a required field, or the one block choice of `prune`).
GIVEN = {"blocks": {"model"}, "train": {"model", "data", "out"}, "search": {"checkpoint", "data", "out"},
         "prune": {"checkpoint", "data", "out", "blocks"}, "export": {"model", "out"}, "optimize": {"input", "out"},
         "eval": {"file", "data"}, "bench": {"models"}, "demo": set()}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("name", sorted(WORKFLOW_CONFIGS))
def test_every_cli_flag_is_a_config_field_and_every_cli_field_a_flag(name):
    config = WORKFLOW_CONFIGS[name]
    dests = {a.dest for a in _subparser(name)._actions} - {"help", "json", "verbose", "quiet"}
    offered = {f.name for f in fields(config) if f.metadata.get("cli", True)}
    assert dests == offered


@pytest.mark.parametrize("name", sorted(WORKFLOW_CONFIGS))
def test_a_flag_left_out_takes_the_config_default(name):
    config = WORKFLOW_CONFIGS[name]
    args = cli.build_parser().parse_args([name, *REQUIRED[name]])
    built = cli.config_from_args(config, args)
    for f in fields(config):
        if f.name not in GIVEN[name]:
            assert getattr(built, f.name) == field_default(config, f.name), f.name


@pytest.mark.parametrize("name", sorted(WORKFLOW_CONFIGS))
def test_cli_help_shows_the_config_default(name):
    config = WORKFLOW_CONFIGS[name]
    helps = {a.dest: a.help or "" for a in _subparser(name)._actions}
    for f in fields(config):
        default = field_default(config, f.name)
        if f.name in helps and isinstance(default, (int, float, str)) and not isinstance(default, bool):
            assert f"(default {default})" in helps[f.name], (f.name, helps[f.name])


FACADES = {"list_blocks": "blocks", "train": "train", "search": "search", "prune": "prune", "export": "export",
           "optimize": "optimize", "evaluate": "eval", "bench": "bench"}


@pytest.mark.parametrize("function, workflow", sorted(FACADES.items()))
def test_api_keywords_are_the_config_fields_with_its_defaults(function, workflow):
    config = WORKFLOW_CONFIGS[workflow]
    sig = inspect.signature(getattr(updp, function))
    assert set(sig.parameters) == {f.name for f in fields(config)}
    for f in fields(config):
        want = field_default(config, f.name)
        got = sig.parameters[f.name].default
        if want is MISSING:
            assert got is inspect.Parameter.empty or f.name == "checkpoint", f.name
        elif got is not inspect.Parameter.empty:
            assert got == want, f.name


def test_every_facade_of_the_api_is_tested_here():
    assert set(api.__all__) == {*FACADES, "run"}


SECTIONS = {"baseline": TrainConfig, "search": SearchConfig, "prune": PruneConfig, "export": ExportConfig,
            "bench": BenchConfig}


@pytest.mark.parametrize("section, workflow", sorted(SECTIONS.items()))
def test_run_sections_have_the_workflow_defaults(section, workflow):
    cls = type(getattr(RunConfig(), section))
    for f in fields(cls):
        if f.name in {g.name for g in fields(workflow)}:
            assert field_default(cls, f.name) == field_default(workflow, f.name), (section, f.name)


def _changed(value):
    """A value different from `value`, of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value + 0.125
    return value


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_run_section_key_reaches_the_workflow_config(section, tmp_path):
    """Change each key of a section; the stage's workflow config must carry the new value."""
    base = RunConfig()
    builders = {"baseline": run_config.baseline_config, "search": run_config.search_config,
                "prune": run_config.prune_config, "export": lambda c, d: run_config.export_configs(c, d)["pruned"],
                "bench": run_config.bench_config}
    for f in fields(type(getattr(base, section))):
        value = getattr(getattr(base, section), f.name)
        new = _changed(value)
        if new == value or f.name in ("blocks", "checkpoint", "profile_runs", "profile_opt_level"):
            continue  # not a number or a switch, or a key the stage uses itself (tested in test_run.py)
        # Layer-Folding's settings are refused with another method: change them with it.
        depends = {"method": "layerfold"} if f.name.startswith("layerfold_") else {}
        try:
            cfg = base.replace(**{section: {f.name: new, **depends}})
        except Exception as exc:  # a changed value outside the field's range: that is fine here
            pytest.fail(f"{section}.{f.name} = {new!r} refused: {exc}")
        built = builders[section](cfg, Path(tmp_path))
        assert getattr(built, f.name) == new, f"{section}.{f.name} does not reach {type(built).__name__}"


def test_top_level_run_keys_reach_every_training_stage(tmp_path):
    cfg = RunConfig().replace(device="cpu", amp="bf16", max_steps_per_epoch=7, data={"split_seed": 5})
    for build in (run_config.baseline_config, run_config.search_config, run_config.prune_config):
        built = build(cfg, tmp_path)
        assert (built.device, built.amp, built.max_steps_per_epoch, built.split_seed) == ("cpu", "bf16", 7, 5)


LOWER = [(TrainConfig, TrainerConfig), (PruneConfig, TrainerConfig), (PruneConfig, ProgressiveConfig),
         (SearchConfig, SupernetConfig)]
# Lower-layer defaults that differ on purpose: the trainer's distillation is off unless a workflow
# with a teacher turns it on (prune and the supernet pass their own kd_alpha).
ON_PURPOSE = {("TrainerConfig", "kd_alpha")}


@pytest.mark.parametrize("workflow, lower", LOWER, ids=lambda c: c.__name__)
def test_lower_layer_configs_have_no_default_of_their_own_for_a_workflow_setting(workflow, lower):
    """A setting both have: the lower config either has no default (the workflow decides) or the same."""
    shared = {f.name for f in fields(workflow)} & {f.name for f in fields(lower)}
    assert shared, "nothing shared"
    for name in shared:
        d, want = field_default(lower, name), field_default(workflow, name)
        if want is MISSING or (lower.__name__, name) in ON_PURPOSE:
            continue  # the workflow requires it (and always passes it on)
        assert d is MISSING or d == want, (lower.__name__, name, d, want)


def test_pick_hands_every_shared_field_to_the_lower_config():
    cfg = PruneConfig(checkpoint="c", data="d", out="o", blocks=[1], lr=0.0123, kd_temperature=2.5, seed=7,
                      calib_batches=3, schedule="cosine")
    trainer = TrainerConfig(**pick(cfg, TrainerConfig))
    method = ProgressiveConfig(**pick(cfg, ProgressiveConfig))
    assert (trainer.lr, trainer.seed, trainer.kd_temperature) == (0.0123, 7, 2.5)
    assert (method.calib_batches, method.schedule, method.kd_temperature) == (3, "cosine", 2.5)


# ------------------------------------------------------------------ the values that used to disagree

def test_supernet_epochs_and_search_budget_are_one_value_everywhere():
    search_cli = cli.config_from_args(SearchConfig, cli.build_parser().parse_args(["search", *REQUIRED["search"]]))
    sig = inspect.signature(updp.search).parameters
    run = RunConfig().search
    assert search_cli.epochs == sig["epochs"].default == run.epochs == 2
    assert search_cli.max_evals == sig["max_evals"].default == run.max_evals == 60


def test_bench_reports_both_optimization_levels_from_every_entry_point():
    bench_cli = cli.config_from_args(BenchConfig, cli.build_parser().parse_args(["bench", "a.onnx"]))
    assert bench_cli.opt_levels == inspect.signature(updp.bench).parameters["opt_levels"].default == \
        RunConfig().bench.opt_levels == ["disable", "all"]


def test_search_without_a_target_prunes_a_third_of_the_candidates():
    from updp.workflows.search import default_target

    assert [default_target(n) for n in (1, 3, 12, 24)] == [1, 1, 4, 8]
    assert SearchConfig(checkpoint="c", data="d", out="o").target_blocks is None


def test_run_config_checks_each_stage_config_when_loaded():
    # named by their keys in the run config, not by the flags of the stage's own command
    with pytest.raises(updp.core.errors.InputError, match=r"^run config: prune\.schedule must be one of"):
        RunConfig().replace(prune={"schedule": "exponential"})
    with pytest.raises(updp.core.errors.InputError, match=r"^run config: baseline\.epochs 0 takes a base"):
        RunConfig().replace(baseline={"epochs": 0})


def test_config_dataclasses_are_torch_free():
    import subprocess
    import sys

    code = ("import sys, updp.workflows.config, updp.pipeline.config, updp.cli; "
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert dataclasses.is_dataclass(TrainConfig)
