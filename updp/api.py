"""The Python API behind the CLI: list blocks, export + merge + verify, optimize, bench.

    from updp.api import ExportOptions, export_model, bench_files
    result = export_model(ExportOptions(model="convnext_tiny", prune=6), out="p6.onnx")
    base = export_model(ExportOptions(model="convnext_tiny"), out="base.onnx")
    print(bench_files(["base.onnx", "p6.onnx"]).format_table())

Order of operations for an export (STYLE.md §7): load → eval → convert the chosen blocks to their
λ = 1 form → export the unmerged graph (the reference) → merge with `updp.onnx_passes` → verify the
merged graph against the reference in ONNX Runtime with graph optimizations off → write atomically.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from updp.errors import InputError, VerificationError

logger = logging.getLogger(__name__)


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


# ------------------------------------------------------------------ models and blocks

def build_model(model: str, *, input_size: tuple[int, int] | None = None, model_kwargs: dict | None = None,
                num_classes: int | None = None):
    """Create a zoo model and resolve its (C, H, W) input shape.

    Returns:
        (module in eval mode, ModelSpec, (C, H, W))
    """
    from updp.models import check_input_size, create_model

    kwargs = dict(model_kwargs or {})
    module, spec = create_model(model, num_classes=num_classes, input_size=input_size, **kwargs)
    chw = tuple(spec.input_size)
    if input_size is not None:
        chw = (chw[0], int(input_size[0]), int(input_size[1]))
    check_input_size(module, spec, chw)
    return module.eval(), spec, chw


@dataclass
class BlocksReport:
    model: str
    input_shape: tuple[int, ...]
    blocks: list[Any]
    latency_share: dict[int, float] | None = None
    latency_ms: float | None = None
    latency_setup: dict | None = None

    def to_dict(self) -> dict:
        out = {"model": self.model, "input_shape": list(self.input_shape),
               "blocks": [b.to_dict() for b in self.blocks]}
        if self.latency_share is not None:
            for entry in out["blocks"]:
                entry["latency_share"] = self.latency_share.get(entry["index"])
            out["latency_ms_total"] = self.latency_ms
            out["latency_setup"] = self.latency_setup
        return out

    def format_table(self) -> str:
        head = ["idx", "family", "module", "params", "MMACs", "prunable"]
        if self.latency_share is not None:
            head.insert(5, "ORT time")
        rows = []
        for b in self.blocks:
            row = [str(b.index), b.family, b.name, f"{b.params:,}", f"{b.macs / 1e6:.1f}",
                   "yes" if b.prunable else f"no: {b.reason}"]
            if self.latency_share is not None:
                row.insert(5, f"{100 * self.latency_share.get(b.index, 0.0):.1f}%")
            rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

        def fmt(cells):
            return "  ".join(c.ljust(w) if i in (1, 2, len(head) - 1) else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        n_prunable = sum(b.prunable for b in self.blocks)
        lines = [f"{self.model} at input {tuple(self.input_shape)}: {len(self.blocks)} blocks, "
                 f"{n_prunable} prunable", fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]
        if not self.blocks:
            lines.append("(no recognized blocks: updp knows ConvNeXt, ViT/DeiT, inverted-residual and ResNet "
                         "blocks of timm and torchvision; register your own with updp.pruning.register_block)")
        if self.latency_share is not None:
            lines.append(f"ORT time: share of {self.latency_ms:.2f} ms per run (profiler, "
                         f"{self.latency_setup.get('opt_level')}, threads={self.latency_setup.get('threads')})")
        return "\n".join(lines)


def list_blocks(model: str, *, input_size=None, model_kwargs=None, latency: bool = False,
                threads: int = 2) -> BlocksReport:
    """Recognized blocks with params and MACs; with `latency`, each block's share of ORT time."""
    from updp.pruning import find_blocks

    module, spec, chw = build_model(model, input_size=input_size, model_kwargs=model_kwargs)
    blocks = find_blocks(module, (1, *chw))
    report = BlocksReport(model=spec.spec,
                          input_shape=(1, *chw), blocks=blocks)
    if latency:
        from updp.exporter import simplify, torch_to_onnx
        from updp.latency import LatencySetup, aggregate_by_block, profile_nodes, scope_fragment

        proto = simplify(torch_to_onnx(module, (1, *chw)), optimize=False)
        setup = LatencySetup(threads=threads, opt_level="all", warmup=5)
        nodes = profile_nodes(proto, setup, runs=20)
        scopes = {str(b.index): scope_fragment(b.name) for b in blocks}
        prof = aggregate_by_block(nodes, scopes)
        total = prof.total_us if hasattr(prof, "total_us") else sum(t.mean_us for t in nodes)
        report.latency_share = {int(k): prof.get(k).share for k in scopes}
        report.latency_ms = total / 1000.0
        report.latency_setup = setup.to_dict()
    return report


