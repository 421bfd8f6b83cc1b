"""Kill anywhere: `updp train` and `updp run` SIGKILLed at many points, then resumed.

Each kill point runs a command in a subprocess through `tests/kill_driver.py`, which wraps one
function the command calls anyway (the trainer's step, `torch.save`, `os.replace`, `onnx.save`,
`Path.write_text`, the pipeline's stage runner, a workflow call) and SIGKILLs the process at its
Nth call: before it, right after it, or after cutting the file it wrote in half (what a kill in the
middle of a write leaves). Then the command is resumed (`updp train ... --resume`,
`updp run --resume DIR`) and the run directory is checked against an uninterrupted run:

1. the same results, bit for bit where the run is deterministic: checkpoints (weights, optimizer,
   history), ONNX models, plan, latency table, eval accuracies, every result record; only
   timings, content hashes of files that hold timings, and benchmark measurements are left out.
   The search's latency table is a fixed function of the block index (`fake_latency` in the
   driver), because real timings decide ties in the search;
2. no finished epoch lost: the resumed process trains exactly the epochs after the last
   checkpoint on disk at the kill, the history of the epochs before is kept as it was (timings
   and all: not retrained), and the per-epoch logs hold every epoch once;
3. nothing stray: after the resumed run no temporary file or folder (hidden names) and no
   unreferenced ONNX data file is left, the run directory holds exactly the files of an
   uninterrupted run; and right after the kill, every file at a final path is whole.

A fixed sample of two points (one per command) runs by default (`test_kill_sample`); `-m kill` runs every point
(`test_kill_point`). A run is tiny (a thin 5-block convnext_atto on the bundled 8×8 digits at
32×32, 2 steps per epoch): this checks the bookkeeping, not the training.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch

from updp.pipeline.config import (
    BaselineSection,
    BenchSection,
    DataSection,
    ModelSection,
    PruneSection,
    RunConfig,
    SearchSection,
)

DRIVER = Path(__file__).with_name("kill_driver.py")
SMALL_ATTO = ["--model-kwarg", "dims=[16,32,48,64]", "--model-kwarg", "depths=[1,1,2,1]"]
TRAIN_EPOCHS = 3
# Keys whose values are measurements of time, hashes of files that hold some, or whether the command
# was told to resume: never compared.
UNCOMPARED = {"seconds", "train_seconds", "seconds_stage", "seconds_per_epoch", "timings", "started", "finished",
              "attempts", "input_hash", "sha256", "resumed", "resume"}
# Files that hold benchmark measurements, or render them: only their presence is compared.
MEASURED = {"bench/bench.json", "bench/result.json", "report.md", "report.html", "figures/tradeoff.png",
            "figures/blocks.png"}
DATA_FILE = re.compile(r"\.[0-9a-f]{8}\.data$")


def run_config() -> RunConfig:
    """Every stage, at the smallest size that still runs them for real (2 epochs of 2 steps)."""
    return RunConfig(
        device="cpu", max_steps_per_epoch=2,
        model=ModelSection(name="timm:convnext_atto", input_size=(32, 32),
                           kwargs={"dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}),
        data=DataSection(spec="digits"),
        baseline=BaselineSection(epochs=2, batch_size=32),
        search=SearchSection(target_blocks=2, epochs=2, calib_batches=1, supernet_calib_batches=1, batch_size=32,
                             random_picks=2, measure=False),
        prune=PruneSection(epochs=2, batch_size=32, calib_batches=1),
        bench=BenchSection(warmup=1, repeats=2, profile_runs=1))


# ------------------------------------------------------------------ kill points

@dataclass(frozen=True)
class KillPoint:
    """Where to kill: the driver's `kill` spec, plus how to resume and what is known to fail.

    Attributes:
        id: the test id.
        command: "train" (`updp train`, 3 epochs) or "run" (`updp run`, every stage).
        target, mode, nth, match, arg: see `tests/kill_driver.py`.
        external_data: ONNX files written with a `.data` file beside them.
        rerun: resume by running the first command again (a run killed before its config was
            saved has nothing to `--resume` from).
        xfail: the reason it fails, for a fix that belongs elsewhere (strict: it must fail).
    """

    id: str
    command: str
    target: str
    mode: str = "before"
    nth: int = 1
    match: str | None = None
    arg: int | None = None
    external_data: bool = False
    rerun: bool = False
    xfail: str | None = None

    def spec(self) -> dict:
        kill = {"target": self.target, "mode": self.mode, "nth": self.nth, "match": self.match, "arg": self.arg}
        return {"kill": kill, "fake_latency": True, "external_data": self.external_data}


STEP = "updp.training.trainer:Trainer._run_before_step"
SAVE = "torch:save"
REPLACE = "os:replace"
WRITE_TEXT = "pathlib:Path.write_text"
STAGE = "updp.pipeline.run:_run_stage"


def _temp_of(name: str) -> str:
    """The regex of a temporary file of `name` (`.<name>.<...>.tmp`), for the driver's `match`."""
    return r"/\." + re.escape(name) + r"\.[^/]*\.tmp$"


