"""A prune plan: which blocks of which model are pruned, as typed, versioned data.

A plan round-trips through JSON, so users can save it, read it, edit it and reuse it:

    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, 64, 64), blocks=[1, 3], lam=1.0)
    PrunePlan.from_json(plan.to_json()) == plan
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from updp.errors import InputError

SCHEMA_VERSION = 1


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

    def __post_init__(self) -> None:
        self.input_size = tuple(int(s) for s in self.input_size)
        self.blocks = [int(b) for b in self.blocks]
        self.block_names = [str(n) for n in self.block_names]
        self.lam = float(self.lam)
        if self.block_names and len(self.block_names) != len(self.blocks):
            raise InputError(f"prune plan: {len(self.blocks)} blocks but {len(self.block_names)} block names")
        if not 0.0 <= self.lam <= 1.0:
            raise InputError(f"prune plan: lam must be in [0, 1], got {self.lam}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

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
        from updp._io import write_text_atomic

        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str) -> PrunePlan:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise InputError(f"cannot read prune plan {path}: {e.strerror}") from None
        return cls.from_json(text)
