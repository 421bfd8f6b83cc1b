"""Run the updp command line in this process and SIGKILL it at a chosen point.

    python tests/kill_driver.py SPEC_JSON ARG...      # as `updp ARG...`

`tests/test_kill_resume.py` runs every command through here, the uninterrupted references too, so
that the product code carries no test hooks: the kill point is a wrapper, installed before
`updp.cli.main` runs, around a function the command calls anyway (`os.replace`, `torch.save`,
`onnx.save`, `Path.write_text`, the trainer's step, the pipeline's stage runner, a workflow call).

SPEC_JSON keys (all optional):

    kill           {"target": "module:attr[.attr]", "mode": "before" | "after" | "half",
                    "nth": N (1-based, counted over matching calls), "arg": index of the positional
                    argument that `match` (a regex, searched) is tested on (default: any)}
                   "before": killed before the Nth matching call runs; "after": right after it
                   returns; "half": after it returns, the file it wrote (the matched argument, and
                   the external data file of `onnx.save_model(..., location=...)`) is cut to half
                   its size, then killed: what a kill in the middle of the write leaves.
    fake_latency   the search's latency table is a fixed function of the block index instead of
                   ORT timings, so that the search (ties in accuracy go to the faster subnet) and
                   its plan are deterministic.
    external_data  ONNX files are written with their tensors in a `.data` file beside them (the
                   path of models over 2 GB), whatever their size.
    report         where to write, on a normal exit, the epochs this process trained:
                   {"epochs": [[checkpoint path, 0-based epoch], ...]}.

A kill point that is never reached lets the command finish: the test sees exit status 0, not
-SIGKILL, and fails.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import signal
import sys
from pathlib import Path


def die() -> None:
    """SIGKILL this process: no handler, no `finally`, no atexit, nothing flushed but what is here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def resolve(target: str):
    """(owner object, attribute name) of 'module:attr.attr'."""
    module, _, attr = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _text(arg) -> str:
    """What `match` is tested on: a path as its string, a stage (or anything named) by its name."""
    if isinstance(arg, (str, os.PathLike)):
        return os.fspath(arg)
    name = getattr(arg, "name", None)
    return name if isinstance(name, str) else repr(arg)


def _cut_in_half(path: str | os.PathLike) -> None:
    p = Path(path)
    if p.is_file():
        os.truncate(p, p.stat().st_size // 2)


def install_kill(target: str, mode: str = "before", nth: int = 1, match: str | None = None,
                 arg: int | None = None) -> None:
    """Wrap `target` so that its `nth` call whose argument matches `match` kills the process."""
    if mode not in ("before", "after", "half"):
        raise SystemExit(f"kill_driver: unknown mode {mode!r}")
    owner, name = resolve(target)
    real = getattr(owner, name)
    pattern = re.compile(match) if match else None
    seen = [0]

    def matches(args) -> bool:
        if pattern is None:
            return True
        chosen = args if arg is None else args[arg:arg + 1]
        return any(pattern.search(_text(a)) for a in chosen)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        if not matches(args):
            return real(*args, **kwargs)
        seen[0] += 1
        if seen[0] != nth:
            return real(*args, **kwargs)
        if mode == "before":
            die()
        out = real(*args, **kwargs)
        if mode == "half":
            written = args[arg] if arg is not None else next(a for a in args if pattern is None
                                                             or pattern.search(_text(a)))
            _cut_in_half(written)
            if kwargs.get("location"):
                _cut_in_half(Path(written).parent / kwargs["location"])
        die()
        return out

    setattr(owner, name, staticmethod(wrapper) if isinstance(owner.__dict__.get(name), staticmethod)
            else wrapper)


def fake_latency() -> None:
    """The search's latency table without ORT: block i costs 10·(i+1) µs, 4·(i+1) µs pruned."""
    from updp.latency.lut import BlockLatency, LatencyLUT
    from updp.workflows import search

    def build_lut(module, input_shape, *, candidates=None, setup=None, model_label="custom", **_):
        from updp.blocks.discover import find_blocks

        blocks = find_blocks(module)
        table = [BlockLatency(index=i, name=blocks[i].name, base_us=10.0 * (i + 1), pruned_us=4.0 * (i + 1))
                 for i in candidates]
        k0 = sum(b.base_us for b in table)
        return LatencyLUT(model=model_label, input_shape=list(input_shape), blocks=table, base_ms=1.0,
                          all_pruned_ms=0.5, ms_per_kernel_us=0.5 / (k0 - sum(b.pruned_us for b in table)),
                          remainder_ms=0.0, setup=setup.to_dict() if setup is not None else {}, seconds=0.0)

    search.build_lut = build_lut


def external_data() -> None:
    from updp.exporter import torch_export

    torch_export.is_large = lambda model: True


def record_epochs() -> list:
    """Wrap the trainer's epoch so that the epochs this process trains are known at exit."""
    from updp.training.trainer import Trainer

    trained: list = []
    real = Trainer._train_epoch

    @functools.wraps(real)
    def wrapper(self, epoch):
        trained.append([self.cfg.out, epoch])
        return real(self, epoch)

    Trainer._train_epoch = wrapper
    return trained


def main() -> int:
    spec = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    trained = record_epochs()
    if spec.get("fake_latency"):
        fake_latency()
    if spec.get("external_data"):
        external_data()
    if spec.get("kill"):
        install_kill(**spec["kill"])
    from updp.cli import main as updp_main

    code = updp_main(argv)
    if spec.get("report"):
        Path(spec["report"]).write_text(json.dumps({"epochs": trained}))
    return code


if __name__ == "__main__":
    sys.exit(main())