# ------------------------------------------------------------------ export

@dataclass
class ExportOptions:
    """Everything that decides an exported file; recorded in its metadata."""

    model: str
    blocks: list[int] | None = None
    prune: int | None = None
    checkpoint: str | None = None
    input_size: tuple[int, int] | None = None
    batch: int = 1
    dynamic_batch: bool = False
    optimize: bool = True
    verify: bool = True
    polish: bool = True
    opset: int = 18
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    num_classes: int | None = None


@dataclass
class ExportResult:
    out: str
    model: str
    input_shape: list[int]
    pruned_blocks: list[int]
    block_names: list[str]
    selection_rule: str
    weights: str
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    max_abs_diff: float | None
    rel_diff: float | None
    torch_max_abs_diff: float | None
    verified: bool
    seconds: float
    decisions: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format_summary(self) -> str:
        lines = [f"wrote {self.out}",
                 f"  model {self.model} input {tuple(self.input_shape)} weights: {self.weights}",
                 f"  pruned blocks ({self.selection_rule}): "
                 + (", ".join(f"{i} {n}" for i, n in zip(self.pruned_blocks, self.block_names)) or "none"),
                 f"  nodes {self.nodes_before} -> {self.nodes_after}"]
        if self.max_abs_diff is not None:
            lines.append(f"  verified against the unmerged export (ORT, optimizations off): max abs diff "
                         f"{self.max_abs_diff:.2e} (relative {self.rel_diff:.2e})")
        elif not self.verified:
            lines.append("  NOT verified (--no-verify)")
        if self.torch_max_abs_diff is not None:
            lines.append(f"  torch vs ONNX max abs diff {self.torch_max_abs_diff:.2e}")
        if self.decisions:
            lines.append("  merge plan:")
            lines += [f"    {d}" for d in self.decisions[:12]]
            if len(self.decisions) > 12:
                lines.append(f"    ... {len(self.decisions) - 12} more (see --json)")
        lines.append(f"  done in {self.seconds:.1f} s")
        return "\n".join(lines)


def _load_weights(module, checkpoint: str, payload=None):
    """Load a checkpoint; a pruned checkpoint carries its plan, which is applied first.

    A plan of the `--drop` ablation (`block_options["drop"]`) removes its blocks instead of
    converting them (`updp.pruning.progressive.apply_plan`).

    Returns the plan (or None for a plain state dict).
    """
    from updp.models import load_state, read_checkpoint

    if payload is None:
        payload = read_checkpoint(checkpoint)
    plan = None
    if isinstance(payload, dict) and payload.get("plan"):
        from updp.pruning import PrunePlan
        from updp.pruning.progressive import apply_plan

        plan = PrunePlan.from_dict(payload["plan"])
        apply_plan(module, plan)
    load_state(module, payload, checkpoint)
    return plan


