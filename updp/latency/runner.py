"""One latency runner for every number updp reports, and the record of how it was measured.

A latency figure means nothing without its setup: the providers, the intra-op threads, the graph
optimization level, the warm-up, the repeats and the machine. `LatencySetup` holds all of them plus
the library versions, and every `BenchReport` carries its setup, so a number never travels alone.

Method (after timm `benchmark.py`, adapted for A/B comparison):

* One ONNX Runtime session per (model, optimization level), all built by `updp.ort.make_session`.
* Every model gets the same random feed (inputs must have the same shapes and dtypes).
* Each session is warmed up, then the timed runs are interleaved: in round r every model runs once,
  starting from model r mod M. Slow drifts of the machine (frequency scaling, thermal throttling,
  a noisy neighbour) then hit all models alike instead of whichever happened to run last, and the
  rotation removes a fixed "runs right after model X" position effect.
* Each run is timed with `time.perf_counter_ns` around `session.run`; that includes the Python
  binding overhead and, on CUDA, the host/device copies of inputs and outputs (no IO binding).
* Statistics per model: median, p90, mean, min, n. Speedup is the ratio of medians to the first model
  at the same optimization level (and the ratio of p90s, which is what tail-latency budgets see).

Report ORT_DISABLE_ALL and ORT_ENABLE_ALL side by side (`opt_levels=["disable", "all"]`): ORT already
folds Conv+BN and fuses activations at its basic/extended levels, so only a speedup that survives
ORT_ENABLE_ALL is a gain of ours.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from updp.core.constants import DEFAULT_REPEATS, DEFAULT_WARMUP, OPT_LEVELS, ORT_DEVICES
from updp.core.errors import InputError, first_line
from updp.core.io import write_text_atomic
from updp.ort import default_providers, input_specs, make_session, random_feed

logger = logging.getLogger(__name__)



def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                # x86: "model name"; some ARM kernels: "Model" or "Hardware"
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ort_version() -> str:
    return ort.__version__


@dataclass
class LatencySetup:
    """How latency is measured, and on what. Recorded verbatim in every report.

    Attributes:
        device: "cpu" or "cuda".
        providers: ORT execution providers; empty means `updp.ort.default_providers(device)`, which
            raises `InputError` when CUDA is asked for but unavailable.
        threads: ORT intra-op threads; None lets ORT choose (one per physical core). Inter-op
            threads are always 1 (sequential execution).
        opt_level: graph optimization level (disable, basic, extended, all) used when `benchmark`
            is not given `opt_levels`, and by `profile_nodes`.
        warmup: untimed runs per session before timing starts.
        repeats: timed runs per model and optimization level (fewer if a time budget runs out).
        batch: value for a symbolic first input dimension.
        dims: values for other symbolic input dimensions, by name (`{"h": 224, "w": 224}`), for a
            file exported with a dynamic image size; without one such a file is refused.
        spinning: ORT's `session.intra_op.allow_spinning`. Off by default here: with interleaved
            A/B rounds, the idle threads of the session that just ran would otherwise keep
            busy-waiting on the cores the next session needs, which adds noise and order bias.
        onnxruntime_version, onnx_version, numpy_version, python, platform, cpu_model, cpu_count:
            the environment, filled in automatically.
    """

    device: str = "cpu"
    providers: list[str] = field(default_factory=list)
    threads: int | None = None
    opt_level: str = "all"
    warmup: int = DEFAULT_WARMUP
    repeats: int = DEFAULT_REPEATS
    batch: int = 1
    dims: dict[str, int] = field(default_factory=dict)
    spinning: bool = False
    onnxruntime_version: str = field(default_factory=_ort_version)
    onnx_version: str = field(default_factory=lambda: onnx.__version__)
    numpy_version: str = field(default_factory=lambda: np.__version__)
    python: str = field(default_factory=lambda: platform.python_version())
    platform: str = field(default_factory=platform.platform)
    cpu_model: str = field(default_factory=cpu_model)
    cpu_count: int | None = field(default_factory=os.cpu_count)

    def __post_init__(self) -> None:
        if self.device not in ORT_DEVICES:
            raise InputError(f"unknown device {self.device!r}; choose from {', '.join(ORT_DEVICES)}")
        if self.opt_level not in OPT_LEVELS:
            raise InputError(f"unknown optimization level {self.opt_level!r}; "
                             f"choose from {', '.join(OPT_LEVELS)}")
        if self.warmup < 0 or self.repeats < 1 or self.batch < 1:
            raise InputError(f"need warmup >= 0, repeats >= 1, batch >= 1 "
                             f"(got warmup={self.warmup}, repeats={self.repeats}, batch={self.batch})")
        self.dims = dict(self.dims)
        bad = {k: v for k, v in self.dims.items() if not k or isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise InputError(f"symbolic dimensions take positive integers by name, e.g. h=224 (got {bad})")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1 or None for ORT's default (got {self.threads})")
        if not self.providers:
            self.providers = default_providers(self.device)
        self.providers = list(self.providers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencySetup:
        """Rebuild a recorded setup as is (the environment fields keep their recorded values)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """One line: the settings that decide the numbers."""
        threads = self.threads if self.threads is not None else f"ort-default(cpus={self.cpu_count})"
        return (f"providers={','.join(self.providers)} threads={threads} warmup={self.warmup} "
                f"repeats={self.repeats} batch={self.batch} "
                + "".join(f"{k}={v} " for k, v in self.dims.items())
                + f"spinning={'on' if self.spinning else 'off'} "
                f"ort={self.onnxruntime_version}")


