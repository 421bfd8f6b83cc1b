"""`updp blocks`: a model's recognized blocks, with params, MACs and, on request, each block's
share of ONNX Runtime time (profiler, ORT_ENABLE_ALL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from updp.blocks.discover import find_blocks
from updp.exporter.scopes import aggregate_by_block, label_index, scopes_of
from updp.exporter.torch_export import simplify, torch_to_onnx
from updp.latency.profile import profile_nodes
from updp.latency.runner import LatencySetup
from updp.models.zoo import check_input_size, create_model
from updp.workflows.config import BlocksConfig


@dataclass
class BlocksReport:
    """A model's recognized blocks (and, measured, each block's share of ORT time)."""

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
                         "blocks of timm and torchvision; register your own with updp.blocks.register_block)")
        if self.latency_share is not None:
            lines.append(f"ORT time: share of {self.latency_ms:.2f} ms per run (profiler, "
                         f"{self.latency_setup.get('opt_level')}, threads={self.latency_setup.get('threads')})")
        return "\n".join(lines)


def list_blocks(cfg: BlocksConfig) -> BlocksReport:
    """Recognized blocks with params and MACs; with `cfg.latency`, each block's share of ORT time."""
    module, spec = create_model(cfg.model, input_size=cfg.input_size, **cfg.model_kwargs)
    chw = tuple(spec.input_size)
    if cfg.input_size is not None:
        chw = (chw[0], *cfg.input_size)
    check_input_size(module, spec, chw)
    module.eval()
    blocks = find_blocks(module, (1, *chw))
    report = BlocksReport(model=spec.spec, input_shape=(1, *chw), blocks=blocks)
    if cfg.latency:
        proto = simplify(torch_to_onnx(module, (1, *chw)), optimize=False)
        setup = LatencySetup(threads=cfg.threads, opt_level="all", warmup=5)
        nodes = profile_nodes(proto, setup, runs=20)
        scopes = scopes_of((b.index, b.name) for b in blocks)
        prof = aggregate_by_block(nodes, scopes)
        report.latency_share = {label_index(k): prof.get(k).share for k in scopes}
        report.latency_ms = prof.total_us / 1000.0
        report.latency_setup = setup.to_dict()
    return report


__all__ = ["BlocksReport", "list_blocks"]
