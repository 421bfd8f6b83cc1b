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

Why optional fields default to None: TOML has no null, so `to_toml` leaves None values out, and
they must come back as None. A test checks that every field that may hold None defaults to None.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from updp.errors import InputError

CONFIG_VERSION = 1
OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class ModelConfig:
    """The architecture.

    Attributes:
        name: `timm:NAME`, `torchvision:NAME` or a bare timm NAME.
        input_size: (H, W) for training and export.
        kwargs: constructor arguments (e.g. `{"patch_size": 4}`).
    """

    name: str = "timm:convnext_atto"
    input_size: tuple[int, int] = (32, 32)
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
class DataConfig:
    """The dataset (`updp.data.get_datasets`): `spec` and the seed of its fixed splits."""

    spec: str = "mnist5k"
    split_seed: int = 0


@dataclass
class BaselineConfig:
    """Stage `baseline`: train a baseline, or take (and optionally fine-tune) `checkpoint`.

    Attributes:
        checkpoint: your own weights (a updp checkpoint or a plain state dict); None trains from scratch.
        epochs: training epochs (fine-tuning epochs with a checkpoint; 0 takes it as is).
    """

    checkpoint: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0


@dataclass
class SearchConfig:
    """Stage `search`: supernet training + subnet search (`updp.pruning.search.run_search`).

    Attributes:
        blocks: prune exactly these blocks and skip the search (the plan says "manual").
        target_blocks: prune K blocks; None (with no `target_speedup`) means a third of the
            prunable blocks.
        target_speedup: or: a predicted ORT speedup of at least S.
        epochs: supernet epochs (0: score the baseline's own weights).
        Others: as `updp search`.
    """

    blocks: list[int] | None = None
    target_blocks: int | None = None
    target_speedup: float | None = None
    epochs: int = 2
    method: str = "auto"
    max_evals: int = 60
    population: int = 16
    parents: int = 6
    random_picks: int = 3
    calib_batches: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    bench_repeats: int = 30
    profile_rounds: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.blocks is not None:
            self.blocks = sorted({int(b) for b in self.blocks})
            if not self.blocks:
                raise InputError("search.blocks is empty: give block indices, or leave it out to search")
        if self.target_blocks is not None and self.target_speedup is not None:
            raise InputError("search: give target_blocks or target_speedup, not both")


@dataclass
class PruneStageConfig:
    """Stage `prune`: progressive training (`updp.pruning.progressive.prune_checkpoint`)."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    schedule: str = "linear"
    ramp_fraction: float = 0.5
    kd: bool = True
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    calib_batches: int = 20
    seed: int = 0


@dataclass
class ExportConfig:
    """Stage `export`: both checkpoints to ONNX, merged and verified (`updp.api.export_model`)."""

    opset: int = 18
    seed: int = 0


@dataclass
class BenchConfig:
    """Stage `bench`: interleaved A/B latency and per-block profiles (`updp.latency`).

    Attributes:
        threads: ORT intra-op threads.
        opt_levels: graph optimization levels compared side by side.
        warmup, repeats: per session.
        profile_runs: profiled runs per model for the per-block times.
        profile_opt_level: optimization level of the per-block profiles.
    """

    threads: int = 2
    opt_levels: list[str] = field(default_factory=lambda: ["disable", "all"])
    warmup: int = 20
    repeats: int = 200
    batch: int = 1
    profile_runs: int = 50
    profile_opt_level: str = "all"

    def __post_init__(self) -> None:
        self.opt_levels = [str(v) for v in self.opt_levels]
        for level in [*self.opt_levels, self.profile_opt_level]:
            if level not in OPT_LEVELS:
                raise InputError(f"bench: unknown optimization level {level!r}; choose from {', '.join(OPT_LEVELS)}")
        if "all" not in self.opt_levels:
            self.opt_levels.append("all")  # the speedup that counts (STYLE §11)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "baseline": BaselineConfig, "search": SearchConfig,
             "prune": PruneStageConfig, "export": ExportConfig, "bench": BenchConfig}


@dataclass
class RunConfig:
    """Everything that decides an `updp run`; saved as `config.json` in the run directory.

    Attributes:
        version: format version; other versions are refused.
        device: torch device for training ('auto', 'cpu', 'cuda').
        max_steps_per_epoch: cap on training steps per epoch, every training stage (smoke runs, tests).
        amp: 'off' or 'bf16': bfloat16 autocast of every training stage's forwards (see
            `updp.pruning.train.TrainConfig.amp`).
        model, data, baseline, search, prune, export, bench: one section per stage.
    """

    version: int = CONFIG_VERSION
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    amp: str = "off"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    prune: PruneStageConfig = field(default_factory=PruneStageConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise InputError(f"run config version {self.version} is not supported (this updp reads version "
                             f"{CONFIG_VERSION})")
        if self.amp not in ("off", "bf16"):
            raise InputError(f"run config: amp must be 'off' or 'bf16', got {self.amp!r}")

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
        import tomllib

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
                import yaml
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

    10 baseline epochs, a search for 4 of the 12 blocks (2 supernet epochs, 60 scored subnets),
    6 progressive epochs with distillation; about 5 minutes on 2 CPU cores. `quick` halves the
    training budgets and the latency repeats (a mechanics check, not a result).
    """
    cfg = RunConfig(model=ModelConfig(name="timm:convnext_atto", input_size=(32, 32)),
                    data=DataConfig(spec="mnist5k"), baseline=BaselineConfig(epochs=10),
                    search=SearchConfig(target_blocks=4, epochs=2, max_evals=60),
                    prune=PruneStageConfig(epochs=6), bench=BenchConfig(repeats=200, profile_runs=50))
    if quick:
        cfg = cfg.replace(baseline={"epochs": 5}, search={"epochs": 1, "max_evals": 30},
                          prune={"epochs": 3}, bench={"repeats": 60, "profile_runs": 20})
    return cfg


def stage_subset(cfg: RunConfig, *names: str) -> dict[str, Any]:
    """The part of the config a stage depends on (hashed into its stage record)."""
    d = cfg.to_dict()
    return {n: d[n] for n in names}


__all__ = ["BaselineConfig", "BenchConfig", "CONFIG_VERSION", "DataConfig", "ExportConfig", "ModelConfig",
           "PruneStageConfig", "RunConfig", "SearchConfig", "demo_config", "stage_subset"]
