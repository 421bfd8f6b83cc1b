"""`updp bench`: interleaved A/B latency of ONNX files under one recorded setup; and the per-block
profile comparison of a baseline and its pruned export (the report of `updp run`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from updp.core.errors import InputError, UpdpError
from updp.core.io import check_outputs, scratch_dir, write_text_atomic
from updp.exporter.rebatch import at_batch, fixed_batch
from updp.exporter.scopes import scopes_of
from updp.exporter.torch_export import get_metadata
from updp.latency.profile import median_block_us, profile_blocks_alternating
from updp.latency.runner import BenchReport, LatencySetup, ModelTiming, benchmark
from updp.ort import load_onnx, refuse_overwriting_data
from updp.verify import check_equivalence
from updp.workflows.config import BenchConfig, ExportConfig


@dataclass
class BenchSweep:
    """One `BenchReport` per batch size (each with its own recorded setup), in the order asked."""

    reports: list[BenchReport]
    rebatched: dict[str, int] = field(default_factory=dict)  # file name -> the fixed batch it was exported at
    reexported: dict[str, str] = field(default_factory=dict)  # file name -> how it was exported again

    @property
    def batches(self) -> list[int]:
        return [r.setup.batch for r in self.reports]

    def report(self, batch: int | None = None) -> BenchReport:
        """The report of `batch` (default: the first batch asked for)."""
        if batch is None:
            return self.reports[0]
        for r in self.reports:
            if r.setup.batch == batch:
                return r
        raise KeyError(f"no report for batch {batch} (measured: {self.batches})")

    def get(self, model: str, opt_level: str | None = None, batch: int | None = None) -> ModelTiming:
        return self.report(batch).get(model, opt_level)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "rebatched": dict(self.rebatched), "reexported": dict(self.reexported),
                "reports": [r.to_dict() for r in self.reports]}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text_atomic(Path(path), text + "\n")
        return text

    def format_table(self) -> str:
        parts = []
        for r in self.reports:
            parts.append(f"## batch {r.setup.batch}\n{r.format_table()}")
        for k, b in self.rebatched.items():
            how = (f"exported again ({self.reexported[k]}) and checked against the file" if k in self.reexported
                   else "its batch made symbolic and checked per sample against the file")
            parts.append(f"# {k} is exported at a fixed batch of {b}; at other batches: {how}")
        return "\n\n".join(parts)


def bench(cfg: BenchConfig) -> BenchSweep:
    """Time `cfg.models` interleaved at each optimization level and each batch size; speedups
    relative to the first model.

    A file exported at a fixed batch is run at the other batches through `updp.exporter.rebatch`
    (its batch made symbolic, checked per sample against the file as it is), or refused with what
    to do instead.

    Raises:
        InputError: a missing or malformed file (before any timing starts), bad settings, a file
            that cannot run at a batch asked for.
    """
    check_outputs([cfg.save], list(cfg.models))
    refuse_overwriting_data([cfg.save], list(cfg.models))
    names, protos = [], []
    for k, p in enumerate(cfg.models):
        proto = load_onnx(p)  # one-line error for a missing or malformed file before any timing starts
        name = cfg.names[k] if cfg.names else Path(p).name
        if name in names:
            name = str(p)
        if name in names:
            raise InputError(f"{p} is given twice")
        names.append(name)
        protos.append(proto)
    sweep = BenchSweep(reports=[])
    dynamic: dict[str, onnx.ModelProto] = {}  # files exported again with a symbolic batch
    for b in cfg.batch or [_own_batch(cfg.models, protos)]:
        models = []
        for name, path, proto in zip(names, cfg.models, protos, strict=True):
            fixed = fixed_batch(proto)
            if fixed is None or fixed == b:
                models.append((name, str(path)))
                continue
            models.append((name, _at_batch(proto, b, str(path), name, sweep, dynamic, cfg.dims)))
            sweep.rebatched[name] = fixed
        setup = LatencySetup(device=cfg.device, threads=cfg.threads, warmup=cfg.warmup, repeats=cfg.repeats,
                             batch=b, dims=cfg.dims, opt_level=cfg.opt_levels[0])
        sweep.reports.append(benchmark(models, setup, opt_levels=cfg.opt_levels, max_seconds=cfg.max_seconds))
    if cfg.save:
        sweep.to_json(cfg.save)
    return sweep


def _own_batch(paths: list[str], protos: list[onnx.ModelProto]) -> int:
    """The batch to time when none is asked for: the files' fixed batch, 1 when all are symbolic."""
    fixed = {p: b for p, proto in zip(paths, protos, strict=True) if (b := fixed_batch(proto)) is not None}
    if len(set(fixed.values())) > 1:
        raise InputError("updp bench: the files are exported at different fixed batches ("
                         + ", ".join(f"{p}: {b}" for p, b in fixed.items()) + "); give --batch")
    return next(iter(fixed.values()), 1)