def _spec_from_checkpoint(opts: ExportOptions, payload) -> ExportOptions:
    """A checkpoint from `updp train`/`updp prune` records its `model_spec`: MODEL must match it, and
    the class count, input size and constructor kwargs default to it (explicit options must agree)."""
    from dataclasses import replace

    from updp.models import parse_spec

    spec = payload.get("model_spec") if isinstance(payload, dict) else None
    if not spec:
        return opts
    if parse_spec(opts.model) != parse_spec(spec["model"]):
        raise InputError(f"checkpoint {opts.checkpoint} holds a {spec['model']}, not {opts.model}")
    n = spec.get("num_classes")
    if opts.num_classes is not None and n is not None and opts.num_classes != n:
        raise InputError(f"checkpoint {opts.checkpoint} has {n} classes, not --num-classes {opts.num_classes}")
    size = tuple(spec["input_size"][1:])
    kwargs = {k: v for k, v in (spec.get("kwargs") or {}).items() if k != "num_classes"}
    for k, v in opts.model_kwargs.items():
        if k in kwargs and kwargs[k] != v:
            raise InputError(f"checkpoint {opts.checkpoint} was built with {k}={kwargs[k]!r}, not {v!r}")
    kwargs.update(opts.model_kwargs)
    return replace(opts, num_classes=n if opts.num_classes is None else opts.num_classes,
                   input_size=size if opts.input_size is None else opts.input_size, model_kwargs=kwargs)


def export_model(opts: ExportOptions, out: str | Path | None = None) -> ExportResult:
    """Export a (pruned) zoo model to ONNX, merge the pruned blocks, verify, and write `out`.

    Raises:
        InputError, UnsupportedError, VerificationError: nothing is written in any of these cases.
    """
    from updp.pruning import find_blocks
    from updp.selection import select_blocks

    t0 = time.perf_counter()
    if opts.batch < 1:
        raise InputError(f"--batch must be >= 1, got {opts.batch}")
    torch.manual_seed(opts.seed)
    payload = None
    if opts.checkpoint:
        from updp.models import read_checkpoint

        payload = read_checkpoint(opts.checkpoint)
        opts = _spec_from_checkpoint(opts, payload)
    module, spec, chw = build_model(opts.model, input_size=opts.input_size, model_kwargs=opts.model_kwargs,
                                    num_classes=opts.num_classes)
    input_shape = (opts.batch, *chw)
    plan = _load_weights(module, opts.checkpoint, payload) if opts.checkpoint else None
    blocks = find_blocks(module, input_shape)
    if plan is not None:
        from updp.pruning.progressive import is_drop_plan

        if opts.blocks or opts.prune:
            raise InputError("the checkpoint already carries a prune plan; drop --blocks/--prune")
        if is_drop_plan(plan):  # the blocks are gone: nothing left to merge
            chosen, rule = [], f"dropped blocks {plan.blocks} ({plan.selection_rule})"
        else:
            chosen, rule = list(plan.blocks), plan.selection_rule
    elif opts.blocks:
        chosen, rule = list(opts.blocks), "manual"
    elif opts.prune:
        chosen, rule = select_blocks(module, blocks, opts.prune, input_shape)
    else:
        chosen, rule = [], "none"
    result = export_module(module, input_shape, chosen, out=out, already_pruned=plan is not None,
                           random_weights=not opts.checkpoint, opts=opts, selection_rule=rule,
                           model_label=opts.model)
    result.seconds = time.perf_counter() - t0
    return result


