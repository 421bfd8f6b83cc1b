"""A prune plan: which blocks of which model are pruned, as typed, versioned data.

A plan round-trips through JSON, so users can save it, read it, edit it and reuse it:

    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, 64, 64), blocks=[1, 3], lam=1.0)
    PrunePlan.from_json(plan.to_json()) == plan
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from updp.blocks.convert import add_alphas, apply_pruning, drop_blocks
from updp.blocks.discover import BlockInfo, find_blocks
from updp.blocks.registry import SHORTCUT_IDENTITY
from updp.core.errors import InputError
from updp.core.io import write_text_atomic
from updp.models.zoo import same_model

SCHEMA_VERSION = 1
DROP_OPTION = "drop"  # block option of a plan whose blocks are removed (the block-drop ablation)
# Block option of a plan trained by Layer-Folding: its blocks carry the (folded) α parameters.
LAYERFOLD_OPTION = "layerfold_alphas"
METHOD_OPTIONS = (DROP_OPTION, LAYERFOLD_OPTION)
_OPTIONAL_RECORDS = ("search", "scores", "latency", "supernet")


@dataclass
class PrunePlan:
    """Which blocks to prune.

    Attributes:
        model: model spec string, e.g. 'timm:convnext_atto' (see `updp.models.create_model`).
        model_kwargs: constructor kwargs (e.g. `{"img_size": 32, "patch_size": 4}`).
        num_classes: classifier size, None for the model's default.
        input_size: (C, H, W) the blocks were listed at.
        blocks: block indices from `find_blocks` (stable indices over recognized blocks).
        block_names: the module paths of those blocks (a check against a different model).
        lam: λ the blocks are set to (1.0 for the mergeable form).
        selection_rule: how the blocks were chosen (e.g. 'manual', 'evolutionary:latency<=5ms').
        block_options: family options passed to `apply_pruning` (`swap_at_start`, `prune_norm1`).
        notes: free text.
        schema_version: format version; files with another version are refused.
        search: how a search chose the blocks (method, target, candidates, budget, seed, timings);
            None for a plan not made by `updp search`.
        scores: the evidence for the choice (holdout accuracy of the pick, of the baseline, of
            random picks of the same size; the top subnets scored).
        latency: predicted speedup (latency table) and the full-model measurement of the pick,
            with the latency setups.
        supernet: the supernet training summary.

    The last four are optional additions to version 1: absent from the JSON when None, so plans
    without them are byte-for-byte what earlier versions wrote, and older plans load unchanged.
    """

    model: str
    input_size: tuple[int, ...]
    blocks: list[int]
    block_names: list[str] = field(default_factory=list)
    lam: float = 1.0
    selection_rule: str = "manual"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    block_options: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    schema_version: int = SCHEMA_VERSION
    search: dict[str, Any] | None = None
    scores: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    supernet: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.input_size = tuple(int(s) for s in self.input_size)
        self.blocks = [int(b) for b in self.blocks]
        self.block_names = [str(n) for n in self.block_names]
        self.lam = float(self.lam)
        if self.block_names and len(self.block_names) != len(self.blocks):
            raise InputError(f"prune plan: {len(self.blocks)} blocks but {len(self.block_names)} block names")
        if not 0.0 <= self.lam <= 1.0:
            raise InputError(f"prune plan: lam must be in [0, 1], got {self.lam}")
        for name in _OPTIONAL_RECORDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise InputError(f"prune plan: {name} must be a JSON object or absent")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        for name in _OPTIONAL_RECORDS:
            if d[name] is None:
                del d[name]
        return d

    @property
    def is_drop(self) -> bool:
        """A plan of the block-drop ablation: its blocks are removed, not linearized."""
        return bool(self.block_options.get(DROP_OPTION, False))

    def family_options(self) -> dict[str, Any]:
        """The options for `apply_pruning`: the block options without the method markers (drop,
        Layer-Folding's α's), which say how the plan was trained, not how a block is converted."""
        return {k: v for k, v in self.block_options.items() if k not in METHOD_OPTIONS}

    def check_against(self, model: nn.Module, *, model_name: str | None = None) -> list[BlockInfo]:
        """The one check that a plan fits a model; the `BlockInfo`s of its blocks.

        Args:
            model: the unpruned model the plan is to be applied to.
            model_name: the model's spec (e.g. from its checkpoint); when given, it must name
                the plan's model.

        Raises:
            InputError: another model; a block index out of range; a recorded block name that
                differs from the model's block at that index (a plan for another model); a block
                that cannot be pruned (or, for a drop plan, has no identity shortcut to keep).
                One line, naming the block.
        """
        if model_name is not None and not same_model(self.model, model_name):
            raise InputError(f"the prune plan is for {self.model}, the model is {model_name}")
        found = find_blocks(model)
        out = []
        for k, i in enumerate(self.blocks):
            if not 0 <= i < len(found):
                raise InputError(f"prune plan: block {i} does not exist: {self.model} has {len(found)} "
                                 f"recognized blocks (0..{len(found) - 1})")
            info = found[i]
            if self.block_names and self.block_names[k] != info.name:
                raise InputError(f"prune plan: block {i} is {info.name!r} in this model, the plan names "
                                 f"{self.block_names[k]!r} (a plan for another model?)")
            if self.is_drop and info.shortcut != SHORTCUT_IDENTITY:
                raise InputError(f"prune plan: block {i} ({info.name}) has a {info.shortcut} shortcut, not an "
                                 "identity: it cannot be dropped")
            if not self.is_drop and not info.prunable:
                raise InputError(f"prune plan: block {i} ({info.name}) is not prunable: {info.reason}")
            out.append(info)
        return out

    def apply(self, model: nn.Module, *, model_name: str | None = None) -> None:
        """Give `model` the structure the plan describes, in place: its blocks pruned at `lam`, or
        (a drop plan) removed. Checked first with `check_against`."""
        self.check_against(model, model_name=model_name)
        if self.is_drop:
            drop_blocks(model, list(self.blocks))
        else:
            apply_pruning(model, self.blocks, lam=self.lam, **self.family_options())
            if self.block_options.get(LAYERFOLD_OPTION):
                add_alphas(model)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> PrunePlan:
        if not isinstance(d, dict):
            raise InputError("prune plan: expected a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"prune plan: unsupported schema_version {version!r} (this updp reads "
                             f"version {SCHEMA_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"prune plan: unknown field(s) {', '.join(unknown)}")
        missing = [k for k in ("model", "input_size", "blocks") if k not in d]
        if missing:
            raise InputError(f"prune plan: missing field(s) {', '.join(missing)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise InputError(f"prune plan: malformed field: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"prune plan: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d)

    def save(self, path: str) -> None:
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str) -> PrunePlan:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise InputError(f"cannot read prune plan {path}: {e.strerror}") from None
        return cls.from_json(text)
