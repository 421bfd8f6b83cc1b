"""Export, merge, verify, write: the deployment pipeline for one module, in the order that makes
it trustworthy.

    result = export_module(module, (1, 3, 224, 224), [0, 1, 2], out="p3.onnx", optimize=True,
                           verify=True, polish=True, opset=18, dynamic_batch=False, weights="random")

Order of operations (the reparameterization protocol): load → eval → convert the chosen blocks to
their λ = 1 form → export the unmerged graph (the reference) → check the reference against the
torch module → merge with `updp.onnx_passes` → polish with onnxsim → the full ONNX checker →
verify the merged graph against the reference in ONNX Runtime with graph optimizations off →
metadata (provenance) → write atomically. Any failure raises before anything is written.

Random weights (`randomize_norms`): a latency what-if gets random BatchNorm statistics, norm
affines and layer scales, so that the merge check is not trivially satisfied by identity norms.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from updp.blocks.convert import apply_pruning, randomize_norm_stats
from updp.blocks.discover import find_blocks
from updp.core.constants import DEFAULT_EXPORTER
from updp.core.errors import VerificationError
from updp.exporter.optimize import op_counts
from updp.exporter.torch_export import full_check, save_model, set_metadata, simplify, torch_to_onnx, versions
from updp.onnx_passes import optimize_model
from updp.ort import make_session
from updp.verify import check_equivalence, compare_outputs

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out: str
    model: str
    input_shape: list[int]
    pruned_blocks: list[int]
    block_names: list[str]
    selection_rule: str
    weights: str
    exporter: str  # the torch exporter that wrote the reference (`updp.core.constants.EXPORTERS`)
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
    # Files made from this one (int8, float16: `updp.workflows.precision.DerivedFile` dataclasses,
    # each with its own `format_summary`).
    derived: list = field(default_factory=list)
    # The written (or, with out=None, to be written) model; not part of the JSON result.
    onnx_model: onnx.ModelProto | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(replace(self, onnx_model=None))
        del d["onnx_model"]
        return d

    def format_summary(self) -> str:
        lines = [f"wrote {self.out}",
                 f"  model {self.model} input {tuple(self.input_shape)} weights: {self.weights} "
                 f"exporter: {self.exporter}",
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
        lines += [f.format_summary() for f in self.derived]
        lines.append(f"  done in {self.seconds:.1f} s")
        return "\n".join(lines)


def export_module(module: torch.nn.Module, input_shape: tuple[int, ...], chosen: list[int], *,
                  out: str | Path | None, optimize: bool, verify: bool, polish: bool, opset: int,
                  dynamic_batch: bool, weights: str, randomize_norms: int | None = None,
                  already_pruned: bool = False, selection_rule: str = "manual", model_label: str = "custom",
                  model_kwargs: dict | None = None, exporter: str = DEFAULT_EXPORTER,
                  class_names: list[str] | None = None) -> ExportResult:
    """Prune blocks `chosen` of a module at λ = 1, export, merge, verify and write `out`.

    Works on any module whose blocks updp recognizes (including user-registered ones).

    Args:
        module: the model (weights loaded); modified in place (converted, eval mode).
        input_shape: (B, C, H, W) of the export.
        chosen: block indices (`find_blocks`) to prune and merge.
        out: destination (None: nothing written, the result only).
        optimize: run the merge passes (off: a plain export).
        verify: check the export against torch and the merged graph against the export.
        polish: onnxsim's optimizer after the merge.
        opset: ONNX opset of the export.
        dynamic_batch: symbolic batch axis.
        weights: what the weights are, for the metadata and the summary.
        randomize_norms: seed of random norm statistics for a latency what-if (None: keep them).
        already_pruned: the chosen blocks are already in their pruned form (a pruned checkpoint).
        selection_rule: how the blocks were chosen (metadata).
        model_label: the model's name (metadata).
        model_kwargs: its constructor arguments (metadata).
        exporter: the torch exporter, "torchscript" or "dynamo" (`updp.exporter.torch_export`).
        class_names: the names of the output classes, in label order (metadata `updp.class_names`,
            left out when None): what a deployment shows, and what `updp eval` checks the data against.

    Raises:
        UnsupportedError: the export fails or the result fails the ONNX checker.
        VerificationError: the export or the merge changed the function; nothing is written.
    """
    t0 = time.perf_counter()
    module = module.eval()
    blocks = find_blocks(module, input_shape)
    if chosen and not already_pruned:
        apply_pruning(module, chosen, lam=1.0)
    if randomize_norms is not None:
        randomize_norm_stats(module, seed=randomize_norms)
    module.eval()
    names = [blocks[i].name for i in chosen]
    reference = simplify(torch_to_onnx(module, input_shape, dynamic_batch=dynamic_batch, opset=opset,
                                       exporter=exporter), optimize=False)
    torch_diff = torch_parity(module, reference, input_shape) if verify else None
    result_model, decisions, refusals = reference, [], []
    if optimize:
        res = optimize_model(reference)
        result_model, decisions, refusals = res.model, list(res.decisions), list(res.refusals)
        if polish:
            result_model = simplify(result_model, optimize=True)
    full_check(result_model, "optimized model")
    max_diff = rel = None
    if verify and optimize:
        rep = check_equivalence(reference, result_model, batch=input_shape[0])
        max_diff, rel = rep.max_abs_diff, rep.rel_diff
    set_metadata(result_model, {
        "updp.model": model_label, "updp.model_kwargs": dict(model_kwargs or {}),
        "updp.input_shape": list(input_shape), "updp.pruned_blocks": list(chosen), "updp.pruned_block_names": names,
        "updp.lambda": 1.0, "updp.selection_rule": selection_rule, "updp.weights": weights,
        "updp.exporter": exporter,
        "updp.versions": versions(),
        "updp.verified_max_abs_diff": max_diff if max_diff is not None else "not verified",
        "updp.block_scopes": {str(b.index): b.name for b in blocks},
        **({"updp.class_names": list(class_names)} if class_names else {}),
    })
    if out is not None:
        save_model(result_model, out)
    return ExportResult(
        out=str(out) if out else "", model=model_label, input_shape=list(input_shape), pruned_blocks=list(chosen),
        block_names=names, selection_rule=selection_rule, weights=weights, exporter=exporter,
        nodes_before=len(reference.graph.node),
        nodes_after=len(result_model.graph.node), ops_before=op_counts(reference),
        ops_after=op_counts(result_model), max_abs_diff=max_diff, rel_diff=rel,
        torch_max_abs_diff=torch_diff, verified=bool(verify), seconds=time.perf_counter() - t0,
        decisions=decisions, refusals=refusals, onnx_model=result_model)


def torch_parity(module: torch.nn.Module, reference: onnx.ModelProto, input_shape: tuple[int, ...]) -> float:
    """The exported reference must compute what the torch module computes (same criterion)."""
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


__all__ = ["ExportResult", "export_module", "torch_parity"]