TRAIN_POINTS = [
    KillPoint("train-before-the-first-step", "train", STEP, nth=1),
    KillPoint("train-mid-epoch-2", "train", STEP, nth=4),
    KillPoint("train-checkpoint-half-written-epoch-2", "train", SAVE, "half", 2, _temp_of("base.pt"), 1),
    KillPoint("train-checkpoint-written-not-renamed-epoch-1", "train", REPLACE, "before", 1, r"/base\.pt$", 1),
    KillPoint("train-checkpoint-renamed-epoch-2", "train", REPLACE, "after", 2, r"/base\.pt$", 1),
    KillPoint("train-last-checkpoint-half-written", "train", SAVE, "half", 3, _temp_of("base.pt"), 1),
    KillPoint("train-last-checkpoint-renamed", "train", REPLACE, "after", 3, r"/base\.pt$", 1),
]
# Steps in `updp run`: baseline 1-4, supernet 5-8, prune 9-12 (2 epochs of 2 steps each).
RUN_POINTS = [
    KillPoint("run-config-half-written", "run", WRITE_TEXT, "half", 1, _temp_of("config.json"), 0, rerun=True),
    KillPoint("run-baseline-record-half-written", "run", WRITE_TEXT, "half", 1, r"/baseline" + _temp_of("stage.json"),
              0),
    KillPoint("run-baseline-mid-epoch-2", "run", STEP, nth=3),
    KillPoint("run-baseline-checkpoint-half-written", "run", SAVE, "half", 1, _temp_of("base.pt"), 1),
    KillPoint("run-baseline-checkpoint-renamed-epoch-1", "run", REPLACE, "after", 1, r"/base\.pt$", 1),
    KillPoint("run-between-baseline-and-search", "run", STAGE, "after", 1, "^baseline$", 1),
    KillPoint("run-search-latency-table-half-written", "run", WRITE_TEXT, "half", 1, _temp_of("plan.lut.json"), 0),
    KillPoint("run-supernet-mid-epoch-2", "run", STEP, nth=7),
    KillPoint("run-supernet-last-checkpoint-not-renamed", "run", REPLACE, "before", 2, r"/plan\.supernet\.pt$", 1),
    KillPoint("run-search-scoring-subnets", "run", "updp.training.scoring:SubnetScorer.__call__", nth=5),
    KillPoint("run-search-plan-half-written", "run", WRITE_TEXT, "half", 1, r"/search" + _temp_of("plan.json"), 0),
    KillPoint("run-search-result-renamed-record-not-done", "run", REPLACE, "after", 1, r"/search/result\.json$", 1),
    KillPoint("run-prune-mid-epoch-2", "run", STEP, nth=11),
    KillPoint("run-prune-checkpoint-renamed-epoch-1", "run", REPLACE, "after", 1, r"/pruned\.pt$", 1),
    KillPoint("run-prune-last-checkpoint-half-written", "run", SAVE, "half", 2, _temp_of("pruned.pt"), 1),
    KillPoint("run-export-onnx-half-written", "run", "onnx:save", "half", 1, r"/baseline\.onnx$", 1),
    KillPoint("run-export-between-the-two-models", "run", "updp.pipeline.stages:export", "after", 1),
    KillPoint("run-export-onnx-written-not-renamed", "run", REPLACE, "before", 1, r"/export/pruned\.onnx$", 1),
    KillPoint("run-export-external-data-half-written", "run", "onnx:save_model", "half", 1, r"/pruned\.onnx$", 1,
              external_data=True),
    KillPoint("run-export-data-renamed-onnx-not", "run", REPLACE, "after", 1, r"/pruned\.onnx\.[0-9a-f]{8}\.data$",
              1, external_data=True),
    KillPoint("run-eval-between-the-two-models", "run", "updp.pipeline.stages:evaluate", "after", 1),
    KillPoint("run-eval-json-half-written", "run", WRITE_TEXT, "half", 1, _temp_of("eval.json"), 0),
    KillPoint("run-bench-before-the-block-profiles", "run", "updp.pipeline.stages:block_profiles"),
    KillPoint("run-bench-record-done-half-written", "run", WRITE_TEXT, "half", 2, r"/bench" + _temp_of("stage.json"),
              0),
    KillPoint("run-report-figure-not-renamed", "run", REPLACE, "before", 1, r"/figures/blocks\.png$", 1),
    KillPoint("run-report-results-json-half-written", "run", WRITE_TEXT, "half", 1, _temp_of("results.json"), 0),
    KillPoint("run-after-the-last-stage", "run", STAGE, "after", 1, "^report$", 1),
]
POINTS = TRAIN_POINTS + RUN_POINTS
SAMPLE = ("train-checkpoint-renamed-epoch-2", "run-prune-last-checkpoint-half-written")