def export_module(module: torch.nn.Module, input_shape: tuple[int, ...], chosen: list[int], *,
                  out: str | Path | None = None, already_pruned: bool = False, random_weights: bool = True,
                  opts: ExportOptions | None = None, selection_rule: str = "manual",
                  model_label: str = "custom") -> ExportResult:
    """Prune blocks `chosen` of an nn.Module at λ = 1, export, merge, verify, write.

    This is the part of `export_model` that works on any module whose blocks updp recognizes
    (including user-registered ones).
    """
    from updp.exporter import full_check, save_model, set_metadata, simplify, torch_to_onnx, versions
    from updp.pruning import apply_pruning, find_blocks, randomize_norm_stats

    opts = opts or ExportOptions(model=model_label)
    t0 = time.perf_counter()
    module = module.eval()
    blocks = find_blocks(module, input_shape)
    if chosen and not already_pruned:
        apply_pruning(module, chosen, lam=1.0)
    if random_weights:
        # A latency what-if: random statistics so that the merge check is not trivially satisfied.
        randomize_norm_stats(module, seed=opts.seed)
    module.eval()
    names = [blocks[i].name for i in chosen]
    weights = f"checkpoint {opts.checkpoint}" if opts.checkpoint else (
        f"random (seed {opts.seed})" if random_weights else "as given")

    reference = simplify(torch_to_onnx(module, input_shape, dynamic_batch=opts.dynamic_batch, opset=opts.opset),
                         optimize=False)
    torch_diff = _torch_vs_onnx(module, reference, input_shape) if opts.verify else None
    result_model, decisions, refusals = reference, [], []
    if opts.optimize:
        from updp.onnx_passes import optimize_model

        res = optimize_model(reference)
        result_model, decisions, refusals = res.model, list(res.decisions), list(res.refusals)
        if opts.polish:
            result_model = simplify(result_model, optimize=True)
    full_check(result_model, "optimized model")
    max_diff = rel = None
    if opts.verify and opts.optimize:
        from updp.verify import check_equivalence

        rep = check_equivalence(reference, result_model, batch=input_shape[0])
        max_diff, rel = rep.max_abs_diff, rep.rel_diff
    set_metadata(result_model, {
        "updp.model": model_label, "updp.model_kwargs": opts.model_kwargs, "updp.input_shape": list(input_shape),
        "updp.pruned_blocks": list(chosen), "updp.pruned_block_names": names, "updp.lambda": 1.0,
        "updp.selection_rule": selection_rule, "updp.weights": weights, "updp.versions": versions(),
        "updp.verified_max_abs_diff": max_diff if max_diff is not None else "not verified",
        "updp.block_scopes": {str(b.index): b.name for b in blocks},
    })
    if out is not None:
        save_model(result_model, out)
    return ExportResult(
        out=str(out) if out else "", model=model_label, input_shape=list(input_shape), pruned_blocks=list(chosen),
        block_names=names, selection_rule=selection_rule, weights=weights, nodes_before=len(reference.graph.node),
        nodes_after=len(result_model.graph.node), ops_before=_op_counts(reference),
        ops_after=_op_counts(result_model), max_abs_diff=max_diff, rel_diff=rel,
        torch_max_abs_diff=torch_diff, verified=bool(opts.verify), seconds=time.perf_counter() - t0,
        decisions=decisions, refusals=refusals)


