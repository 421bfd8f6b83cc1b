"""Optimize an ONNX file someone brings: clean up, fold norms, merge linear chains, verify, write.

The same passes as updp's own exports, and the same guarantee: the result is checked against
the input in ONNX Runtime with graph optimizations off, and nothing is written unless it matches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from updp.exporter.export import op_counts
from updp.exporter.torch_export import full_check, save_model, simplify
from updp.onnx_passes import optimize_model
from updp.ort import load_onnx
from updp.verify import check_equivalence


@dataclass
class OptimizedFile:
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


def optimize_file(src: str | Path, out: str | Path, *, verify: bool, polish: bool,
                  fold_layernorm_affine: bool) -> OptimizedFile:
    """Optimize any ONNX file: fold norms, merge linear chains, verify, write atomically.

    Args:
        src: the input file.
        out: destination.
        verify: compare with the input in ORT (optimizations off) before writing.
        polish: onnxsim's optimizer after the passes.
        fold_layernorm_affine: also fold LayerNorm affines into the next linear.

    Raises:
        InputError: a missing or malformed file. VerificationError: the result differs; nothing
            is written.
    """
    t0 = time.perf_counter()
    original = load_onnx(src)
    cleaned = simplify(original, optimize=False)
    res = optimize_model(cleaned, fold_layernorm_affine=fold_layernorm_affine)
    result = simplify(res.model, optimize=True) if polish else res.model
    full_check(result, "optimized model")
    max_diff = rel = None
    if verify:
        rep = check_equivalence(original, result)
        max_diff, rel = rep.max_abs_diff, rep.rel_diff
    save_model(result, out)
    return OptimizedFile(
        input=str(src), out=str(out), nodes_before=len(original.graph.node), nodes_after=len(result.graph.node),
        ops_before=op_counts(original), ops_after=op_counts(result), max_abs_diff=max_diff, rel_diff=rel,
        applied=dict(res.applied), decisions=list(res.decisions), refusals=list(res.refusals),
        seconds=time.perf_counter() - t0)


__all__ = ["OptimizedFile", "optimize_file"]
