"""Optimize an ONNX file someone brings: upgrade its opset, clean up, fold norms, merge linear
chains, verify, write.

The same passes as updp's own exports, and the same guarantee: the result is checked against the
input *as given* (before any upgrade) in ONNX Runtime with graph optimizations off, on the user's
inputs or on generated ones that are valid for the graph (`updp.feeds`), and nothing is written
unless it matches.

What is handled, and how:

* **Old opsets**: a default-domain opset below what the passes read (`MIN_OPSET`) is converted
  with onnx's version converter (and the IR version raised to one that opset needs), before any
  expensive step; a conversion the converter cannot do is refused (exit 3) with its reason.
* **Every dtype**: the passes rewrite float math only (float16/bfloat16/float/double); integer,
  bool and string tensors pass through untouched. The check uses a tolerance per float dtype
  (`updp.verify.TOLERANCES`).
* **Subgraphs** (If, Loop, Scan bodies): left as they are. The passes see the main graph; a tensor
  a subgraph reads counts as used, so nothing it needs is removed or renamed.
* **Models over 2 GB** (protobuf's limit): read with their external data; written with the tensors
  in a data file beside the output (`updp.exporter.torch_export.staged_model`), and checked as
  files, never serialized into one protobuf.
* **A graph that folds to constants** (onnxsim evaluates every node): nothing is left to merge; the
  folded model is kept when ORT runs it, else the input is optimized as it is.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter

from updp.core.errors import InputError, UnsupportedError, VerificationError, first_line
from updp.exporter.torch_export import full_check, save_model, simplify, staged_model
from updp.feeds import generate_feeds, load_feeds
from updp.onnx_passes import infer_types, optimize_model
from updp.onnx_passes.pipeline import MIN_OPSET
from updp.ort import is_large, load_onnx, make_session
from updp.verify import check_equivalence


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """{op type: node count}, sorted by op type."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def default_opset(model: onnx.ModelProto | onnx.FunctionProto) -> int | None:
    """The default-domain ("" or "ai.onnx") opset a model (or a model-local function) imports, None
    when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_opset(model: onnx.ModelProto, target: int = MIN_OPSET) -> tuple[onnx.ModelProto, str | None]:
    """The model at default-domain opset >= `target` (converted when older), and what was done.

    Raises:
        UnsupportedError: the version converter cannot convert the model (its reason, one line).
    """
    version = default_opset(model)
    if version is None or version >= target:
        return model, None
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError/ConvertError variants
        first = first_line(exc)
        raise UnsupportedError(f"default-domain opset {version} is older than the passes read ({target}), and "
                               f"onnx's version converter cannot convert this model: {first}") from None
    # The converter drops the model's local functions: they go back, lifted to the new opset (the
    # conversion check runs the result).
    if model.functions and not converted.functions:
        converted.functions.extend(_lifted_function(f, target) for f in model.functions)
    # The IR version the new default-domain opset needs (the converter leaves the other domains,
    # whose versions onnx may not know, as they were).
    needed = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)])
    converted.ir_version = max(converted.ir_version, needed)
    before, after = _interface(model), _interface(converted)
    if before != after:
        changed = next(f"{a[0]} {a[1]} -> {b[1]}" for a, b in zip(before, after) if a != b) \
            if len(before) == len(after) else f"{len(before)} -> {len(after)} inputs and outputs"
        raise UnsupportedError(f"converting default-domain opset {version} to {target} changes the model's inputs "
                               f"or outputs ({changed}): an op of this opset changed its signature since; "
                               "re-export the model at opset >= 13")
    return converted, f"opset {version} -> {target} (onnx version converter)"


def _lifted_function(function: onnx.FunctionProto, target: int) -> onnx.FunctionProto:
    """`function` converted to default-domain opset `target`. ONNX wants a function's opsets to be
    the model's, and onnx's version converter converts graphs, not function bodies: the body goes
    through it as a graph of its own (the conversion check then runs the whole model).

    Raises:
        UnsupportedError: the converter cannot convert the body (its reason, one line).
    """
    version = default_opset(function)
    if version is None or version >= target:
        return function
    body = onnx.helper.make_graph(list(function.node), function.name,
                                  [onnx.ValueInfoProto(name=n) for n in function.input],
                                  [onnx.ValueInfoProto(name=n) for n in function.output])
    as_model = onnx.helper.make_model(body, opset_imports=list(function.opset_import))
    try:
        converted = version_converter.convert_version(as_model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError/ConvertError variants
        raise UnsupportedError(f"the model-local function {function.domain}:{function.name} imports opset {version}, "
                               f"and onnx's version converter cannot convert its body to {target}: "
                               f"{first_line(exc)}; re-export the model at opset >= 13") from None
    lifted = onnx.FunctionProto()
    lifted.CopyFrom(function)
    del lifted.node[:]
    lifted.node.extend(converted.graph.node)
    for entry in lifted.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return lifted


def _interface(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, type) of every graph input and output: what a caller feeds and reads."""
    return [(vi.name, str(vi.type).replace("\n", " ")) for vi in (*model.graph.input, *model.graph.output)]


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
    conversion: str | None = None
    inputs: str = "generated"
    # where the check ran: "onnxruntime" (graph optimizations off), or onnx's reference evaluator
    # for a model ONNX Runtime cannot load or run
    verified_with: str | None = None
    notes: list[str] = field(default_factory=list)
    # int8 / float16 files made from this one (`updp.workflows.precision.DerivedFile`)
    derived: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def format_summary(self) -> str:
        lines = [f"wrote {self.out}", f"  nodes {self.nodes_before} -> {self.nodes_after}"]
        if self.conversion:
            lines.append(f"  upgraded: {self.conversion}")
        changed = sorted(set(self.ops_before) | set(self.ops_after))
        diffs = [f"{op} {self.ops_before.get(op, 0)}->{self.ops_after.get(op, 0)}" for op in changed
                 if self.ops_before.get(op, 0) != self.ops_after.get(op, 0)]
        if diffs:
            lines.append("  ops: " + ", ".join(diffs))
        if self.applied:
            lines.append("  rewrites: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.applied.items())))
        if self.max_abs_diff is not None:
            where = ("ORT, optimizations off" if self.verified_with in (None, "onnxruntime")
                     else f"{self.verified_with}: ONNX Runtime does not run this model")
            lines.append(f"  verified ({where}, {self.inputs} inputs): max abs diff "
                         f"{self.max_abs_diff:.2e} (relative {self.rel_diff:.2e})")
        else:
            lines.append("  NOT verified (--no-verify)")
        lines += [f"  note: {n}" for n in self.notes]
        if self.refusals:
            lines.append(f"  {len(self.refusals)} rewrites refused (see --json or -v for reasons)")
        lines += [f.format_summary() for f in self.derived]
        lines.append(f"  done in {self.seconds:.1f} s")
        return "\n".join(lines)


def _check_input(model: onnx.ModelProto, src: str | Path) -> None:
    """A file that fails onnx's full check is bad input (exit 2), named, before any work."""
    try:
        onnx.checker.check_model(str(src) if is_large(model) else model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError; ValueError from its C++ core for codes it does not know
        first = first_line(exc, "invalid model")
        raise InputError(f"{src} fails onnx's full check: {first}") from None


# How many copies of its largest computed tensor `updp optimize` holds at its peak: onnxsim folds a
# constant one into an initializer (ORT's result, numpy's, the protobuf's), the passes and the
# written file hold the model, and the check holds both models' outputs of every trial and float64
# copies to compare (measured: 20x for a 256 MiB ConstantOfShape).
PEAK_COPIES = 32


def memory_budget() -> int:
    """The bytes this process may use: physical memory, or the address-space limit when lower."""
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource  # optional: POSIX only

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, soft)
    return budget


def _refuse_huge_tensors(model: onnx.ModelProto, src: str | Path) -> None:
    """Refuse (exit 3), before any work allocates it, a model that computes a tensor whose
    `PEAK_COPIES` would not fit in `memory_budget()`: a ConstantOfShape or an Expand of a few GB is
    a few bytes of file. The model's own weights and inputs do not count: they are what the file
    holds (and generated inputs have their own bound, `updp.feeds`)."""
    limit = memory_budget() // PEAK_COPIES
    given = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    for name, (elem_type, shape) in infer_types(model).items():
        if name in given or shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
        except (KeyError, TypeError, ValueError):  # an undefined or string type: count a byte per element
            itemsize = 1
        nbytes = math.prod(shape) * itemsize
        if nbytes > limit:
            raise UnsupportedError(f"{src}: tensor {name!r} of shape {list(shape)} would take {nbytes / 2**30:.3g} "
                                   f"GiB; updp optimize holds up to {PEAK_COPIES} copies of a computed tensor, which "
                                   f"this machine's {memory_budget() / 2**30:.3g} GiB cannot fit")


def _simplified(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """onnxsim's clean-up; a graph it folds to constants is kept only when ORT can run it."""
    cleaned = simplify(model, optimize=False)
    if cleaned.graph.node:
        return cleaned
    try:
        make_session(cleaned, opt_level="disable", threads=1)
    except InputError:
        notes.append("onnxsim folds every node to a constant, which ONNX Runtime cannot load: kept unfolded")
        return model
    notes.append("onnxsim folds every node to a constant: nothing left to merge")
    return cleaned


def _check_conversion(original: onnx.ModelProto, converted: onnx.ModelProto, feeds: list[dict],
                      conversion: str, inputs_given: bool) -> None:
    """The version converter's result must compute what the original does (it has bugs of its own),
    else the conversion is refused (exit 3): a wrong model is never passed on as an optimization.

    Each model runs on the first runtime that runs it (ONNX Runtime no longer runs some old
    opsets; onnx's reference evaluator runs every one), and the optimized model is then checked
    against the converted one on the same runtime: original = converted = optimized."""
    try:
        rep = check_equivalence(original, converted, feeds=feeds, raise_on_failure=False, same_runtime=False,
                                what="the converted model", inputs_given=inputs_given)
    except VerificationError as exc:  # the converted model does not load or run where the original does
        raise UnsupportedError(f"{conversion} is refused: {exc}; re-export the model at opset >= 13") from None
    if not rep.passed:
        raise UnsupportedError(f"{conversion} changes the model's outputs ({rep.failures[0]}): re-export the "
                               "model at opset >= 13")


def optimize_file(src: str | Path, out: str | Path, *, verify: bool, polish: bool, fold_layernorm_affine: bool,
                  inputs: str | Path | None = None, feeds: list[dict] | None = None,
                  derive: Callable[[onnx.ModelProto], list] | None = None) -> OptimizedFile:
    """Optimize any ONNX file (see the module docstring) and write it atomically.

    Args:
        src: the input file.
        out: destination.
        verify: compare with the input in ORT (optimizations off) before writing.
        polish: onnxsim's optimizer after the passes.
        fold_layernorm_affine: also fold LayerNorm affines into the next linear.
        inputs: the user's inputs for the check: an .npz, or a folder of onnx test-data .pb files.
        feeds: the same as input dicts (the Python API); `inputs` and `feeds` exclude each other.
        derive: makes further files from the checked result (int8, float16), before anything is
            written: `derive(model) -> [(item with .out, model)]`; they are written after `out`.

    Raises:
        InputError: a missing, malformed or invalid file, or inputs that do not fit it.
        UnsupportedError: an opset the converter cannot upgrade, a computed tensor too large for
            the memory (`PEAK_COPIES`), or valid inputs for the check
            cannot be generated (give `inputs`).
        VerificationError: the result differs; nothing is written.
    """
    t0 = time.perf_counter()
    original = load_onnx(src)
    _check_input(original, src)
    _refuse_huge_tensors(original, src)
    work, conversion = upgrade_opset(original)
    if inputs is not None and feeds is not None:
        raise InputError("give the check's inputs once: a file (inputs) or arrays (feeds)")
    source = str(inputs) if inputs is not None else ("given" if feeds is not None else "generated")
    if inputs is not None:
        feeds = load_feeds(inputs, original)
    elif verify and feeds is None:
        feeds = generate_feeds(original)  # refuses before any expensive step when it cannot
    if conversion and verify:
        _check_conversion(original, work, feeds, conversion, inputs_given=source != "generated")
    summary = OptimizedFile(input=str(src), out=str(out), nodes_before=len(original.graph.node), nodes_after=0,
                            ops_before=op_counts(original), ops_after={}, max_abs_diff=None, rel_diff=None, applied={},
                            decisions=[], refusals=[], seconds=0.0, conversion=conversion, inputs=source)
    overridable = _overridable_initializers(original)
    if overridable:
        listed = ", ".join(overridable[:5]) + (f" and {len(overridable) - 5} more" if len(overridable) > 5 else "")
        summary.notes.append(f"{len(overridable)} initializer(s) were also graph inputs (overridable: {listed}); "
                             "they are constants of the output, no longer inputs, so that they can be folded")
    reference = work if conversion else src
    del original
    notes = list(summary.notes)
    try:
        made = _write_checked(work, reference, out, summary, feeds, verify=verify, polish=polish,
                              fold_layernorm_affine=fold_layernorm_affine, derive=derive)
    except VerificationError as exc:
        if not (polish and verify):
            raise
        # onnxsim's optimizer is not updp's algebra and has rewrites of its own that can change the
        # outputs (a model-local function named like an ONNX op taken for that op, an infinite
        # scale folded into a Conv): the passes alone are checked before anything is refused.
        what = (first_line(exc).removeprefix("the optimized model differs from the reference: ")
                .removesuffix("; no output was written"))
        summary.notes = [*notes, f"onnxsim's optimizer changed the outputs ({what}): written without it, the "
                                 "passes alone"]
        again = reference if conversion else upgrade_opset(load_onnx(src))[0]  # `work` was rewritten in place
        made = _write_checked(again, reference, out, summary, feeds, verify=verify, polish=False,
                              fold_layernorm_affine=fold_layernorm_affine, derive=derive)
    for item, model in made:
        save_model(model, item.out)
        summary.derived.append(item)
    summary.seconds = time.perf_counter() - t0
    return summary


def _overridable_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializers that are also graph inputs: a caller may feed them instead of the stored value
    (every initializer of an IR < 4 file is one). The output takes them as the constants they hold."""
    stored = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in stored]


def _write_checked(work: onnx.ModelProto, reference: onnx.ModelProto | str | Path, out: str | Path,
                   summary: OptimizedFile, feeds: list[dict] | None, *, verify: bool, polish: bool,
                   fold_layernorm_affine: bool, derive: Callable[[onnx.ModelProto], list] | None) -> list:
    """Rewrite `work`, stage it at `out`, check it as that file against `reference`, then move it
    into place; returns the derived files (written by the caller). Nothing is moved on a failure."""
    result = _rewrite(work, summary, polish=polish, fold_layernorm_affine=fold_layernorm_affine,
                      keep_input=reference is work)
    del work
    with staged_model(result, out) as staged:  # checked as the file it will be: external data and all
        del result  # a model past 2 GB is checked from its file; its copy in memory is not needed
        full_check(staged, "optimized model")
        if verify:
            rep = check_equivalence(reference, staged, feeds=feeds, inputs_given=summary.inputs != "generated")
            summary.max_abs_diff, summary.rel_diff, summary.verified_with = rep.max_abs_diff, rep.rel_diff, rep.runtime
        return _derived(staged, derive)


def _derived(staged: Path, derive: Callable[[onnx.ModelProto], list] | None) -> list:
    if derive is None:
        return []
    model = onnx.load(str(staged), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise UnsupportedError("int8 and float16 files of a model over 2 GB are not supported: optimize it "
                               "without --quantize/--fp16")
    return derive(model)


def _rewrite(work: onnx.ModelProto, summary: OptimizedFile, *, polish: bool, fold_layernorm_affine: bool,
             keep_input: bool) -> onnx.ModelProto:
    """onnxsim's clean-up, the passes, the polish; what they did goes into `summary`."""
    cleaned = _simplified(work, summary.notes)
    res = None
    if default_opset(cleaned) is None:
        summary.notes.append("the model imports no default-domain (ai.onnx) opset: nothing for the passes to "
                             "rewrite")
    elif cleaned.graph.node:
        # In place, unless `work` is still the reference of the check (a converted model): a model
        # of several GB is then not held twice.
        res = optimize_model(cleaned, fold_layernorm_affine=fold_layernorm_affine,
                             in_place=cleaned is not work or not keep_input)
    result = res.model if res is not None else cleaned
    if polish and res is not None:
        result = simplify(result, optimize=True)
    if res is not None:
        summary.applied, summary.decisions = dict(res.applied), list(res.decisions)
        summary.refusals = list(res.refusals)
    summary.nodes_after, summary.ops_after = len(result.graph.node), op_counts(result)
    return result


__all__ = ["OptimizedFile", "default_opset", "optimize_file", "upgrade_opset"]