def _params(points):
    return [pytest.param(p, id=p.id, marks=[pytest.mark.xfail(reason=p.xfail, strict=True)] if p.xfail else [])
            for p in points]


# ------------------------------------------------------------------ running the commands

def _driver(spec: dict, argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """One command through the driver; one thread for torch, temporary files under `tmp`."""
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp / "tmpdir")}
    return subprocess.run([sys.executable, str(DRIVER), json.dumps(spec), *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def _commands(command: str, out: Path, config: Path) -> tuple[list[str], list[str]]:
    """(the first command, its resumption) writing into `out`."""
    if command == "train":
        first = ["train", "convnext_atto", *SMALL_ATTO, "--data", "digits", "--input-size", "32", "--epochs",
                 str(TRAIN_EPOCHS), "--batch-size", "32", "--max-steps-per-epoch", "2", "--device", "cpu",
                 "--no-progress", "--out", str(out / "base.pt"), "--log-jsonl", str(out / "base.log.jsonl")]
        return first, [*first, "--resume"]
    first = ["run", "--config", str(config), "--out", str(out), "--no-progress"]
    return first, ["run", "--resume", str(out), "--no-progress"]


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="session")
def kill_setup(tmp_path_factory):
    """The run config file, and the uninterrupted reference of each command (made on first use)."""
    root = tmp_path_factory.mktemp("kill")
    config = root / "run.toml"
    config.write_text(run_config().to_toml())
    refs: dict[str, Path] = {}

    def reference(command: str) -> Path:
        if command not in refs:
            out = root / f"reference-{command}"
            proc = _driver({"fake_latency": True}, _commands(command, out, config)[0], root)
            assert proc.returncode == 0, _tail(proc)
            refs[command] = out
        return refs[command]

    return config, reference


def _kill_and_resume(point: KillPoint, kill_setup, tmp_path: Path) -> None:
    config, reference = kill_setup
    ref = reference(point.command)
    out = tmp_path / "out"
    first, again = _commands(point.command, out, config)
    killed = _driver(point.spec(), first, tmp_path)
    assert killed.returncode == -signal.SIGKILL, f"the kill point was not reached: {_tail(killed)}"
    at_kill = check_whole_files(out)
    report = tmp_path / "trained.json"
    resumed = _driver({**point.spec(), "kill": None, "report": str(report)}, first if point.rerun else again,
                      tmp_path)
    assert resumed.returncode == 0, _tail(resumed)
    check_nothing_stray(out, ref)
    check_no_epoch_lost(out, ref, at_kill, json.loads(report.read_text())["epochs"])
    check_same_results(ref, out)


@pytest.mark.parametrize("point", _params([p for p in POINTS if p.id in SAMPLE]))
def test_kill_sample(point, kill_setup, tmp_path):
    _kill_and_resume(point, kill_setup, tmp_path)


@pytest.mark.kill
@pytest.mark.parametrize("point", _params(POINTS))
def test_kill_point(point, kill_setup, tmp_path):
    _kill_and_resume(point, kill_setup, tmp_path)


def test_the_points_cover_every_stage_and_kind_of_write():
    assert len(POINTS) >= 20 and len({p.id for p in POINTS}) == len(POINTS) and set(SAMPLE) <= {p.id for p in POINTS}
    ids = " ".join(p.id for p in RUN_POINTS)
    for stage in ("baseline", "search", "supernet", "prune", "export", "eval", "bench", "report"):
        assert f"run-{stage}-" in ids, stage
    for kind in ("mid-epoch", "half-written", "not-renamed", "renamed", "between"):
        assert kind in ids, kind
    assert {p.target for p in POINTS} >= {STEP, SAVE, REPLACE, WRITE_TEXT, STAGE, "onnx:save", "onnx:save_model"}


# ------------------------------------------------------------------ the checks

def _files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def _hidden(out: Path, p: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(out).parts)


def _referenced_data(out: Path) -> set[Path]:
    """The external data files the ONNX models in `out` refer to."""
    refs = set()
    for p in out.rglob("*.onnx"):
        if _hidden(out, p):
            continue
        model = onnx.load(str(p), load_external_data=False)
        for t in model.graph.initializer:
            refs.update(p.parent / e.value for e in t.external_data if e.key == "location")
    return refs


def _load_checkpoint(p: Path) -> dict:
    return torch.load(p, map_location="cpu", weights_only=True)


def check_whole_files(out: Path) -> dict[str, dict]:
    """Right after the kill: every file at a final path reads as a whole file of its kind.

    Returns the training state of each training checkpoint then on disk: {relative path: payload}.
    """
    checkpoints = {}
    for p in _files(out):
        if _hidden(out, p) or DATA_FILE.search(p.name):
            continue
        rel = str(p.relative_to(out))
        if p.suffix == ".pt":
            payload = _load_checkpoint(p)
            if "optimizer" in payload:
                checkpoints[rel] = payload
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            text = p.read_text()
            assert text.endswith("\n"), rel
            [json.loads(line) for line in text.splitlines()]
        elif p.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(p)), full_check=True)
        elif p.suffix == ".png":
            assert p.read_bytes().endswith(b"IEND\xaeB`\x82"), rel
        elif p.suffix == ".html":
            assert p.read_text().rstrip().endswith("</html>"), rel
        else:
            assert p.stat().st_size > 0, rel
    return checkpoints