@dataclass
class ModelTiming:
    """Timing of one model at one optimization level. Times in milliseconds.

    `speedup` is median(first model) / median(this model) at the same optimization level, so > 1
    means faster than the first model; `p90_speedup` is the same ratio of p90s.
    """

    model: str
    opt_level: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    n: int
    speedup: float = 1.0
    p90_speedup: float = 1.0

    @classmethod
    def from_samples(cls, model: str, opt_level: str, samples_ns: list[int]) -> ModelTiming:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        return cls(model=model, opt_level=opt_level, median_ms=float(np.median(ms)),
                   p90_ms=float(np.percentile(ms, 90)), mean_ms=float(ms.mean()),
                   min_ms=float(ms.min()), n=int(ms.size))


@dataclass
class BenchReport:
    """Results per (model, optimization level), with the setup that produced them."""

    setup: LatencySetup
    opt_levels: list[str]
    models: list[str]
    results: list[ModelTiming]
    max_seconds: float | None = None

    def get(self, model: str, opt_level: str | None = None) -> ModelTiming:
        level = opt_level or self.opt_levels[0]
        for r in self.results:
            if r.model == model and r.opt_level == level:
                return r
        raise KeyError(f"no result for model {model!r} at opt level {level!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the setup, then one flat record per (model, opt level)."""
        return {
            "setup": self.setup.to_dict(),
            "opt_levels": list(self.opt_levels),
            "models": list(self.models),
            "max_seconds": self.max_seconds,
            "results": [dataclasses.asdict(r) for r in self.results],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        return cls(setup=LatencySetup.from_dict(d["setup"]), opt_levels=list(d["opt_levels"]),
                   models=list(d["models"]), results=[ModelTiming(**r) for r in d["results"]],
                   max_seconds=d.get("max_seconds"))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; written atomically to `path` if given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text_atomic(Path(path), text + "\n")
        return text

    def format_table(self) -> str:
        """Plain-text table, one row per (opt level, model), under a header recording the setup."""
        s = self.setup
        header = (f"# latency: {s.describe()} opt_levels={','.join(self.opt_levels)}"
                  + (f" max_seconds={self.max_seconds:g}" if self.max_seconds else "")
                  + f"\n# machine: {s.cpu_model} ({s.cpu_count} cpus), {s.platform}, python {s.python}")
        first = self.models[0]
        cols = ["model", "opt level", "median ms", "p90 ms", f"speedup vs {first}", "p90 speedup", "n"]
        rows = [[r.model, OPT_LEVELS[r.opt_level], f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}",
                 f"{r.speedup:.3f}x", f"{r.p90_speedup:.3f}x", str(r.n)]
                for level in self.opt_levels for r in self.results if r.opt_level == level]
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
        # text columns left-aligned, numbers right-aligned
        def fmt(row: list[str]) -> str:
            return "  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        lines = [header, fmt(cols), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows]
        return "\n".join(lines)


ModelSpec = tuple[str, "onnx.ModelProto | str | os.PathLike"]


def _check_models(models: list[ModelSpec]) -> None:
    if not models:
        raise InputError("benchmark needs at least one model")
    names = [name for name, _ in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"model names must be unique; repeated: {', '.join(dupes)}")
    for name, model in models:
        if not isinstance(model, onnx.ModelProto) and not Path(model).is_file():
            raise InputError(f"model {name!r}: ONNX file not found: {model}")


def _dtype_kind(dtype) -> str:
    """What must match between the inputs of compared models: the dtype, except that float widths
    may differ (a float16 file of a float32 model takes the same images, rounded)."""
    return "float" if np.issubdtype(dtype, np.floating) else np.dtype(dtype).name


def _shared_feeds(names: list[str], sessions: list, batch: int, seed: int,
                  dims: dict[str, int] | None = None) -> list[dict[str, np.ndarray]]:
    """One random feed, reused for every session (matched by input position, names may differ).

    A float input is drawn once and given to each model in its own float type (`random_feed`), so
    a float16-input file is timed on the float32 file's values rounded to float16.
    """
    specs = [input_specs(s, batch, dims) for s in sessions]
    symbolic = {d for s in sessions for inp in s.get_inputs() for d in inp.shape if isinstance(d, str)}
    leading = {inp.shape[0] for s in sessions for inp in s.get_inputs() if inp.shape and isinstance(inp.shape[0], str)}
    if set(dims or {}) & leading:  # it would override the batch the report records
        raise InputError(f"{', '.join(sorted(set(dims) & leading))} is the batch axis: give --batch, not --dim")
    unknown = sorted(set(dims or {}) - symbolic)
    if unknown:  # a misspelt name would otherwise be ignored, and the file timed at other sizes
        raise InputError(f"no input has a symbolic dimension named {', '.join(map(repr, unknown))} "
                         f"(the files' symbolic dimensions: {', '.join(sorted(symbolic)) or 'none'})")
    if batch != 1:
        _check_batch_axis(names, sessions, batch)
    signature = [[(shape, _dtype_kind(dtype)) for _, shape, dtype in sp] for sp in specs]
    if any(sig != signature[0] for sig in signature[1:]):
        def describe(sp: list) -> str:
            return ", ".join(f"{nm}{list(shape)} {np.dtype(dt).name}" for nm, shape, dt in sp)

        detail = "; ".join(f"{n}: {describe(sp)}" for n, sp in zip(names, specs, strict=True))
        raise InputError("models to compare must take inputs of the same shapes and dtypes (float widths may "
                         f"differ), but they differ: {detail}")
    drawn = list(random_feed([(nm, shape, np.float64 if kind == "float" else dtype)
                              for (nm, shape, dtype), (_, kind) in zip(specs[0], signature[0], strict=True)],
                             seed).values())
    return [{nm: v.astype(dt, copy=False) for (nm, _, dt), v in zip(sp, drawn, strict=True)} for sp in specs]


def _check_batch_axis(names: list[str], sessions: list, batch: int) -> None:
    """A batch other than 1 needs a symbolic first axis: a model fixed at batch 1 would be timed at
    batch 1 and reported at `batch`."""
    for name, session in zip(names, sessions, strict=True):
        for inp in session.get_inputs():
            first = inp.shape[0] if inp.shape else None
            if isinstance(first, int) and first != batch:
                raise InputError(f"model {name!r}: input {inp.name!r} has a fixed batch of {first}, so it cannot be "
                                 f"timed at batch {batch}; export it with `updp export --dynamic-batch` or "
                                 f"`--batch {batch}`")


def _cannot_run(name: str, exc: Exception) -> InputError:
    """A model ONNX Runtime loads but cannot run (an attribute its kernel refuses, no outputs, a
    tensor it cannot allocate), named in one line."""
    reason = first_line(exc)
    return InputError(f"ONNX Runtime cannot run model {name!r} on random inputs: {reason}")


def _warm_up(names: list[str], sessions: list, feeds: list[dict], warmup: int) -> None:
    for name, sess, feed in zip(names, sessions, feeds, strict=True):
        try:
            for _ in range(warmup):
                sess.run(None, feed)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidArgument, ...)
            raise _cannot_run(name, exc) from None


