"""One typed config per workflow, with its defaults in one place.

Every command of updp is a function `(config) -> result` in `updp.workflows`, and everything a
user can set is a field here: the CLI's flags (`updp.cli`), the Python API's keywords
(`updp.api`) and the keys of an `updp run` config (`updp.pipeline.config`) are derived from these
fields, and tests fail when any of them drifts from them. Each field carries its help text (and,
where needed, how the command line spells it) in its metadata, read by the CLI.

Standard-library only: the CLI builds its parser from these classes without importing torch.

Defaults chosen once for what the entry points used to disagree on:

* supernet epochs: 2 (the demo's budget; the supernet starts from trained weights);
* subnets the evolutionary search scores (`max_evals`): 60;
* the prune workflow's `split_seed` is the one the data is split with (the baseline's, the
  search's), like every other workflow's;
* latency: `DEFAULT_THREADS` threads, `DEFAULT_WARMUP` warm-up runs, `DEFAULT_REPEATS` interleaved
  rounds, and ORT_DISABLE_ALL beside ORT_ENABLE_ALL (`updp.core.constants`);
* no search target: a third of the prunable blocks (what `updp run` did), for `updp search` too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any

from updp.core.constants import (
    AMP_MODES,
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    DEFAULT_REPEATS,
    DEFAULT_THREADS,
    DEFAULT_TORCH_DEVICE,
    DEFAULT_WARMUP,
    EXPORTERS,
    OPT_LEVELS,
    ORT_DEVICES,
    PRUNE_METHODS,
    SPLITS,
)
from updp.core.errors import InputError

MODEL_HELP = "timm:NAME, torchvision:NAME, or a bare NAME (timm)"
DATA_HELP = "mnist5k, digits, imagefolder:PATH (train/ and val/), cifar10:PATH (python pickles)"
SCHEDULES = ("linear", "cosine", "step")
SEARCH_METHODS = ("auto", "evolutionary", "exhaustive")
RECALIBRATE = ("all", "pruned", "none")


def option(default: Any = MISSING, *, help: str, factory: Any = None, flag: str | None = None,
           positional: bool = False, metavar: str | None = None, parse: str | None = None,
           choices: tuple | None = None, nargs: str | None = None, cli: bool = True) -> Any:
    """A config field with what the CLI needs to offer it.

    Args:
        default: the default (omit for a required field).
        help: one line for `--help` (the default is appended by the CLI).
        factory: a default factory instead of `default` (lists, dicts).
        flag: the flag when it is not `--field-name` (for booleans defaulting to True: the
            negative flag, e.g. `--no-onnxsim`).
        positional: a positional argument rather than a flag.
        metavar, choices, nargs: as in argparse.
        parse: how the CLI turns the text into the value: "blocks" (`1,3,5`), "input_size"
            (`224` or `224x160`), "kwargs" (repeatable `KEY=VALUE`, JSON values).
        cli: offered on the command line (False: Python API and run configs only).
    """
    metadata = {"help": help, "flag": flag, "positional": positional, "metavar": metavar, "parse": parse,
                "choices": choices, "nargs": nargs, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def field_default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (calling its factory); MISSING if required."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def pick(source: Any, target: type, **override: Any) -> dict[str, Any]:
    """The fields of `source` (a dataclass) that `target` also has, as keyword arguments, then
    `override`: how a workflow config hands its settings to a lower layer's config, so that a
    field added to both flows through without anyone listing it."""
    names = {f.name for f in dataclasses.fields(target)}
    out = {f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.name in names}
    out.update(override)
    return out


def _input_size(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    size = [int(s) for s in (value if isinstance(value, (list, tuple)) else [value])]
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise InputError(f"{what} must be S or (H, W) with positive sizes, got {value!r}")
    return size[0], size[1]


def parse_batches(value: Any, what: str = "--batch") -> list[int] | None:
    """A batch size or a list of distinct ones (None stays None: the files' own batch)."""
    if value is None:
        return None
    batches = [int(b) for b in (value if isinstance(value, (list, tuple)) else [value])]
    if not batches or len(set(batches)) != len(batches):
        raise InputError(f"{what} needs distinct batch sizes, got {batches}")
    for b in batches:
        _at_least(b, 1, what)
    return batches


def _blocks(value: Any, what: str) -> list[int] | None:
    if value is None:
        return None
    try:
        out = sorted({int(b) for b in value})
    except (TypeError, ValueError):
        raise InputError(f"{what} expects block indices, got {value!r}") from None
    if not out:
        raise InputError(f"{what} is empty")
    return out


def _choice(value: Any, choices: tuple, what: str) -> None:
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _at_least(value: Any, low: float, what: str) -> None:
    if value is not None and value < low:
        raise InputError(f"{what} must be >= {low:g}, got {value}")


# ------------------------------------------------------------------ the training recipe fields


def _check_training(cfg: Any) -> None:
    _choice(cfg.amp, AMP_MODES, "--amp")
    _at_least(cfg.batch_size, 1, "--batch-size")
    if cfg.lr <= 0:
        raise InputError(f"--lr must be > 0, got {cfg.lr}")
    _at_least(cfg.max_steps_per_epoch, 1, "--max-steps-per-epoch")


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """A config's fields with its own first and the inherited (`TrainingRunOptions`) last: the order
    of `--help` and of the API's keywords."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}
    own = [f for f in dataclasses.fields(cls) if f.name not in inherited]
    return own + [f for f in dataclasses.fields(cls) if f.name in inherited]


@dataclass(kw_only=True)
class TrainingRunOptions:
    """Where and how a training workflow runs: the same options for `updp train`, `updp prune` and
    the supernet of `updp search`."""

    split_seed: int = option(0, help="seed of the train/holdout/val split")
    device: str = option(DEFAULT_TORCH_DEVICE, help="torch device: auto (CUDA if present), cpu, cuda, cuda:N")
    amp: str = option("off", choices=AMP_MODES,
                      help="bfloat16 autocast for training forwards (float32 weights, validation and export); "
                           "faster on CPUs with AVX512-BF16/AMX and recent GPUs")
    max_steps_per_epoch: int | None = option(None, help="cap steps per epoch (smoke runs)")
    resume: bool = option(False, help="continue the checkpoint being written after its last finished epoch (the "
                                      "same result as no interruption)")
    log_jsonl: str | None = option(None, help="append one JSON line per epoch", metavar="F.jsonl")
    progress: bool = option(True, help="no progress bars", flag="--no-progress")


@dataclass
class BlocksConfig:
    """`updp blocks`: the prunable blocks of a model."""

    model: str = option(help=MODEL_HELP, positional=True)
    input_size: tuple[int, int] | None = option(None, help="input resolution (default: the model's own)",
                                                parse="input_size", metavar="S|HxW")
    model_kwargs: dict[str, Any] = option(factory=dict, help="constructor argument, e.g. patch_size=4 (repeatable)",
                                          flag="--model-kwarg", parse="kwargs", metavar="KEY=VALUE")
    latency: bool = option(False, help="also measure each block's share of ORT time")
    threads: int = option(DEFAULT_THREADS, help="ORT intra-op threads for --latency")

    def __post_init__(self) -> None:
        self.input_size = _input_size(self.input_size, "--input-size")
        _at_least(self.threads, 1, "--threads")


@dataclass(kw_only=True)
class TrainConfig(TrainingRunOptions):
    """`updp train`: train a baseline on a local dataset (or fine-tune, or import, your checkpoint)."""

    model: str = option(help=MODEL_HELP, positional=True)
    data: str = option(help=DATA_HELP, metavar="SPEC")
    out: str = option(help="checkpoint, written atomically after every epoch")
    input_size: tuple[int, int] = option((32, 32), help="training resolution", parse="input_size", metavar="S|HxW")
    model_kwargs: dict[str, Any] = option(factory=dict, help="constructor argument, e.g. patch_size=4 (repeatable)",
                                          flag="--model-kwarg", parse="kwargs", metavar="KEY=VALUE")
    checkpoint: str | None = option(None, help="initial weights: your own state dict (any layout) or a updp "
                                               "checkpoint; with --epochs 0 it is evaluated and saved as is")
    epochs: int = option(10, help="training epochs (0 with --checkpoint: take it as the baseline)")
    batch_size: int = option(128, help="per process")
    lr: float = option(2e-3, help="AdamW peak learning rate")
    weight_decay: float = option(0.05, help="AdamW decoupled weight decay (weights with ndim >= 2)")
    warmup_epochs: float = option(1.0, help="linear warm-up, then cosine to 0")
    label_smoothing: float = option(0.1, help="of the cross-entropy")
    seed: int = option(0, help="seeds the initial weights, the data order and the augmentation")

    def __post_init__(self) -> None:
        self.input_size = _input_size(self.input_size, "--input-size")
        _check_training(self)
        _at_least(self.epochs, 0, "--epochs")
        if self.epochs == 0 and not self.checkpoint:
            raise InputError("--epochs 0 takes a --checkpoint as the baseline: give one, or train >= 1 epoch")


@dataclass(kw_only=True)
class SearchConfig(TrainingRunOptions):
    """`updp search`: supernet training + subnet search from a trained baseline (UPDP steps 1-2)."""

    checkpoint: str = option(help="the trained baseline (from `updp train`, or your own with a model_spec)",
                             positional=True)
    data: str = option(help=DATA_HELP, metavar="SPEC")
    out: str = option(help="plan .json (written atomically; .lut/.supernet/.search beside it)")
    target_blocks: int | None = option(None, help="prune exactly K blocks (no target: a third of the prunable "
                                                  "blocks)", metavar="K")
    target_speedup: float | None = option(None, help="or: a predicted ORT speedup >= S", metavar="S")
    epochs: int = option(2, help="supernet training epochs (0: score the baseline's weights as they are)")
    method: str = option("auto", choices=SEARCH_METHODS,
                         help="exhaustive when the space has at most --exhaustive-limit subnets (auto)")
    candidates: list[int] | None = option(None, help="restrict the search to these blocks", parse="blocks",
                                          metavar="i,j,...")
    seed: int = option(0, help="training, sampling, search and random-pick seed")
    max_evals: int = option(60, help="evolutionary budget of scored subnets")
    population: int = option(16, help="evolutionary population (and children per generation)")
    parents: int = option(6, help="top subnets that breed")
    exhaustive_limit: int = option(64, help="largest space searched exhaustively")
    random_picks: int = option(3, help="random subnets of the same size to compare with")
    recalibrate: str = option("all", choices=RECALIBRATE, help="BN recalibration before scoring each candidate")
    calib_batches: int = option(8, help="training batches of each candidate's BN recalibration")
    supernet_calib_batches: int = option(10, help="training batches of the supernet's initial BN calibration")
    batch_size: int = option(128, help="supernet training batch (per process)")
    lr: float = option(1e-3, help="supernet learning rate (lower than from scratch: the weights start trained)")
    weight_decay: float = option(0.05, help="supernet weight decay")
    warmup_epochs: float = option(0.5, help="supernet warm-up epochs")
    label_smoothing: float = option(0.1, help="supernet label smoothing")
    kd_alpha: float = option(0.5, help="distillation weight (from the frozen baseline)")
    kd_temperature: float = option(1.0, help="distillation temperature")
    supernet: str | None = option(None, help="where to save (or, with --reuse-supernet, load) the supernet")
    reuse_supernet: bool = option(False, help="load --supernet instead of training one")
    lut: str | None = option(None, help="reuse a saved latency table (.lut.json)")
    threads: int = option(DEFAULT_THREADS, help="ORT threads for the latency table and measurement")
    bench_repeats: int = option(50, help="interleaved rounds of the latency table and the measurement")
    profile_rounds: int = option(15, help="profiling rounds per graph for the latency table")
    measure: bool = option(True, help="skip the full-model measurement of the winner", flag="--no-measure")
    top_n: int = option(10, help="scored subnets recorded in the plan", cli=False)

    def __post_init__(self) -> None:
        if self.target_blocks is not None and self.target_speedup is not None:
            raise InputError("updp search: give --target-blocks K or --target-speedup S, not both")
        _choice(self.method, SEARCH_METHODS, "--method")
        _choice(self.recalibrate, RECALIBRATE, "--recalibrate")
        self.candidates = _blocks(self.candidates, "--candidates")
        _check_training(self)
        _at_least(self.epochs, 0, "--epochs")
        _at_least(self.random_picks, 0, "--random-picks")
        _at_least(self.threads, 1, "--threads")


@dataclass(kw_only=True)
class PruneConfig(TrainingRunOptions):
    """`updp prune`: progressive subnet training (UPDP step 3) of a trained baseline."""

    checkpoint: str = option(help="baseline checkpoint from `updp train`")
    data: str = option(help=DATA_HELP, metavar="SPEC")
    out: str = option(help="the pruned checkpoint (it carries its plan), written after every epoch")
    model: str | None = option(None, help="model name, checked against the one the checkpoint records")
    plan: Any = option(None, help="a saved PrunePlan (e.g. from the search); the Python API also takes the plan",
                       metavar="PLAN.json")
    blocks: list[int] | None = option(None, help="prune exactly these block indices", parse="blocks",
                                      metavar="i,j,...")
    prune: int | None = option(None, help="N blocks by the default rule (as `updp export --prune`)", metavar="N")
    schedule: str = option("linear", choices=SCHEDULES, help="lambda ramp shape")
    ramp_fraction: float = option(0.5, help="fraction of the steps over which lambda goes 0 -> 1")
    method: str = option("updp", choices=PRUNE_METHODS,
                         help="how the blocks become linear: updp (progressive lambda), abrupt (lambda = 1 at "
                              "once, DepthShrinker-style), layerfold (learned slopes, Layer-Folding), drop (remove "
                              "the blocks; identity-shortcut blocks only)")
    layerfold_penalty: float = option(0.25, help="layerfold: weight of the penalty |1 - alpha^2| per alpha")
    layerfold_alpha_lr: float = option(0.05, help="layerfold: peak learning rate of the alphas (own AdamW group)")
    kd: bool = option(True, help="ablation: no distillation from the baseline", flag="--no-kd")
    no_supernet: bool = option(False, help="ablation: take the blocks from --blocks/--prune without a supernet "
                                           "search (refuses --plan, which comes from the search)")
    kd_alpha: float = option(0.5, help="distillation weight")
    kd_temperature: float = option(1.0, help="distillation temperature")
    swap_at_start: bool = option(False, help="LN -> BN already at lambda = 0 (ablation)")
    calib_batches: int = option(20, help="batches to calibrate the new BNs")
    epochs: int = option(6, help="progressive training epochs")
    batch_size: int = option(128, help="per process")
    lr: float = option(1e-3, help="AdamW peak learning rate")
    weight_decay: float = option(0.05, help="AdamW decoupled weight decay")
    warmup_epochs: float = option(0.0, help="linear warm-up, then cosine to 0")
    label_smoothing: float = option(0.1, help="of the cross-entropy")
    seed: int = option(0, help="seeds the data order, the augmentation and the BN calibration batches")

    def __post_init__(self) -> None:
        self.blocks = _blocks(self.blocks, "--blocks")
        if sum(x is not None for x in (self.plan, self.blocks, self.prune)) != 1:
            raise InputError("choose the blocks with exactly one of --plan, --blocks, --prune N")
        if self.no_supernet and self.plan is not None:
            raise InputError("--no-supernet takes the blocks from --blocks or --prune; --plan comes from the search")
        _choice(self.method, PRUNE_METHODS, "--method")
        if self.method != "layerfold":
            for name in ("layerfold_penalty", "layerfold_alpha_lr"):
                if getattr(self, name) != field_default(type(self), name):
                    raise InputError(f"--{name.replace('_', '-')} applies to --method layerfold only "
                                     f"(this run's method is {self.method})")
        _choice(self.schedule, SCHEDULES, "--schedule")
        _check_training(self)
        _at_least(self.epochs, 1, "--epochs")


QUANTIZE_FORMATS = ("int8",)
CALIB_SOURCES = ("data", "random")
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Operators kept in float by default in an int8 file, for all four families: LayerNormalization (a
# ViT's and ConvNeXt's; it divides by a per-token deviation that 8 bits represent badly) and Softmax
# (attention probabilities span orders of magnitude). The CNN families have neither, so nothing of
# theirs is kept.
DEFAULT_KEEP_FLOAT = ("LayerNormalization", "Softmax")
# The largest val-accuracy drop (points) an int8 file may show against its float file before the
# export refuses to write it.
DEFAULT_MAX_ACCURACY_DROP = 1.0
# The options that only the int8 file reads.
INT8_ONLY = ("calib", "calib_method", "calib_images", "calib_seed", "per_channel", "keep_float", "max_accuracy_drop")


def parse_op_types(value: Any) -> tuple[str, ...]:
    """`--keep-float LayerNormalization,Softmax` (or a list); `none` keeps nothing in float."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items if str(v).strip()]
    if [v.lower() for v in items] == ["none"]:
        return ()
    for v in items:
        if not v.isidentifier():
            raise InputError(f"--keep-float expects ONNX operator types (e.g. Softmax,LayerNormalization), got {v!r}")
    return tuple(dict.fromkeys(items))


@dataclass(kw_only=True)
class PrecisionOptions:
    """The int8 and float16 files an export (or optimize) writes beside its float32 file.

    `--quantize int8` writes `OUT` with `.int8.onnx` for `.onnx`, `--fp16` one with `.fp16.onnx`;
    the float32 file is written too, since it is what the int8 file's accuracy is measured against.
    """

    quantize: str | None = option(None, choices=QUANTIZE_FORMATS,
                                  help="also write OUT.int8.onnx: ONNX Runtime static QDQ quantization (int8 "
                                       "weights per channel, uint8 activations), calibrated on --data's train split")
    data: str | None = option(None, help="calibration images (train split) and the accuracy check (val split) of the "
                                         "int8/fp16 files: " + DATA_HELP, metavar="SPEC")
    split_seed: int = option(0, help="seed of the train/holdout/val split of --data")
    calib: str = option("data", choices=CALIB_SOURCES,
                        help="calibration inputs: the train split of --data, or random inputs (latency what-ifs "
                             "only: recorded as such in the file, its accuracy means nothing)")
    calib_method: str = option("minmax", choices=CALIB_METHODS, help="how activation ranges are chosen")
    calib_images: int = option(256, help="calibration images drawn from the train split")
    calib_seed: int = option(0, help="seed of the calibration images' draw")
    per_channel: bool = option(True, help="int8 weights per tensor instead of per output channel",
                               flag="--per-tensor")
    keep_float: tuple[str, ...] = option(DEFAULT_KEEP_FLOAT, metavar="OP,OP|none",
                                         help="operator types left in float in the int8 file")
    max_accuracy_drop: float = option(DEFAULT_MAX_ACCURACY_DROP, metavar="POINTS",
                                      help="refuse (exit 4, nothing written) an int8 file whose val accuracy is more "
                                           "than this many points below the float file's (with --data)")
    fp16: bool = option(False, help="also write OUT.fp16.onnx: float16 weights and compute (onnxconverter-common), "
                                    "verified against the float32 file with float16's tolerance")
    fp16_keep_io: bool = option(False, help="the fp16 file keeps float32 inputs and outputs (casts at the edges)")

    def __post_init__(self) -> None:
        _choice(self.calib, CALIB_SOURCES, "--calib")
        _choice(self.calib_method, CALIB_METHODS, "--calib-method")
        if self.quantize is not None:
            _choice(self.quantize, QUANTIZE_FORMATS, "--quantize")
        self.keep_float = parse_op_types(self.keep_float)
        _at_least(self.calib_images, 1, "--calib-images")
        _at_least(self.max_accuracy_drop, 0, "--max-accuracy-drop")
        if self.fp16_keep_io and not self.fp16:
            raise InputError("--fp16-keep-io applies to --fp16 only")
        if self.quantize is None:
            for f in dataclasses.fields(PrecisionOptions):
                if f.name in INT8_ONLY and getattr(self, f.name) != field_default(PrecisionOptions, f.name):
                    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                    raise InputError(f"{flag} applies to --quantize int8 only")
        if self.data and not self.writes_derived_files:
            raise InputError("--data calibrates and checks the int8/fp16 files (--quantize int8, --fp16); for "
                             "the float file's accuracy use `updp eval FILE --data SPEC`")
        if self.quantize is not None and self.calib == "data" and not self.data:
            raise InputError("--quantize int8 needs calibration images: give --data SPEC (its train split is used), "
                             "or --calib random for a latency what-if (accuracy not measured)")

    @property
    def writes_derived_files(self) -> bool:
        return self.quantize is not None or self.fp16


@dataclass(kw_only=True)
class ExportConfig(PrecisionOptions):
    """`updp export`: export to ONNX, merge the pruned blocks, verify, write (and int8/fp16 files of it)."""

    out: str = option(help="output .onnx path (written atomically)")
    model: str | None = option(None, help=MODEL_HELP + " (default: the checkpoint's)", positional=True,
                               nargs="?")
    checkpoint: str | None = option(None, help="weights (loaded with weights_only=True); a pruned checkpoint "
                                               "carries its plan")
    blocks: list[int] | None = option(None, help="prune exactly these block indices", parse="blocks",
                                      metavar="i,j,...")
    prune: int | None = option(None, help="prune N blocks chosen by the default rule (largest estimated saving)",
                               metavar="N")
    input_size: tuple[int, int] | None = option(None, help="input resolution (default: the model's or the "
                                                           "checkpoint's)", parse="input_size", metavar="S|HxW")
    num_classes: int | None = option(None, help="classifier size (default: the model's or the checkpoint's)")
    model_kwargs: dict[str, Any] = option(factory=dict, help="constructor argument, e.g. patch_size=4 (repeatable)",
                                          flag="--model-kwarg", parse="kwargs", metavar="KEY=VALUE")
    batch: int = option(1, help="export batch size")
    dynamic_batch: bool = option(False, help="make the batch axis symbolic")
    optimize: bool = option(True, help="skip the merge passes (plain export)", flag="--no-optimize")
    verify: bool = option(True, help="skip the ORT equivalence check (not advised)", flag="--no-verify")
    polish: bool = option(True, help="skip the final onnxsim polish", flag="--no-onnxsim")
    opset: int = option(DEFAULT_OPSET, help="ONNX opset")
    exporter: str = option(DEFAULT_EXPORTER, choices=EXPORTERS,
                           help="torch exporter: torchscript (default: faster here) or dynamo (torch.export-based, "
                                "torch's own default; needs onnxscript)")
    seed: int = option(0, help="seed for random weights/statistics")

    def __post_init__(self) -> None:
        if self.model is None and self.checkpoint is None:
            raise InputError("updp export: give MODEL, or a --checkpoint that records its model")
        if self.blocks is not None and self.prune is not None:
            raise InputError("updp export: --blocks and --prune choose the blocks two ways: give one")
        self.blocks = _blocks(self.blocks, "--blocks")
        self.input_size = _input_size(self.input_size, "--input-size")
        _at_least(self.batch, 1, "--batch")
        _at_least(self.prune, 1, "--prune")
        _choice(self.exporter, EXPORTERS, "--exporter")
        super().__post_init__()


@dataclass(kw_only=True)
class OptimizeConfig(PrecisionOptions):
    """`updp optimize`: updp's passes on any ONNX file (and int8/fp16 files of the result)."""

    input: str = option(help="input .onnx", positional=True)
    out: str = option(help="output .onnx path (written atomically)")
    verify: bool = option(True, help="skip the ORT equivalence check (not advised)", flag="--no-verify")
    polish: bool = option(True, help="skip the final onnxsim polish", flag="--no-onnxsim")
    fold_layernorm: bool = option(False, help="also fold LayerNorm affines into the next linear (off: ORT "
                                              "applies them for free)")
    inputs: str | None = option(None, help="inputs for the check: an .npz of arrays by input name, or a folder "
                                           "of onnx test data (input_0.pb, ...); default: generated, valid for "
                                           "the graph", metavar="F.npz|DIR")


@dataclass
class EvalConfig:
    """`updp eval`: accuracy of an ONNX file (ONNX Runtime) or a checkpoint (torch) on a data split."""

    file: str = option(help="F.onnx or a checkpoint F.pt", positional=True)
    data: str = option(help=DATA_HELP, metavar="SPEC")
    split: str = option("val", choices=SPLITS, help="the data split")
    batch_size: int = option(256, help="images per run")
    input_size: tuple[int, int] | None = option(None, help="override (default: from the file)", parse="input_size",
                                                metavar="S|HxW")
    split_seed: int = option(0, help="seed of the train/holdout/val split")
    model: str | None = option(None, help="model name (only for a plain state dict)")

    def __post_init__(self) -> None:
        _choice(self.split, SPLITS, "--split")
        self.input_size = _input_size(self.input_size, "--input-size")
        _at_least(self.batch_size, 1, "--batch-size")


@dataclass
class BenchConfig:
    """`updp bench`: interleaved A/B latency of ONNX files with ONNX Runtime."""

    models: list[str] = option(help="ONNX files; the first is the reference", positional=True, nargs="+")
    threads: int = option(DEFAULT_THREADS, help="ORT intra-op threads")
    opt_levels: list[str] = option(factory=lambda: ["disable", "all"], flag="--opt-level", nargs="+",
                                   choices=tuple(OPT_LEVELS), help="ORT graph optimization level(s)")
    batch: list[int] | None = option(None, nargs="+",
                                     help="batch size(s), one table each (default: the files' own fixed batch, 1 "
                                          "for a symbolic one); a file exported at a fixed batch is made to run at "
                                          "the others and checked to compute the same per sample")
    dims: dict[str, int] = option(factory=dict, flag="--dim", parse="kwargs", metavar="NAME=VALUE",
                                  help="value of a symbolic input dimension other than the batch, e.g. h=224 "
                                       "(repeatable; for files exported with a dynamic image size)")
    warmup: int = option(DEFAULT_WARMUP, help="untimed runs per session")
    repeats: int = option(DEFAULT_REPEATS, help="interleaved timed rounds")
    device: str = option("cpu", choices=ORT_DEVICES, help="ORT execution provider: cpu, cuda (onnxruntime-gpu), "
                                                          "tensorrt (TensorRT, CUDA and CPU behind it)")
    save: str | None = option(None, help="also write the JSON report to a file (atomically)", metavar="F.json")
    max_seconds: float | None = option(None, help="time budget of the timed rounds")
    names: list[str] | None = option(None, help="labels of the files in the report (default: their file names)",
                                     cli=False)

    def __post_init__(self) -> None:
        self.models = [str(m) for m in self.models]
        if not self.models:
            raise InputError("updp bench: give at least one ONNX file")
        if self.names is not None and len(self.names) != len(self.models):
            raise InputError(f"updp bench: {len(self.names)} names for {len(self.models)} files")
        self.opt_levels = [str(v) for v in self.opt_levels]
        for level in self.opt_levels:
            _choice(level, tuple(OPT_LEVELS), "--opt-level")
        _choice(self.device, ORT_DEVICES, "--device")
        _at_least(self.threads, 1, "--threads")
        self.batch = parse_batches(self.batch)
        self.dims = dict(self.dims)
        for name, value in self.dims.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--dim {name}={value}: a symbolic dimension takes a positive integer")


@dataclass
class DemoConfig:
    """`updp demo`: the embedded default."""

    out_dir: str | None = option(None, help="run directory (default runs/demo, or runs/demo_latency)")
    quick: bool = option(False, help="smaller budgets (a mechanics check, not a result)")
    latency_only: bool = option(False, help="only the export -> merge -> verify -> bench what-if of ConvNeXt-T P6 "
                                            "(random weights)")


WORKFLOW_CONFIGS: dict[str, type] = {
    "blocks": BlocksConfig, "train": TrainConfig, "search": SearchConfig, "prune": PruneConfig,
    "export": ExportConfig, "optimize": OptimizeConfig, "eval": EvalConfig, "bench": BenchConfig,
    "demo": DemoConfig,
}

__all__ = ["BenchConfig", "BlocksConfig", "DemoConfig", "EvalConfig", "ExportConfig", "OptimizeConfig", "PruneConfig",
           "SearchConfig", "TrainConfig", "TrainingRunOptions", "WORKFLOW_CONFIGS", "field_default", "option",
           "PrecisionOptions", "ordered_fields", "parse_batches", "parse_op_types", "pick"]