def check_nothing_stray(out: Path, ref: Path) -> None:
    """No temporary file or folder, no unreferenced data file; the files of the reference, no more."""
    hidden = sorted(str(p.relative_to(out)) for p in out.rglob(".*"))
    assert hidden == [], f"left behind: {hidden}"
    data = {p for p in _files(out) if DATA_FILE.search(p.name)}
    assert data <= _referenced_data(out), f"unreferenced data files: {sorted(map(str, data - _referenced_data(out)))}"
    names = sorted(str(p.relative_to(out)) for p in _files(out) if p not in data)
    assert names == sorted(str(p.relative_to(ref)) for p in _files(ref))


def check_no_epoch_lost(out: Path, ref: Path, at_kill: dict[str, dict], trained: list) -> None:
    """The resumed process trained the epochs after those on disk at the kill, once; the epochs
    before are kept as they were; every per-epoch log holds every epoch once."""
    done = {}
    for path, epoch in trained:
        rel = str(Path(path).resolve().relative_to(out.resolve()))
        done.setdefault(rel, []).append(epoch)
    for p in _files(ref):
        if p.suffix != ".pt" or "optimizer" not in (final_ref := _load_checkpoint(p)):
            continue
        rel = str(p.relative_to(ref))
        before = at_kill.get(rel, {"epoch": 0, "history": []})
        assert done.get(rel, []) == list(range(before["epoch"], final_ref["epoch"])), rel
        final = _load_checkpoint(out / rel)
        assert final["epoch"] == final_ref["epoch"] and len(final["history"]) == final["epoch"], rel
        assert final["history"][:before["epoch"]] == before["history"], f"{rel}: an epoch was retrained"
        log = out / Path(rel).with_suffix(".log.jsonl")
        if log.is_file() or (ref / Path(rel).with_suffix(".log.jsonl")).is_file():
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert lines == final["history"], f"{log.name}: epochs {[r['epoch'] for r in lines]}"


