"""Latency look-up table: what pruning each candidate block saves, measured with ONNX Runtime.

The search needs the latency of thousands of subnets; exporting and timing each is far too slow.
The table measures two real graphs once, both built by the deployment pipeline
(`updp.exporter.export.export_module`: export → `optimize_model` merge → polish), so it reflects what the
planner actually produces for each block:

* the baseline (no block pruned), and
* every candidate block pruned at λ = 1 and merged.

Both are profiled per node (`updp.latency.profile_nodes`, ORT CPU by default) and the node times are
summed per block by module scope (`aggregate_by_block`), in several rounds alternating between the
two graphs, keeping each block's median over rounds; the blocks' forms do not interact in the
graph (each block's merge only touches its own nodes), so a subnet's kernel time is additive:

    K(S) = Σ_{i ∉ S} base_i + Σ_{i ∈ S} pruned_i

Kernel times are not wall-clock latency: ORT's profiler adds a per-node cost, and the executor's own
overhead and the non-block remainder (stem, downsamples, head, layout reorders) are outside the sum.
So the two graphs are also timed end to end (`updp.latency.benchmark`, interleaved) and wall time is
interpolated linearly in K between the two measured points:

    W(S) = W_base + a · (K(S) - K_base),   a = (W_all - W_base) / (K_all - K_base)

which is exact for the baseline and for the all-pruned model. `remainder_ms = W_base - a·K_base` is
the part of the latency no pruning changes. `speedup(S) = W_base / W(S)`. `check` measures a given
subnet end to end and returns predicted vs measured speedup, which is how the table is validated.

Random weights are fine: latency does not depend on the values of the weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from updp.blocks.discover import find_blocks, prunable_candidates
from updp.core.constants import DEFAULT_OPSET, DEFAULT_THREADS
from updp.core.errors import InputError
from updp.core.io import scratch_dir, write_text_atomic
from updp.exporter.export import export_module
from updp.exporter.scopes import OTHER, block_label, scopes_of
from updp.latency.profile import median_block_us, profile_blocks_alternating
from updp.latency.runner import LatencySetup, benchmark

logger = logging.getLogger(__name__)

LUT_SCHEMA_VERSION = 1


@dataclass
class BlockLatency:
    """Kernel time of one candidate block in its two forms (µs per run, ORT profiler).

    Attributes:
        index: block index (`find_blocks`).
        name: module path.
        base_us: summed node time of the unpruned block.
        pruned_us: summed node time of the pruned, merged block.
    """

    index: int
    name: str
    base_us: float
    pruned_us: float

    @property
    def saving_us(self) -> float:
        return self.base_us - self.pruned_us


@dataclass
class LatencyLUT:
    """Per-block latency table of one model at one input shape, with the setup that measured it.

    Attributes:
        model: model label (e.g. 'timm:convnext_atto').
        input_shape: (B, C, H, W) of the measurement.
        blocks: candidate blocks, in index order.
        base_ms: measured wall latency (median) of the baseline export.
        all_pruned_ms: measured wall latency (median) with every candidate pruned and merged.
        ms_per_kernel_us: the slope `a` (see the module docstring), ms of wall time per µs of
            profiled kernel time.
        remainder_ms: wall time no pruning changes (`W_base - a·K_base`).
        other_base_us / other_pruned_us: profiled time outside every candidate block in the two
            graphs (for inspection; not used by `predict`).
        setup: the `LatencySetup` as a dict.
        seconds: time taken to build the table.
        schema_version: format version of the JSON.
    """

    model: str
    input_shape: list[int]
    blocks: list[BlockLatency]
    base_ms: float
    all_pruned_ms: float
    ms_per_kernel_us: float
    remainder_ms: float
    other_base_us: float = 0.0
    other_pruned_us: float = 0.0
    setup: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    schema_version: int = LUT_SCHEMA_VERSION

    # ------------------------------------------------------------ queries

    @property
    def indices(self) -> list[int]:
        return [b.index for b in self.blocks]

    def _by_index(self) -> dict[int, BlockLatency]:
        return {b.index: b for b in self.blocks}

    def _check(self, pruned: Iterable[int]) -> set[int]:
        s = {int(i) for i in pruned}
        unknown = sorted(s - set(self.indices))
        if unknown:
            raise InputError(f"latency table has no candidate block(s) {unknown} "
                             f"(candidates: {self.indices})")
        return s

    def kernel_us(self, pruned: Iterable[int]) -> float:
        """Summed block kernel time K(S) of the subnet pruning `pruned`."""
        s = self._check(pruned)
        return sum(b.pruned_us if b.index in s else b.base_us for b in self.blocks)

    def predict(self, pruned: Iterable[int]) -> float:
        """Predicted wall latency (ms) of the subnet pruning `pruned` (see the module docstring)."""
        return self.remainder_ms + self.ms_per_kernel_us * self.kernel_us(pruned)

    def speedup(self, pruned: Iterable[int]) -> float:
        """Predicted speedup over the baseline (> 1 is faster)."""
        ms = self.predict(pruned)
        return self.base_ms / ms if ms > 0 else float("inf")

    def saving_ms(self, index: int) -> float:
        """Predicted wall time saved by pruning block `index` alone."""
        b = self._by_index().get(int(index))
        if b is None:
            raise InputError(f"latency table has no candidate block {index}")
        return self.ms_per_kernel_us * b.saving_us

    def blocks_needed(self, target_speedup: float, candidates: Sequence[int] | None = None) -> tuple[int, int]:
        """Fewest and "always enough" numbers of pruned blocks for a speedup target.

        Savings are additive, so the best k-subset is the k largest savings: `k_min` is the
        smallest k whose best subset reaches the target. `k_any` is the smallest k at which even
        the k *smallest* savings reach it (every k-subset is feasible).

        Raises:
            InputError: even pruning every candidate does not reach the target.
        """
        if target_speedup <= 0:
            raise InputError(f"target speedup must be > 0, got {target_speedup}")
        cand = sorted(self._check(candidates if candidates is not None else self.indices))
        savings = sorted((self.saving_ms(i) for i in cand), reverse=True)
        need_ms = self.base_ms / target_speedup  # predicted latency must be <= this
        base_pred = self.predict([])

        def reach(vals: list[float]) -> int | None:
            acc = base_pred
            if acc <= need_ms:
                return 0
            for k, v in enumerate(vals, start=1):
                acc -= v
                if acc <= need_ms:
                    return k
            return None

        k_min = reach(savings)
        if k_min is None:
            best = self.base_ms / max(base_pred - sum(savings), 1e-12)
            raise InputError(f"target speedup {target_speedup:g}x is out of reach: pruning all "
                             f"{len(cand)} candidate blocks is predicted to give {best:.2f}x")
        k_any = reach(sorted(savings))
        return k_min, k_any if k_any is not None else len(cand)

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> LatencyLUT:
        if not isinstance(d, dict):
            raise InputError("latency table: expected a JSON object")
        if d.get("schema_version") != LUT_SCHEMA_VERSION:
            raise InputError(f"latency table: unsupported schema_version {d.get('schema_version')!r} "
                             f"(this updp reads version {LUT_SCHEMA_VERSION})")
        try:
            blocks = [BlockLatency(**b) for b in d["blocks"]]
            rest = {k: v for k, v in d.items() if k != "blocks"}
            return cls(blocks=blocks, **rest)
        except (KeyError, TypeError) as e:
            raise InputError(f"latency table: malformed ({e})") from None

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyLUT:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"cannot read latency table {path}: {e.strerror}") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise InputError(f"latency table {path}: not valid JSON ({e.msg} at line {e.lineno})") from None

    def format_table(self) -> str:
        lines = [f"latency table: {self.model} input {tuple(self.input_shape)}: baseline {self.base_ms:.3f} ms, "
                 f"all {len(self.blocks)} candidates pruned {self.all_pruned_ms:.3f} ms "
                 f"(remainder {self.remainder_ms:.3f} ms)",
                 f"{'idx':>4}  {'block':<24} {'base us':>9} {'pruned us':>9} {'saves ms':>9}"]
        for b in self.blocks:
            lines.append(f"{b.index:>4}  {b.name:<24} {b.base_us:>9.1f} {b.pruned_us:>9.1f} "
                         f"{self.saving_ms(b.index):>9.4f}")
        return "\n".join(lines)

    # ------------------------------------------------------------ validation

    def check(self, module: torch.nn.Module, pruned: Sequence[int], *, setup=None,
              repeats: int | None = None, verify: bool = True, workdir: str | None = None) -> LutCheck:
        """Measure the subnet pruning `pruned` end to end and compare with the prediction.

        Exports the baseline and the merged subnet with the deployment pipeline (random norm
        statistics, verified merge unless `verify=False`) and benchmarks them interleaved.

        Args:
            module: the *unpruned* model (not modified: a copy is exported).
            pruned: block indices of the subnet.
            setup: `LatencySetup`; defaults to the table's own setup.
            repeats: timed runs per model (default: the setup's).
            verify: check the merged export against the unmerged one.
            workdir: where to write the two ONNX files (default: a temporary directory).
        """
        pruned = sorted(self._check(pruned))
        setup = setup or LatencySetup.from_dict(self.setup)
        if repeats is not None:
            setup = LatencySetup.from_dict({**setup.to_dict(), "repeats": int(repeats)})
        shape = tuple(self.input_shape)
        with scratch_dir("lutcheck") as tmp:
            d = Path(workdir) if workdir else Path(tmp)
            base_path, sub_path = d / "lutcheck_base.onnx", d / "lutcheck_subnet.onnx"
            _export(module, shape, [], base_path, verify=False, label=self.model)
            _export(module, shape, pruned, sub_path, verify=verify, label=self.model)
            rep = benchmark([("baseline", str(base_path)), ("subnet", str(sub_path))], setup)
        base, sub = rep.get("baseline"), rep.get("subnet")
        out = LutCheck(blocks=pruned, predicted_speedup=self.speedup(pruned), measured_speedup=sub.speedup,
                       predicted_ms=self.predict(pruned), measured_ms=sub.median_ms, baseline_ms=base.median_ms,
                       setup=setup.to_dict())
        logger.info("latency table check, blocks %s: predicted %.3fx, measured %.3fx", pruned,
                    out.predicted_speedup, out.measured_speedup)
        return out


@dataclass
class LutCheck:
    """Predicted vs measured speedup of one subnet (full-model, interleaved measurement)."""

    blocks: list[int]
    predicted_speedup: float
    measured_speedup: float
    predicted_ms: float
    measured_ms: float
    baseline_ms: float
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def rel_error(self) -> float:
        """(predicted - measured) / measured speedup."""
        return (self.predicted_speedup - self.measured_speedup) / self.measured_speedup

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rel_error"] = self.rel_error
        return d


def _export(module: torch.nn.Module, input_shape: tuple[int, ...], pruned: Sequence[int], out: Path, *,
            verify: bool, label: str) -> None:
    export_module(copy.deepcopy(module).eval(), input_shape, list(pruned), out=out, optimize=True, verify=verify,
                  polish=True, opset=DEFAULT_OPSET, dynamic_batch=False, weights="random (seed 0)",
                  randomize_norms=0, selection_rule="latency table", model_label=label)


def build_lut(module: torch.nn.Module, input_shape: Sequence[int], *, candidates: Sequence[int] | None = None,
              setup=None, profile_runs: int = 2, profile_rounds: int = 15, model_label: str = "custom",
              workdir: str | None = None) -> LatencyLUT:
    """Measure the latency table of `module` (see the module docstring).

    Args:
        module: the unpruned model (not modified). Its weights do not matter.
        input_shape: (B, C, H, W).
        candidates: block indices to measure; default every prunable block.
        setup: `LatencySetup`; default ORT CPU, `DEFAULT_THREADS` threads, ORT_ENABLE_ALL.
        profile_runs: profiled runs per round and graph (the per-node mean of a round).
        profile_rounds: rounds per graph, alternating between the graphs; per-block median over rounds.
        model_label: recorded in the table.
        workdir: keep the two ONNX files there (default: a temporary directory).

    Raises:
        InputError: no prunable block, or a candidate that is not a prunable block.
    """
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise InputError(f"latency table: input shape must be (B, C, H, W), got {shape}")
    setup = setup or LatencySetup(threads=DEFAULT_THREADS, opt_level="all")
    blocks = find_blocks(module)
    cand = prunable_candidates(blocks, candidates, what="latency table: block(s)")
    scopes = scopes_of((i, blocks[i].name) for i in cand)
    with scratch_dir("lut") as tmp:
        d = Path(workdir) if workdir else Path(tmp)
        base_path, all_path = d / "lut_base.onnx", d / "lut_all_pruned.onnx"
        _export(module, shape, [], base_path, verify=False, label=model_label)
        _export(module, shape, cand, all_path, verify=False, label=model_label)
        # Rounds alternate between the two graphs; the per-block median over rounds drops the
        # bursts a busy machine puts into a per-node mean (seen: one block 10x its usual time).
        rounds = profile_blocks_alternating({"base": str(base_path), "all": str(all_path)}, scopes, setup,
                                            rounds=profile_rounds, runs_per_round=profile_runs)
        rep = benchmark([("baseline", str(base_path)), ("all_pruned", str(all_path))], setup)
    med = {key: median_block_us(profiles) for key, profiles in rounds.items()}
    w0, w1 = rep.get("baseline").median_ms, rep.get("all_pruned").median_ms
    labels = {i: block_label(i, blocks[i].name) for i in cand}
    table = [BlockLatency(index=i, name=blocks[i].name, base_us=med["base"][labels[i]],
                          pruned_us=med["all"][labels[i]]) for i in cand]
    k0 = sum(b.base_us for b in table)
    k1 = sum(b.pruned_us for b in table)
    if abs(k1 - k0) > 0.01 * k0:
        slope = (w1 - w0) / (k1 - k0)
    else:  # pruning changes (almost) no kernel time: scale kernel time to wall time proportionally
        slope = w0 / max(sum(med["base"].values()), 1e-9)
        logger.warning("latency table: pruning every candidate changes kernel time by < 1%%; "
                       "using a proportional kernel→wall scale")
    lut = LatencyLUT(model=model_label, input_shape=list(shape), blocks=table, base_ms=w0, all_pruned_ms=w1,
                     ms_per_kernel_us=slope, remainder_ms=w0 - slope * k0,
                     other_base_us=med["base"][OTHER], other_pruned_us=med["all"][OTHER],
                     setup=setup.to_dict(), seconds=time.perf_counter() - t0)
    logger.info("latency table built in %.1fs: baseline %.3f ms, all pruned %.3f ms", lut.seconds, w0, w1)
    return lut


__all__ = ["BlockLatency", "LatencyLUT", "LutCheck", "build_lut"]