def _at_batch(proto: onnx.ModelProto, batch: int, where: str, name: str, sweep: BenchSweep,
              dynamic: dict[str, onnx.ModelProto], dims: dict[str, int]) -> onnx.ModelProto:
    """`proto` at `batch`: its graph rebatched, or, where the graph bakes the batch in (a class token
    folded to batch 1), updp's own export re-exported with a dynamic batch from what its metadata
    records, and checked to compute what the file computes (`dynamic` keeps it for the next batch)."""
    if name in dynamic:
        return dynamic[name]
    try:
        return at_batch(proto, batch, where=where, dims=dims)
    except InputError:
        again = _reexport_dynamic(proto)
        if again is None:
            raise
        sweep.reexported[name], dynamic[name] = again
        return dynamic[name]


def _reexport_dynamic(proto: onnx.ModelProto) -> tuple[str, onnx.ModelProto] | None:
    """The same model exported again by updp with a symbolic batch, or None when the file is not
    updp's, its weights cannot be had again (a checkpoint that is gone), or the new export does not
    compute what the file computes."""
    meta = get_metadata(proto)
    if "updp.model" not in meta:
        return None

    def value(key: str):
        text = meta.get(key, "null")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    weights, shape = str(value("updp.weights")), value("updp.input_shape")
    random = re.fullmatch(r"random \(seed (\d+)\)", weights)
    checkpoint = re.fullmatch(r"checkpoint (.+)", weights)
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    classes = out_dims[-1].dim_value if out_dims and out_dims[-1].HasField("dim_value") else None
    with scratch_dir("reexport") as tmp:
        common = {"model": value("updp.model"), "out": str(tmp / "dynamic.onnx"), "dynamic_batch": True}
        if random:
            cfg = ExportConfig(**common, model_kwargs=dict(value("updp.model_kwargs") or {}),
                               blocks=value("updp.pruned_blocks") or None, seed=int(random.group(1)),
                               input_size=tuple(shape[2:]), num_classes=classes)
            how = f"{common['model']}, random weights (seed {random.group(1)}), dynamic batch"
        elif checkpoint and Path(checkpoint.group(1)).is_file():
            cfg = ExportConfig(**common, checkpoint=checkpoint.group(1), input_size=tuple(shape[2:]))
            how = f"{checkpoint.group(1)}, dynamic batch"
        else:
            return None
        from updp.workflows.export import export  # lazy: torch and the model zoo, only to re-export

        try:
            export(cfg)
        except UpdpError:
            return None
        model = onnx.load(cfg.out)
    rep = check_equivalence(proto, model, batch=fixed_batch(proto) or 1, raise_on_failure=False,
                            what="the re-export")
    return (how, model) if rep.passed else None


def block_labels(path: str | Path) -> dict[str, str]:
    """`{"<i> <module path>": scope fragment}` from an export's `updp.block_scopes` metadata."""
    scopes = json.loads(get_metadata(load_onnx(path)).get("updp.block_scopes", "{}"))
    return scopes_of(sorted((int(i), name) for i, name in scopes.items()))


def block_profiles(files: dict[str, Path], setup: LatencySetup, *, runs: int, rounds: int = 5) -> dict[str, dict]:
    """Per-block kernel time of each file, profiled in alternating rounds, median per block.

    The first file's `updp.block_scopes` label the blocks of all of them: pruning replaces modules
    in place, so the module paths (and the node-name scopes) of a baseline and its pruned export
    are the same.

    Why rounds: the kernels of a small model take microseconds, and one profiling session of a
    model right after another drifts by 10-30 % (frequency, caches, thread wake-ups), which showed
    up as unpruned blocks getting "faster". Alternating the files, `rounds` sessions each, and
    taking each block's median over the rounds puts the drift on both alike.
    """
    scopes = block_labels(next(iter(files.values())))
    per_round = max(1, runs // rounds)
    samples = profile_blocks_alternating({k: str(v) for k, v in files.items()}, scopes, setup, rounds=rounds,
                                         runs_per_round=per_round)
    out = {}
    for key, profs in samples.items():
        med = median_block_us(profs)
        total = sum(med.values())
        out[key] = {"total_us": total, "rounds": rounds, "runs_per_round": per_round,
                    "inherited": list(profs[0].inherited),
                    "blocks": [{"label": lb, "fragment": profs[0].get(lb).fragment, "total_us": med[lb],
                                "share": med[lb] / total if total > 0 else 0.0,
                                "n_nodes": profs[0].get(lb).n_nodes} for lb in med]}
    return out


__all__ = ["BenchSweep", "bench", "block_labels", "block_profiles"]