def _normalizer(*roots: Path):
    pattern = re.compile("|".join(re.escape(str(r.resolve())) for r in roots) + "|"
                         + "|".join(re.escape(str(r)) for r in roots))
    return lambda text: pattern.sub("<OUT>", text)


def assert_same(a, b, where: str, norm) -> None:
    """`a` and `b` equal, exactly: tensors with torch.equal, strings with the run directory
    replaced, dict keys in `UNCOMPARED` skipped."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        ka, kb = set(a) - UNCOMPARED, set(b) - UNCOMPARED
        assert ka == kb, f"{where}: keys {sorted(map(str, ka ^ kb))}"
        for k in sorted(ka, key=str):
            assert_same(a[k], b[k], f"{where}.{k}", norm)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths"
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]", norm)
    elif isinstance(a, str):
        assert isinstance(b, str) and norm(a) == norm(b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _onnx_bytes(p: Path, norm) -> bytes:
    """The model with its tensors loaded (from a data file or not: onnx marks a tensor it loaded
    from one as stored inside, which a model saved whole leaves unset), paths in its metadata
    replaced."""
    model = onnx.load(str(p))
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    for t in tensors:
        if t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")
    for prop in model.metadata_props:
        prop.value = norm(prop.value)
    return model.SerializeToString()


def check_same_results(ref: Path, out: Path) -> None:
    """Every file of the reference, compared with the resumed run's (see the module docstring)."""
    norm = _normalizer(ref, out)
    for p in _files(ref):
        rel = str(p.relative_to(ref))
        q = out / rel
        if rel in MEASURED:
            continue
        if p.suffix == ".pt":
            assert_same(_load_checkpoint(p), _load_checkpoint(q), rel, norm)
        elif p.suffix == ".onnx":
            assert _onnx_bytes(p, norm) == _onnx_bytes(q, norm), f"{rel} differs"
        elif p.suffix == ".json":
            a, b = (_strip_measured(rel, json.loads(f.read_text())) for f in (p, q))
            assert_same(a, b, rel, norm)
        elif p.suffix == ".jsonl":
            assert_same([json.loads(s) for s in p.read_text().splitlines()],
                        [json.loads(s) for s in q.read_text().splitlines()], rel, norm)
        else:
            raise AssertionError(f"{rel}: no comparison for this kind of file")


def _strip_measured(rel: str, doc: dict) -> dict:
    """The report's results without the benchmark's measurements (compared everywhere else)."""
    if rel == "results.json":
        doc = dict(doc)
        doc["stages"] = {k: v for k, v in doc["stages"].items() if k != "bench"}
        doc["headline"] = {k: v for k, v in doc["headline"].items() if not k.startswith(("speedup", "median_ms"))}
    return doc
