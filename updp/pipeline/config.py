"""The configuration of an `updp run`: typed, versioned, and round-tripping through JSON and TOML.

    cfg = RunConfig.load("run.toml")          # TOML (stdlib tomllib), YAML (if pyyaml), or JSON
    cfg = RunConfig.from_dict(json.loads(cfg.to_json()))
    RunConfig.from_toml(cfg.to_toml()) == cfg

A run file has one table per stage; every key is optional and defaults to the values below:

    version = 1
    device = "auto"

    [model]
    name = "timm:convnext_atto"
    input_size = [32, 32]

    [data]
    spec = "mnist5k"

    [baseline]
    epochs = 10              # with `checkpoint`: fine-tuning epochs (0 takes it as is)

    [search]
    target_blocks = 4        # or target_speedup = 1.3, or blocks = [1, 3] (no search)
    epochs = 2

    [prune]
    epochs = 6

    [bench]
    threads = 2

Each stage's section is derived from the config of the workflow the stage calls
(`updp.workflows.config`): every setting of `updp train` is a key of `[baseline]`, every setting of
`updp search` a key of `[search]`, and so on, with the same defaults, less what the run itself
decides (file paths, the data, the device). `stage_configs` builds the workflow configs from the
run config; the run config is checked by building them when it is loaded.

Why optional fields default to None: TOML has no null, so `to_toml` leaves None values out, and
they must come back as None. A test checks that every field that may hold None defaults to None.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from updp.core.constants import AMP_MODES, OPT_LEVELS
from updp.core.errors import InputError
from updp.workflows.config import (
    BenchConfig,
    ExportConfig,
    PrecisionOptions,
    PruneConfig,
    SearchConfig,
    TrainConfig,
    field_default,
    option,
    parse_batches,
    parse_op_types,
)

CONFIG_VERSION = 1
# The stages of a run, in order (`updp.pipeline.stages` implements them; the CLI offers the names
# without importing it).
STAGE_NAMES = ("baseline", "search", "prune", "export", "eval", "quantize", "bench", "report")
DEFAULT_MODEL = "timm:convnext_atto"
DEFAULT_DATA = "mnist5k"

# Settings of the workflows that the run decides itself, so they are no section's keys: file
# paths (each stage writes into its own folder), the data (section [data]), the model (section
# [model]), the torch device, mixed precision and the step cap (top-level keys, for every training
# stage), progress output, resuming (the runner's), and the latency threads (section [bench]).
RUN_DECIDES = ("model", "data", "out", "checkpoint", "input_size", "model_kwargs", "split_seed", "device",
               "amp", "max_steps_per_epoch", "resume", "log_jsonl", "progress", "threads")


def derive_section(name: str, source: type, *, doc: str, keep: tuple[str, ...] | None = None,
                   exclude: tuple[str, ...] = RUN_DECIDES, extra: tuple = (),
                   post_init: Callable[[Any], None] | None = None) -> type:
    """A run-config section whose fields are those of workflow config `source` (with their types,
    defaults and help), less `exclude` (or only `keep`), plus `extra` (name, type, field)."""
    specs = []
    for f in fields(source):
        if (keep is not None and f.name not in keep) or (keep is None and f.name in exclude):
            continue
        kw: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not MISSING:
            kw["default"] = f.default
        elif f.default_factory is not MISSING:
            kw["default_factory"] = f.default_factory
        else:
            raise TypeError(f"{source.__name__}.{f.name} has no default: a run section needs one")
        specs.append((f.name, f.type, field(**kw)))
    namespace: dict[str, Any] = {"__doc__": doc, "__module__": __name__, "source": source}
    if post_init is not None:
        namespace["__post_init__"] = post_init
    return dataclasses.make_dataclass(name, [*specs, *extra], namespace=namespace)


@dataclass
class ModelSection:
    """The architecture.

    Attributes:
        name: `timm:NAME`, `torchvision:NAME` or a bare timm NAME.
        input_size: (H, W) for training and export.
        kwargs: constructor arguments (e.g. `{"patch_size": 4}`).
    """

    name: str = DEFAULT_MODEL
    input_size: tuple[int, int] = field_default(TrainConfig, "input_size")
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = [int(s) for s in (self.input_size if isinstance(self.input_size, (list, tuple))
                                 else [self.input_size] * 2)]
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or min(size) <= 0:
            raise InputError(f"model.input_size must be [H, W] with positive sizes, got {self.input_size!r}")
        self.input_size = (size[0], size[1])


@dataclass
class DataSection:
    """The dataset (`updp.data.get_datasets`): `spec` and the seed of its fixed splits."""

    spec: str = DEFAULT_DATA
    split_seed: int = field_default(TrainConfig, "split_seed")


def _search_post_init(self) -> None:
    if self.blocks is not None:
        self.blocks = sorted({int(b) for b in self.blocks})
        if not self.blocks:
            raise InputError("search.blocks is empty: give block indices, or leave it out to search")
    if self.target_blocks is not None and self.target_speedup is not None:
        raise InputError("search: give target_blocks or target_speedup, not both")


def _bench_post_init(self) -> None:
    self.batch = parse_batches(self.batch, "bench.batch")
    self.opt_levels = [str(v) for v in self.opt_levels]
    for level in [*self.opt_levels, self.profile_opt_level]:
        if level not in OPT_LEVELS:
            raise InputError(f"bench: unknown optimization level {level!r}; choose from {', '.join(OPT_LEVELS)}")
    if "all" not in self.opt_levels:
        self.opt_levels.append("all")  # the speedup that counts: ORT fuses Conv+BN by itself


BaselineSection = derive_section(
    "BaselineSection", TrainConfig, exclude=tuple(n for n in RUN_DECIDES if n != "checkpoint"),
    doc="Stage `baseline`: the settings of `updp train`. `checkpoint`: your own weights (a updp checkpoint or "
        "a plain state dict); `epochs` are then fine-tuning epochs, 0 takes it as is.")
SearchSection = derive_section(
    "SearchSection", SearchConfig, exclude=(*RUN_DECIDES, "supernet", "reuse_supernet", "lut"),
    extra=(("blocks", list[int] | None, option(None, help="prune exactly these blocks and skip the search")),),
    post_init=_search_post_init,
    doc="Stage `search`: the settings of `updp search`; or `blocks` to prune exactly those blocks and skip the "
        "search (the plan says 'manual'). No target: a third of the prunable blocks.")
PruneSection = derive_section(
    "PruneSection", PruneConfig, exclude=(*RUN_DECIDES, "plan", "blocks", "prune", "no_supernet"),
    doc="Stage `prune`: the settings of `updp prune` (the blocks come from the search stage's plan).")
ExportSection = derive_section(
    "ExportSection", ExportConfig, keep=("opset", "exporter", "seed"),
    doc="Stage `export`: both checkpoints to ONNX, merged and verified (the settings of `updp export` that a "
        "run may change; merging and verifying are not optional here).")
def _precision_post_init(self) -> None:
    self.keep_float = parse_op_types(self.keep_float)  # a TOML/JSON list comes back as the tuple it was


PrecisionSection = derive_section(
    "PrecisionSection", PrecisionOptions, exclude=("data", "split_seed"), post_init=_precision_post_init,
    doc="Stage `quantize` (off unless `quantize = \"int8\"` or `fp16 = true`): int8 / float16 files of both "
        "exported files, the settings of `updp export --quantize/--fp16`; calibrated on the run's data (train "
        "split), their accuracy measured on its val split, an int8 file losing more than `max_accuracy_drop` "
        "points refused (the run stops, exit 4).")
BenchSection = derive_section(
    # dims: the run exports its models at the configured input size, so none is symbolic
    "BenchSection", BenchConfig, exclude=("models", "save", "names", "dims"),
    extra=(("profile_runs", int, option(50, help="profiled runs per model for the per-block times")),
           ("profile_opt_level", str, option("all", help="optimization level of the per-block profiles"))),
    post_init=_bench_post_init,
    doc="Stage `bench`: the settings of `updp bench` (interleaved latency under ORT_DISABLE_ALL and "
        "ORT_ENABLE_ALL), plus the per-block profiles; `threads` also measure the search's latency table.")

_SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "baseline": BaselineSection,
                              "search": SearchSection, "prune": PruneSection, "export": ExportSection,
                              "precision": PrecisionSection, "bench": BenchSection}


@dataclass
class RunConfig:
    """Everything that decides an `updp run`; saved as `config.json` in the run directory.

    Attributes:
        version: format version; other versions are refused.
        device: torch device for training ('auto', 'cpu', 'cuda').
        max_steps_per_epoch: cap on training steps per epoch, every training stage (smoke runs, tests).
        amp: 'off' or 'bf16': bfloat16 autocast of every training stage's forwards (see
            `updp.training.trainer.TrainerConfig.amp`).
        model, data, baseline, search, prune, export, precision, bench: one section per stage
            (`precision` is the quantize stage's).
    """

    version: int = CONFIG_VERSION
    device: str = field_default(TrainConfig, "device")
    max_steps_per_epoch: int | None = field_default(TrainConfig, "max_steps_per_epoch")
    amp: str = field_default(TrainConfig, "amp")
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    baseline: BaselineSection = field(default_factory=BaselineSection)
    search: SearchSection = field(default_factory=SearchSection)
    prune: PruneSection = field(default_factory=PruneSection)
    export: ExportSection = field(default_factory=ExportSection)
    precision: PrecisionSection = field(default_factory=PrecisionSection)
    bench: BenchSection = field(default_factory=BenchSection)

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise InputError(f"run config version {self.version} is not supported (this updp reads version "
                             f"{CONFIG_VERSION})")
        if self.amp not in AMP_MODES:
            raise InputError(f"run config: amp must be 'off' or 'bf16', got {self.amp!r}")
        stage_configs(self, Path("<run>"))  # every stage's workflow config must build (one-line errors)

    # ------------------------------------------------------------ dict / JSON

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"]["input_size"] = list(self.model.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a (possibly partial) dict; unknown keys are an error naming the key."""
        if not isinstance(d, dict):
            raise InputError(f"run config must be a table/object, got {type(d).__name__}")
        top = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - top)
        if unknown:
            raise InputError(f"run config: unknown key(s) {unknown}; known: {sorted(top)}")
        kw: dict[str, Any] = {}
        for name, value in d.items():
            if name in _SECTIONS:
                kw[name] = _section(name, _SECTIONS[name], value)
            else:
                kw[name] = value
        try:
            return cls(**kw)
        except TypeError as exc:
            raise InputError(f"run config: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InputError(f"run config: not valid JSON ({exc})") from None

    # ------------------------------------------------------------ TOML / YAML

    def to_toml(self) -> str:
        """TOML text (None values are left out: they are the defaults)."""
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in _SECTIONS and v is not None]
        for name in _SECTIONS:
            lines += ["", f"[{name}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in d[name].items() if v is not None]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"run config: not valid TOML ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read `.toml`, `.yaml`/`.yml` (needs pyyaml) or `.json`."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"run config {p}: no such file")
        text = p.read_text()
        suffix = p.suffix.lower()
        if suffix == ".toml":
            return cls.from_toml(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml  # optional: pyyaml comes with the `report` extra
            except ImportError:
                raise InputError(f"{p}: reading YAML needs pyyaml (pip install 'updp[report]'), or use TOML"
                                 ) from None
            try:
                return cls.from_dict(yaml.safe_load(text) or {})
            except yaml.YAMLError as exc:
                raise InputError(f"run config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if suffix == ".json":
            return cls.from_json(text)
        raise InputError(f"run config {p}: expected .toml, .yaml/.yml or .json")

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some fields changed: `cfg.replace(prune={"epochs": 8}, device="cpu")`."""
        d = self.to_dict()
        for name, value in sections.items():
            if name in _SECTIONS:
                d[name].update(value)
            else:
                d[name] = value
        return RunConfig.from_dict(d)


def _section(name: str, cls: type, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise InputError(f"run config: [{name}] must be a table, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise InputError(f"run config: unknown key(s) in [{name}]: {unknown}; known: {sorted(known)}")
    try:
        return cls(**value)
    except TypeError as exc:
        raise InputError(f"run config [{name}]: {exc}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise InputError(f"cannot write {type(v).__name__} value {v!r} to TOML")


def demo_config(quick: bool = False) -> RunConfig:
    """The embedded default of `updp demo`: mnist5k, timm convnext_atto at 32×32, small budgets.

    10 baseline epochs, a search for 4 of the 12 blocks (2 supernet epochs, 60 scored subnets, each
    after a BN recalibration on 4 batches, a latency table of 30 rounds), 6 progressive epochs with
    distillation, then 200 interleaved latency rounds after 20 warm-up runs; about 1.5 minutes on
    2 quiet AVX512 cores, about 5 on 2 AVX2 cores. 4 calibration batches instead of `updp
    search`'s 8: on this model and data the subnets' holdout scores rank the same as with 8
    (Spearman 0.87-0.93 against 8 batches, where a second draw of 8 batches gives 0.88-0.91), for
    a third less scoring time. `quick` halves the training budgets and the latency repeats (a
    mechanics check, not a result).
    """
    cfg = RunConfig(model=ModelSection(name=DEFAULT_MODEL, input_size=(32, 32)),
                    data=DataSection(spec=DEFAULT_DATA), baseline=BaselineSection(epochs=10),
                    search=SearchSection(target_blocks=4, epochs=2, max_evals=60, calib_batches=4, bench_repeats=30),
                    prune=PruneSection(epochs=6), bench=BenchSection(warmup=20, repeats=200, profile_runs=50))
    if quick:
        cfg = cfg.replace(baseline={"epochs": 5}, search={"epochs": 1, "max_evals": 30},
                          prune={"epochs": 3}, bench={"repeats": 60, "profile_runs": 20})
    return cfg


def stage_subset(cfg: RunConfig, *names: str) -> dict[str, Any]:
    """The part of the config a stage depends on (hashed into its stage record)."""
    d = cfg.to_dict()
    return {n: d[n] for n in names}


# ------------------------------------------------------------------ run config -> workflow configs

STAGE_FILES = {"baseline": "baseline/base.pt", "plan": "search/plan.json", "pruned": "prune/pruned.pt",
               "baseline.onnx": "export/baseline.onnx", "pruned.onnx": "export/pruned.onnx"}


def _training(cfg: RunConfig, out: Path, *, resume: bool, progress: bool) -> dict[str, Any]:
    """The run-level settings of every training stage."""
    return {"device": cfg.device, "amp": cfg.amp, "max_steps_per_epoch": cfg.max_steps_per_epoch,
            "resume": resume, "progress": progress, "out": str(out)}


def baseline_config(cfg: RunConfig, run_dir: Path, *, resume: bool = False, progress: bool = True) -> TrainConfig:
    """Stage `baseline` as an `updp train` config."""
    out = run_dir / STAGE_FILES["baseline"]
    section = asdict(cfg.baseline)
    if section["checkpoint"]:
        section["checkpoint"] = str(Path(section["checkpoint"]).expanduser())
    return TrainConfig(model=cfg.model.name, input_size=cfg.model.input_size, model_kwargs=dict(cfg.model.kwargs),
                       data=cfg.data.spec, split_seed=cfg.data.split_seed, log_jsonl=str(out.with_suffix(".log.jsonl")),
                       **section, **_training(cfg, out, resume=resume, progress=progress))


def search_config(cfg: RunConfig, run_dir: Path, *, resume: bool = False, progress: bool = True) -> SearchConfig:
    """Stage `search` as an `updp search` config (when `search.blocks` is not given)."""
    plan = run_dir / STAGE_FILES["plan"]
    lut = plan.with_suffix(".lut.json")
    section = {k: v for k, v in asdict(cfg.search).items() if k != "blocks"}
    return SearchConfig(checkpoint=str(run_dir / STAGE_FILES["baseline"]), data=cfg.data.spec,
                        split_seed=cfg.data.split_seed, threads=cfg.bench.threads,
                        lut=str(lut) if (resume and lut.is_file()) else None, **section,
                        **_training(cfg, plan, resume=resume, progress=progress))


def prune_config(cfg: RunConfig, run_dir: Path, *, resume: bool = False, progress: bool = True) -> PruneConfig:
    """Stage `prune` as an `updp prune` config (the blocks from the search stage's plan)."""
    out = run_dir / STAGE_FILES["pruned"]
    return PruneConfig(checkpoint=str(run_dir / STAGE_FILES["baseline"]), data=cfg.data.spec,
                       split_seed=cfg.data.split_seed, plan=str(run_dir / STAGE_FILES["plan"]),
                       log_jsonl=str(out.with_suffix(".log.jsonl")), **asdict(cfg.prune),
                       **_training(cfg, out, resume=resume, progress=progress))


def export_configs(cfg: RunConfig, run_dir: Path) -> dict[str, ExportConfig]:
    """Stage `export` as two `updp export` configs: the baseline and the pruned checkpoint."""
    ckpt = {"baseline": STAGE_FILES["baseline"], "pruned": STAGE_FILES["pruned"]}
    return {key: ExportConfig(model=cfg.model.name, checkpoint=str(run_dir / ckpt[key]),
                              out=str(run_dir / STAGE_FILES[f"{key}.onnx"]), **asdict(cfg.export))
            for key in ("baseline", "pruned")}


def precision_config(cfg: RunConfig) -> PrecisionOptions:
    """Stage `quantize` as the precision options of `updp export` (the data is the run's)."""
    on = cfg.precision.quantize is not None or cfg.precision.fp16  # PrecisionOptions refuses --data otherwise
    return PrecisionOptions(data=cfg.data.spec if on else None, split_seed=cfg.data.split_seed,
                            **asdict(cfg.precision))


def bench_config(cfg: RunConfig, run_dir: Path, derived: dict[str, Path] | None = None) -> BenchConfig:
    """Stage `bench` as an `updp bench` config (the per-block profiles are the stage's own); `derived`:
    the quantize stage's files by name ('baseline.int8', ...), timed with the two float files."""
    section = {k: v for k, v in asdict(cfg.bench).items() if k not in ("profile_runs", "profile_opt_level")}
    derived = derived or {}
    return BenchConfig(models=[str(run_dir / STAGE_FILES["baseline.onnx"]), str(run_dir / STAGE_FILES["pruned.onnx"]),
                               *map(str, derived.values())],
                       names=["baseline", "pruned", *derived], **section)


def in_run_terms(message: str, section: str) -> str:
    """`message` of a workflow, with each `--flag` that is a key of the run config's `[section]`
    written as that key (`--max-accuracy-drop` -> `precision.max_accuracy_drop`): the workflows
    name their command-line flags, which `updp run` mostly does not have."""
    keys = {f.name for f in fields(_SECTIONS[section])}

    def key(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return f"{section}.{name}" if name in keys else m.group(0)

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", key, message)


def stage_configs(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Every stage's workflow config(s); raises `InputError` naming the section that does not build."""
    builders = {"baseline": baseline_config, "search": search_config, "prune": prune_config,
                "export": export_configs, "precision": lambda c, _: precision_config(c), "bench": bench_config}
    out = {}
    for name, build in builders.items():
        if name == "search" and cfg.search.blocks is not None:
            continue
        try:
            out[name] = build(cfg, run_dir)
        except InputError as exc:
            said = in_run_terms(str(exc), name)
            raise InputError(f"run config: {said}" if said != str(exc) else f"run config [{name}]: {said}") from None
    return out


__all__ = ["BaselineSection", "BenchSection", "CONFIG_VERSION", "DataSection", "ExportSection", "ModelSection",
           "PrecisionSection", "PruneSection", "RunConfig", "STAGE_FILES", "STAGE_NAMES", "SearchSection",
           "baseline_config", "bench_config", "demo_config", "derive_section", "export_configs", "in_run_terms",
           "precision_config", "prune_config", "search_config", "stage_configs", "stage_subset"]