def _time_interleaved(sessions: list, feeds: list[dict], repeats: int, budget_s: float | None,
                      names: list[str] | None = None) -> list[list[int]]:
    """Timed runs, one per model per round, starting model rotating; returns ns samples per model.

    Raises:
        InputError: a session fails to run (`_cannot_run`; `names` name the models).
    """
    m = len(sessions)
    samples: list[list[int]] = [[] for _ in range(m)]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a timed run would land on whichever model was unlucky
    try:
        start = time.perf_counter()
        for r in range(repeats):
            for k in range(m):
                i = (r + k) % m
                sess, feed = sessions[i], feeds[i]
                t0 = time.perf_counter_ns()
                sess.run(None, feed)
                samples[i].append(time.perf_counter_ns() - t0)
            if budget_s is not None and time.perf_counter() - start > budget_s and r + 1 < repeats:
                logger.info("time budget of %.1fs reached after %d of %d rounds", budget_s, r + 1, repeats)
                break
    except Exception as exc:  # ORT raises its own exception types; `i` is the model that failed
        raise _cannot_run(names[i] if names else f"#{i}", exc) from None
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def benchmark(models: list[ModelSpec], setup: LatencySetup | None = None, *,
              opt_levels: list[str] | None = None, max_seconds: float | None = None,
              seed: int = 0) -> BenchReport:
    """Time models A/B-interleaved under one recorded setup.

    Args:
        models: (name, ModelProto or path) pairs; the first is the baseline for speedups.
        setup: how to measure; defaults to `LatencySetup()`.
        opt_levels: run the whole comparison at each of these optimization levels (e.g.
            ["disable", "all"]); defaults to `[setup.opt_level]`.
        max_seconds: time budget for the timed rounds of the whole call, split evenly over the
            optimization levels. When a level's share runs out, its remaining rounds are dropped
            (every model keeps at least one timed run; `n` records what was done). Warm-up and
            session creation are not counted.
        seed: seed of the shared random input.

    Raises:
        InputError: no models, duplicate names, unreadable models, unknown opt level, or inputs
            whose shapes or dtypes differ between models.
    """
    setup = setup or LatencySetup()
    levels = list(opt_levels) if opt_levels else [setup.opt_level]
    for level in levels:
        if level not in OPT_LEVELS:
            raise InputError(f"unknown optimization level {level!r}; choose from {', '.join(OPT_LEVELS)}")
    if len(set(levels)) != len(levels):
        raise InputError(f"optimization levels repeat: {levels}")
    if max_seconds is not None and max_seconds <= 0:
        raise InputError(f"max_seconds must be positive (got {max_seconds})")
    _check_models(models)
    names = [name for name, _ in models]
    budget = max_seconds / len(levels) if max_seconds is not None else None

    results: list[ModelTiming] = []
    for level in levels:
        # Sessions of one level at a time: comparable memory pressure, and big models x 4 levels
        # would not all fit at once.
        sessions = [make_session(model, opt_level=level, threads=setup.threads, providers=setup.providers,
                                 spinning=setup.spinning)
                    for _, model in models]
        feeds = _shared_feeds(names, sessions, setup.batch, seed, setup.dims)
        _warm_up(names, sessions, feeds, setup.warmup)
        samples = _time_interleaved(sessions, feeds, setup.repeats, budget, names)
        timings = [ModelTiming.from_samples(n, level, s) for n, s in zip(names, samples, strict=True)]
        base = timings[0]
        for t in timings:
            t.speedup = base.median_ms / t.median_ms if t.median_ms > 0 else float("nan")
            t.p90_speedup = base.p90_ms / t.p90_ms if t.p90_ms > 0 else float("nan")
        results += timings
        logger.info("opt level %s: %s", level,
                    ", ".join(f"{t.model} {t.median_ms:.3f} ms" for t in timings))
        del sessions
    return BenchReport(setup=setup, opt_levels=levels, models=names, results=results,
                       max_seconds=max_seconds)


__all__ = ["LatencySetup", "ModelTiming", "BenchReport", "benchmark", "cpu_model"]