def _torch_vs_onnx(module, reference: onnx.ModelProto, input_shape) -> float:
    """The exported reference must compute what the torch module computes (same criterion)."""
    from updp.ort import make_session
    from updp.verify import compare_outputs

    x = np.random.default_rng(123).standard_normal(input_shape).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    sess = make_session(reference, opt_level="disable", threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    rep = compare_outputs([expected], [got], ["logits"])
    if not rep.passed:
        raise VerificationError(f"the ONNX export does not match the torch model: max abs diff "
                                f"{rep.max_abs_diff:.3g} (relative {rep.rel_diff:.3g}); nothing was written")
    return rep.max_abs_diff


# ------------------------------------------------------------------ optimize an existing file

@dataclass
class OptimizeFileResult:
    input: str
    out: str
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    max_abs_diff: float | None
    rel_diff: float | None
    applied: dict[str, int]
    decisions: list[str]
    refusals: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def format_summary(self) -> str:
        lines = [f"wrote {self.out}", f"  nodes {self.nodes_before} -> {self.nodes_after}"]
        changed = sorted(set(self.ops_before) | set(self.ops_after))
        diffs = [f"{op} {self.ops_before.get(op, 0)}->{self.ops_after.get(op, 0)}" for op in changed
                 if self.ops_before.get(op, 0) != self.ops_after.get(op, 0)]
        if diffs:
            lines.append("  ops: " + ", ".join(diffs))
        if self.applied:
            lines.append("  rewrites: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.applied.items())))
        if self.max_abs_diff is not None:
            lines.append(f"  verified (ORT, optimizations off): max abs diff {self.max_abs_diff:.2e} "
                         f"(relative {self.rel_diff:.2e})")
        else:
            lines.append("  NOT verified (--no-verify)")
        if self.refusals:
            lines.append(f"  {len(self.refusals)} rewrites refused (see --json or -v for reasons)")
        lines.append(f"  done in {self.seconds:.1f} s")
        return "\n".join(lines)


def optimize_file(src: str | Path, out: str | Path, *, verify: bool = True, polish: bool = True,
                  fold_layernorm_affine: bool = False) -> OptimizeFileResult:
    """Optimize any ONNX file: fold norms, merge linear chains, verify, write atomically."""
    from updp.exporter import full_check, save_model, simplify
    from updp.onnx_passes import optimize_model
    from updp.ort import load_onnx

    t0 = time.perf_counter()
    original = load_onnx(src)
    cleaned = simplify(original, optimize=False)
    res = optimize_model(cleaned, fold_layernorm_affine=fold_layernorm_affine)
    result = simplify(res.model, optimize=True) if polish else res.model
    full_check(result, "optimized model")
    max_diff = rel = None
    if verify:
        from updp.verify import check_equivalence

        rep = check_equivalence(original, result)
        max_diff, rel = rep.max_abs_diff, rep.rel_diff
    save_model(result, out)
    return OptimizeFileResult(
        input=str(src), out=str(out), nodes_before=len(original.graph.node), nodes_after=len(result.graph.node),
        ops_before=_op_counts(original), ops_after=_op_counts(result), max_abs_diff=max_diff, rel_diff=rel,
        applied=dict(res.applied), decisions=list(res.decisions), refusals=list(res.refusals),
        seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------ bench

def bench_files(paths: list[str], *, threads: int = 2, opt_levels: list[str] | None = None, batch: int = 1,
                warmup: int = 10, repeats: int = 50, device: str = "cpu", max_seconds: float | None = None):
    """Interleaved A/B latency of ONNX files; speedups relative to the first."""
    from updp.latency import LatencySetup, benchmark
    from updp.ort import load_onnx

    models = []
    for p in paths:
        load_onnx(p)  # one-line error for a missing or malformed file before any timing starts
        name = Path(p).name
        if any(name == m[0] for m in models):
            name = str(p)
        models.append((name, str(p)))
    setup = LatencySetup(device=device, threads=threads, warmup=warmup, repeats=repeats, batch=batch,
                         opt_level=(opt_levels or ["all"])[0])
    return benchmark(models, setup, opt_levels=opt_levels or ["all"], max_seconds=max_seconds)


# ------------------------------------------------------------------ demo

def demo(out_dir: str = "runs/demo", quick: bool = False) -> int:
    """The embedded default: ConvNeXt-T, 6 blocks pruned at λ = 1 (random weights), export,
    merge, verify, then benchmark against the unpruned export on ORT CPU."""
    out = Path(out_dir)
    model = "timm:convnext_tiny"
    print(f"updp demo: {model} at 224x224, random weights (no hub downloads here), 6 blocks pruned at lambda=1")
    base = export_model(ExportOptions(model=model), out=out / "convnext_tiny_base.onnx")
    print(base.format_summary())
    pruned = export_model(ExportOptions(model=model, prune=6), out=out / "convnext_tiny_p6.onnx")
    print(pruned.format_summary())
    report = bench_files([base.out, pruned.out], threads=2, opt_levels=["disable", "all"],
                         warmup=5 if quick else 10, repeats=15 if quick else 40)
    print(report.format_table())
    from updp._io import write_text_atomic

    write_text_atomic(out / "bench.json", report.to_json())
    fast = report.get(Path(pruned.out).name, "all")
    print(f"\nheadline: ConvNeXt-T P6 (merged) runs {fast.speedup:.2f}x faster than the unpruned model under "
          f"ORT_ENABLE_ALL (median {fast.median_ms:.1f} ms, CPU, 2 threads, batch 1); merge verified, "
          f"max abs diff {pruned.max_abs_diff:.1e}")
    print(f"results in {out}/ (bench.json, *.onnx)")
    return 0


# ------------------------------------------------------------------ the short Python API (issue #4)
#
# Thin wrappers with keyword defaults, so that a script reads like the README:
#
#     import updp
#     updp.train("convnext_atto", data="mnist5k", epochs=10, out="base.pt")
#     plan = updp.search("base.pt", data="mnist5k", target_blocks=4, out="plan.json")
#     updp.prune("base.pt", plan, data="mnist5k", epochs=6, out="pruned.pt")
#     updp.export("pruned.pt", "pruned.onnx")
#
# Each one calls what the matching CLI command calls; `updp.run` is `updp run`.


def train(model: str, *, data: str, epochs: int, out: str, input_size: int | tuple[int, int] = 32,
          model_kwargs: dict | None = None, checkpoint: str | None = None, batch_size: int = 128,
          lr: float = 2e-3, seed: int = 0, split_seed: int = 0, device: str = "auto", resume: bool = False,
          max_steps_per_epoch: int | None = None, progress: bool = True, amp: str = "off"):
    """Train (or, from `checkpoint`, fine-tune) a baseline on a local dataset (`updp train`).

    Args:
        model: `timm:NAME`, `torchvision:NAME` or a bare timm NAME.
        data: `mnist5k`, `digits`, `imagefolder:PATH` or `cifar10:PATH`.
        epochs, out: training length and the checkpoint written every epoch.
        checkpoint: your own initial weights (a state dict with the data's class count).
        Others: as `updp.pruning.train.TrainConfig`.

    Returns:
        `TrainResult` (val accuracy, history, checkpoint path).
    """
    from updp.data import get_datasets
    from updp.models import load_checkpoint
    from updp.pruning.train import TrainConfig, Trainer, build_for_data

    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    bundle = get_datasets(data, size, split_seed=split_seed)
    module, spec = build_for_data(model, bundle, model_kwargs=model_kwargs, seed=seed)
    if checkpoint:
        load_checkpoint(module, checkpoint)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, out=str(out),
                      resume=resume, progress=progress, max_steps_per_epoch=max_steps_per_epoch, amp=amp)
    return Trainer(module, bundle, cfg,
                   checkpoint_extra=lambda: {"model_spec": spec, "data": bundle.description}).fit()


def search(checkpoint: str, *, data: str, out: str = "plan.json", target_blocks: int | None = None,
           target_speedup: float | None = None, epochs: int = 2, **options):
    """Supernet + subnet search from a trained baseline (`updp search`); writes the plan to `out`.

    `options` go to `updp.pruning.search.run_search` (e.g. `max_evals`, `threads`, `max_steps_per_epoch`).

    Returns:
        `SearchResult`; its `.plan` is the `PrunePlan` (also saved at `out`).
    """
    from updp.pruning.search import run_search

    return run_search(str(checkpoint), data, target_blocks=target_blocks, target_speedup=target_speedup,
                      out=str(out), epochs=epochs, **options)


def prune(checkpoint: str, plan=None, *, data: str, out: str, epochs: int, blocks: list[int] | None = None,
          prune_n: int | None = None, kd: bool = True, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
          split_seed: int = 0, device: str = "auto", resume: bool = False,
          max_steps_per_epoch: int | None = None, progress: bool = True, amp: str = "off",
          **prune_options):
    """Progressive training of the chosen blocks (`updp prune`); the checkpoint at `out` carries its plan.

    Args:
        checkpoint: the baseline checkpoint.
        plan: a `PrunePlan`, a `SearchResult` (its plan), or a plan .json path; or give `blocks` /
            `prune_n` instead.
        prune_options: `updp.pruning.progressive.PruneConfig` fields (`schedule`, `abrupt`, ...).

    Returns:
        `PruneResult` (plan, training result, baseline and at-start accuracies).
    """
    from updp.data import get_datasets
    from updp.pruning import PrunePlan
    from updp.pruning.progressive import PruneConfig, prune_checkpoint
    from updp.pruning.train import TrainConfig, load_trained

    if plan is not None and not isinstance(plan, PrunePlan):
        plan = plan.plan if hasattr(plan, "plan") else PrunePlan.load(str(plan))
    spec = load_trained(str(checkpoint)).spec
    bundle = get_datasets(data, tuple(spec["input_size"][1:]), split_seed=split_seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=0.0, seed=seed, device=device,
                      out=str(out), resume=resume, progress=progress, max_steps_per_epoch=max_steps_per_epoch,
                      amp=amp)
    return prune_checkpoint(str(checkpoint), bundle, train=cfg, prune=PruneConfig(kd=kd, **prune_options),
                            blocks=blocks, plan=plan, prune_n=prune_n)


def export(checkpoint: str | None, out: str, *, model: str | None = None, **options) -> ExportResult:
    """Export to ONNX, merge the pruned blocks, verify, write `out` (`updp export`).

    Args:
        checkpoint: a checkpoint of `updp train`/`updp prune` (the model name comes from it), or
            None for random weights (then give `model`).
        options: `ExportOptions` fields (`blocks`, `prune`, `batch`, `dynamic_batch`, `verify`, ...).
    """
    if checkpoint is not None and model is None:
        from updp.models import read_checkpoint

        payload = read_checkpoint(checkpoint)
        spec = payload.get("model_spec") if isinstance(payload, dict) else None
        if not spec:
            raise InputError(f"{checkpoint} carries no model_spec: pass model=...")
        model = spec["model"]
    if model is None:
        raise InputError("export: give a checkpoint or model=...")
    return export_model(ExportOptions(model=model, checkpoint=str(checkpoint) if checkpoint else None, **options),
                        out=out)


def bench(paths: list[str], *, threads: int = 2, opt_levels: list[str] | None = None, repeats: int = 50,
          warmup: int = 10, batch: int = 1):
    """Interleaved latency of ONNX files under ORT_DISABLE_ALL and ORT_ENABLE_ALL (`updp bench`).

    Returns:
        `BenchReport`; speedups relative to the first file (`.format_table()`, `.get(name, level)`).
    """
    return bench_files([str(p) for p in paths], threads=threads, opt_levels=opt_levels or ["disable", "all"],
                       repeats=repeats, warmup=warmup, batch=batch)


def evaluate(path: str, *, data: str, split: str = "val", split_seed: int = 0) -> dict:
    """Accuracy of an ONNX file (ONNX Runtime) or a checkpoint (torch) (`updp eval`)."""
    from updp.pruning.train import evaluate_file

    return evaluate_file(str(path), data, split=split, split_seed=split_seed)


def run(config=None, out_dir: str = "runs/updp", *, resume: bool = False, **overrides):
    """The whole chain in a run directory (`updp run`); returns the `RunOutcome`.

    Args:
        config: a `RunConfig`, a path to a .toml/.yaml/.json run config, or None for the defaults.
        overrides: sections to change, e.g. `prune={"epochs": 8}`, `device="cpu"`.
    """
    from updp.pipeline import RunConfig, run_pipeline

    if config is None and not resume:
        config = RunConfig()
    elif config is not None and not isinstance(config, RunConfig):
        config = RunConfig.load(config)
    if overrides:
        if config is None:
            from updp.pipeline.run import resolve_config

            config = resolve_config(None, Path(out_dir), resume=True)
        config = config.replace(**overrides)
    return run_pipeline(config, out_dir, resume=resume)
