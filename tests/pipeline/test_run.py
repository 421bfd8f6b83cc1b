"""`updp run`: config round trips, stage skipping by content hash, downstream reruns, resume after a
kill, the report files, and the CLI's --quiet/--json.

Runs are tiny (a thin 5-block convnext_atto, the bundled 8×8 digits at 32×32, 2 steps per epoch,
a few latency rounds): they check the plumbing, not accuracy or speed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing

import onnx
import pytest

from updp.core.errors import InputError
from updp.pipeline.config import (
    BaselineSection,
    BenchSection,
    DataSection,
    ModelSection,
    PruneSection,
    RunConfig,
    SearchSection,
    demo_config,
    in_run_terms,
)
from updp.pipeline.run import StageRecord, run_pipeline

ALL = ["baseline", "search", "prune", "export", "eval", "quantize", "bench", "report"]


def tiny_config(**over) -> RunConfig:
    cfg = RunConfig(
        device="cpu", max_steps_per_epoch=2,
        model=ModelSection(name="timm:convnext_atto", input_size=(32, 32),
                           kwargs={"dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}),
        data=DataSection(spec="digits"),
        baseline=BaselineSection(epochs=1, batch_size=32),
        search=SearchSection(target_blocks=2, epochs=1, calib_batches=1, batch_size=32, bench_repeats=5,
                             profile_rounds=2, random_picks=2),
        prune=PruneSection(epochs=2, batch_size=32, calib_batches=1),
        bench=BenchSection(warmup=2, repeats=5, profile_runs=3))
    return cfg.replace(**over) if over else cfg


def _run(cfg, run_dir, **kw):
    return run_pipeline(cfg, run_dir, progress=False, **kw)


def _actions(outcome) -> dict[str, str]:
    return {s.stage: s.action for s in outcome.stages}


# ------------------------------------------------------------------ config (no training)

def test_config_round_trips_json_toml_yaml(tmp_path):
    cfg = tiny_config(search={"blocks": [1, 3], "target_blocks": None}, baseline={"checkpoint": "x.pt"})
    assert RunConfig.from_toml(cfg.to_toml()) == cfg
    assert RunConfig.from_json(cfg.to_json()) == cfg
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert RunConfig.load(tmp_path / "c.toml") == cfg
    yaml = pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert RunConfig.load(tmp_path / "c.yaml") == cfg
    assert RunConfig.from_toml(demo_config().to_toml()) == demo_config()
    # a partial file takes the defaults for the rest
    assert RunConfig.from_toml('[prune]\nepochs = 3\n') == RunConfig().replace(prune={"epochs": 3})


def test_optional_fields_default_to_none():
    """TOML has no null: `to_toml` leaves None out, so a field that may be None must default to None."""
    sections = [RunConfig, *(type(getattr(RunConfig(), f.name)) for f in dataclasses.fields(RunConfig)
                             if dataclasses.is_dataclass(getattr(RunConfig(), f.name)))]
    for cls in sections:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "None" in str(hints[f.name]):
                assert f.default is None, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("text, match", [
    ("version = 2\n", "version 2 is not supported"),
    ("[prune]\nepoch = 3\n", r"unknown key\(s\) in \[prune\]: \['epoch'\]"),
    ("colour = 1\n", "unknown key"),
    ("[search]\ntarget_blocks = 2\ntarget_speedup = 1.2\n", "not both"),
    ("[bench]\nopt_levels = ['fast']\n", "unknown optimization level"),
    ("[model\n", "not valid TOML"),
    ("amp = 'fp16'\n", "amp must be 'off' or 'bf16'"),
])
def test_bad_config_is_one_line(text, match):
    with pytest.raises(InputError, match=match) as e:
        RunConfig.from_toml(text)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ a whole run

@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    outcome = _run(tiny_config(), run_dir)
    return run_dir, outcome


def test_full_run_writes_every_stage_and_the_report(done_run):
    run_dir, outcome = done_run
    assert _actions(outcome) == dict.fromkeys(ALL, "ran")
    for stage in ALL:
        rec = StageRecord.read(run_dir / stage / "stage.json")
        assert rec.status == "done" and len(rec.input_hash) == 64
        assert bool(rec.outputs) == (stage != "quantize")  # off by default: nothing written
    assert RunConfig.from_json((run_dir / "config.json").read_text()) == tiny_config()
    for name in ("report.md", "report.html", "results.json", "figures/tradeoff.png", "figures/blocks.png"):
        assert (run_dir / name).is_file(), name
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<style>" in html and "src=\"figures" not in html
    md = (run_dir / "report.md").read_text()
    assert "![accuracy vs latency](figures/tradeoff.png)" in md and "ORT_ENABLE_ALL" in md
    res = json.loads((run_dir / "results.json").read_text())
    hl = res["headline"]
    assert hl["speedup_all"] > 0 and hl["speedup_disable"] > 0 and len(hl["pruned_blocks"]) == 2
    assert hl["max_abs_diff"] is not None and 0 <= hl["baseline_acc"] <= 1
    assert res["stages"]["search"]["searched"] and len(res["stages"]["search"]["random_picks"]) == 2
    profiles = res["stages"]["bench"]["profiles"]
    assert [b["label"] for b in profiles["baseline"]["blocks"]][:5] == [
        "0 stages.0.blocks.0", "1 stages.1.blocks.0", "2 stages.2.blocks.0", "3 stages.2.blocks.1",
        "4 stages.3.blocks.0"]


def test_second_run_does_nothing(done_run):
    run_dir, _ = done_run
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = _run(None, run_dir, resume=True)
    assert _actions(again) == dict.fromkeys(ALL, "skipped")
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    changed = sorted(str(p.relative_to(run_dir)) for p in after if before.get(p) != after[p])
    assert changed == ["config.json"]  # rewritten with the same content
    assert again.headline() == json.loads((run_dir / "results.json").read_text())["headline"]


def test_changed_input_reruns_that_stage_and_those_after_it(done_run, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)
    # explicit blocks: the search stage writes a manual plan (no supernet), prune and later rerun
    cfg = tiny_config(search={"blocks": [1, 3], "target_blocks": None})
    out = _run(cfg, run_dir)
    assert _actions(out) == {"baseline": "skipped", **dict.fromkeys(ALL[1:], "ran")}
    assert out.results["search"]["searched"] is False and out.results["prune"]["plan"]["blocks"] == [1, 3]
    assert "no search" in out.results["search"]["rule"] and "manual" in (run_dir / "report.md").read_text()
    # only the bench settings change: bench and report rerun
    out = _run(cfg.replace(bench={"repeats": 4}), run_dir)
    assert [s.stage for s in out.stages if s.action == "ran"] == ["bench", "report"]
    # a deleted output is noticed
    (run_dir / "export" / "pruned.onnx").unlink()
    out = _run(cfg.replace(bench={"repeats": 4}), run_dir)
    # the ONNX files come back byte for byte, so eval and bench keep their inputs; the report reruns
    # because the export's result (its timings) changed
    assert out.ran == ["export", "report"]


def test_quantize_stage_writes_int8_files_and_the_report_compares_four_files(done_run, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)
    # two training steps: the accuracy is a mechanics check, so no drop limit applies here
    out = _run(tiny_config(precision={"quantize": "int8", "calib_images": 32, "max_accuracy_drop": 100.0},
                           bench={"batch": [1, 2]}), run_dir)
    assert out.ran == ["quantize", "bench", "report"]
    q = out.results["quantize"]
    assert q["enabled"] and sorted(q["files"]) == ["baseline.int8", "pruned.int8"]
    for key in ("baseline", "pruned"):
        item = q[f"{key}.int8"]
        assert (run_dir / q["files"][f"{key}.int8"]).is_file() and item["verified"] is False
        assert item["float_accuracy"] == out.results["eval"][key]["acc"]  # the same file, the same split
    timed = {r["model"] for r in out.results["bench"]["bench"]["results"]}
    assert timed == {"baseline", "pruned", "baseline.int8", "pruned.int8"}
    rows = json.loads((run_dir / "results.json").read_text())["precision"]
    assert [(r["file"], r["precision"]) for r in rows] == [("baseline", "fp32"), ("pruned", "fp32"),
                                                           ("baseline.int8", "int8"), ("pruned.int8", "int8")]
    assert rows[0]["speedup"] == 1.0 and all(r["median_ms"] > 0 and r["acc"] is not None for r in rows)
    assert out.results["bench"]["batches"]["batches"] == [1, 2]  # the batch-1 files, rebatched and checked
    md = (run_dir / "report.md").read_text()
    assert "int8 and float16 files: accuracy vs latency" in md and "no (not exact)" in md
    assert "Batch 2:" in md


def test_an_int8_file_over_the_drop_limit_stops_the_run_naming_the_run_configs_keys(done_run, tmp_path,
                                                                                       monkeypatch):
    """The quantize stage's refusal says what to change in a run config (`precision.max_accuracy_drop`),
    not the `updp export` flags a run does not take, and stays exit 4 with nothing written."""
    import updp.workflows.precision as precision

    def dropped(item, *args):
        item.accuracy, item.float_accuracy, item.n, item.accuracy_drop = 0.5, 0.9, 10, 40.0

    monkeypatch.setattr(precision, "_measure_accuracy", dropped)
    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)
    with pytest.raises(precision.AccuracyDropError) as info:
        _run(tiny_config(precision={"quantize": "int8", "calib_images": 32}), run_dir)
    said = str(info.value)
    assert said.startswith("baseline: the int8 file loses 40.00 points")
    assert "precision.max_accuracy_drop 1" in said and "precision.calib_method" in said
    assert "precision.calib_images" in said and "precision.keep_float" in said and "--" not in said
    assert info.value.exit_code == 4 and not (run_dir / "quantize" / "baseline.int8.onnx").exists()


def test_run_terms_rewrite_only_the_flags_that_are_keys_of_the_section():
    assert in_run_terms("--lr must be > 0, got -1", "prune") == "prune.lr must be > 0, got -1"
    # --data is the run's [data] section, not a key of [precision]; a negative number is no flag
    assert (in_run_terms("give --data and --calib-images 64, not -1 or x--calib-method", "precision")
            == "give --data and precision.calib_images 64, not -1 or x--calib-method")
    assert in_run_terms("--epochs-wrong is no key", "prune") == "--epochs-wrong is no key"


def test_fp16_files_with_float16_inputs_are_timed_beside_the_float32_ones(done_run, tmp_path):
    """`updp run --fp16` writes float16-input files (the default, no keep_io): the bench times them
    in the same rounds as the float32 files, at every batch, and the report lists them."""
    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)
    out = _run(tiny_config(precision={"fp16": True}, bench={"batch": [1, 2]}), run_dir)
    assert out.ran == ["quantize", "bench", "report"]
    q = out.results["quantize"]
    assert sorted(q["files"]) == ["baseline.fp16", "pruned.fp16"]
    written = onnx.load(str(run_dir / q["files"]["pruned.fp16"]))
    assert written.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert q["pruned.fp16"]["verified"] is True
    batches = out.results["bench"]["batches"]
    assert batches["batches"] == [1, 2] and len(batches["reports"]) == 2
    for report in batches["reports"]:
        assert {r["model"] for r in report["results"]} == {"baseline", "pruned", "baseline.fp16", "pruned.fp16"}
    rows = json.loads((run_dir / "results.json").read_text())["precision"]
    assert [(r["file"], r["precision"]) for r in rows][2:] == [("baseline.fp16", "fp16"), ("pruned.fp16", "fp16")]
    assert all(r["median_ms"] > 0 for r in rows)


def test_resume_after_a_kill_continues_training(done_run, tmp_path, monkeypatch):
    from updp.training.trainer import Trainer

    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)
    real_save, calls = Trainer.save, []

    def save_then_die(self, metrics):
        real_save(self, metrics)
        calls.append(self.epoch)
        if self.epoch == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_config(prune={"epochs": 3}), run_dir)
    rec = StageRecord.read(run_dir / "prune" / "stage.json")
    assert rec.status == "failed" and rec.error.startswith("KeyboardInterrupt")
    assert not (run_dir / "prune" / "result.json").exists()
    monkeypatch.setattr(Trainer, "save", real_save)
    out = _run(None, run_dir, resume=True)  # the saved config (prune epochs 3)
    assert _actions(out) == {"baseline": "skipped", "search": "skipped", "prune": "resumed",
                             **dict.fromkeys(ALL[3:], "ran")}
    prune = out.results["prune"]
    assert prune["resumed"] and [h["epoch"] for h in prune["history"]] == [1, 2, 3]
    assert prune["history"][-1]["lam"] == 1.0
    assert StageRecord.read(run_dir / "prune" / "stage.json").attempts == 2


def test_failing_stage_is_recorded_and_rerun(done_run, tmp_path, monkeypatch):
    from updp.pipeline import stages

    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)

    def broken(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr("updp.workflows.bench.benchmark", broken)
    with pytest.raises(RuntimeError, match="injected"):
        _run(tiny_config(bench={"repeats": 3}), run_dir)
    assert StageRecord.read(run_dir / "bench" / "stage.json").status == "failed"
    monkeypatch.undo()
    out = _run(None, run_dir, resume=True)
    assert out.ran == ["bench", "report"] and list(stages.STAGE_NAMES) == ALL


# ------------------------------------------------------------------ CLI

def test_cli_quiet_json_and_verbose(done_run, tmp_path, capsys):
    from updp.cli import main

    run_dir = tmp_path / "r"
    shutil.copytree(done_run[0], run_dir)
    assert main(["-q", "run", "--resume", str(run_dir), "--json"]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""
    payload = json.loads(cap.out)
    assert [s["action"] for s in payload["stages"]] == ["skipped"] * len(ALL) and payload["headline"]["speedup_all"] > 0
    assert main(["run", "--resume", str(run_dir), "--repeats", "3"]) == 0
    cap = capsys.readouterr()
    assert "[7/8] bench    running" in cap.err and "skipped (finished, inputs unchanged)" in cap.err
    assert "report: " in cap.out and "speedup under ORT_ENABLE_ALL" in cap.out
    assert "Warning" not in cap.err  # library chatter is hidden
    with pytest.raises(SystemExit):  # argparse: --out and --resume exclude each other
        main(["run", "--out", str(tmp_path / "x"), "--resume", str(run_dir)])
    capsys.readouterr()
    assert main(["run"]) == 2
    assert "give --out DIR" in capsys.readouterr().err


def test_cli_run_takes_the_model_a_checkpoint_of_updp_records(done_run, capsys):
    """`updp run --checkpoint base.pt` without --model builds the model the checkpoint records (its
    constructor arguments too); --input-size beside it still wins; a given --model is kept (and
    checked against the checkpoint when the baseline stage loads it)."""
    from updp.cli import main

    base = str(done_run[0] / "baseline" / "base.pt")
    assert main(["run", "--print-config", "--checkpoint", base]) == 0
    cfg = RunConfig.from_toml(capsys.readouterr().out)
    recorded = tiny_config().model
    assert (cfg.model.name, cfg.model.input_size, cfg.model.kwargs) == ("timm:convnext_atto", (32, 32), recorded.kwargs)
    assert main(["run", "--print-config", "--checkpoint", base, "--input-size", "48",
                 "--model-kwarg", "drop_path_rate=0.1"]) == 0
    cfg = RunConfig.from_toml(capsys.readouterr().out)
    assert cfg.model.input_size == (48, 48) and cfg.model.kwargs == {**recorded.kwargs, "drop_path_rate": 0.1}
    assert main(["run", "--print-config", "--checkpoint", base, "--model", "timm:resnet18"]) == 0
    assert RunConfig.from_toml(capsys.readouterr().out).model.name == "timm:resnet18"


def test_cli_print_config_and_overrides(capsys):
    from updp.cli import main

    assert main(["run", "--print-config", "--blocks", "1,3", "--data", "digits", "--checkpoint", "mine.pt",
                 "--prune-epochs", "4", "--no-kd", "--amp", "bf16"]) == 0
    cfg = RunConfig.from_toml(capsys.readouterr().out)
    assert cfg.amp == "bf16"
    assert cfg.search.blocks == [1, 3] and cfg.search.target_blocks is None and cfg.data.spec == "digits"
    assert cfg.baseline.checkpoint == "mine.pt" and cfg.baseline.epochs == 0
    assert cfg.prune.epochs == 4 and cfg.prune.kd is False
    assert cfg.precision.quantize is None and cfg.bench.batch is None  # quantize off; bench: the files' batch
    assert main(["run", "--print-config", "--quantize", "int8", "--fp16", "--batch", "1", "8"]) == 0
    cfg = RunConfig.from_toml(capsys.readouterr().out)
    assert cfg.precision.quantize == "int8" and cfg.precision.fp16 is True and cfg.bench.batch == [1, 8]


def test_a_stage_reruns_when_the_data_folder_changes_under_the_same_spec(tmp_path):
    """The spec `imagefolder:PATH` is the same string after an image is added; the stage sees the
    folder's files through their fingerprint, and trains again."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / split / cls / f"{i}.png")
    cfg = tiny_config(data={"spec": f"imagefolder:{tmp_path / 'imgs'}"})
    run_dir = tmp_path / "r"
    assert _actions(_run(cfg, run_dir, until="baseline"))["baseline"] == "ran"
    assert _actions(_run(cfg, run_dir, until="baseline"))["baseline"] == "skipped"
    Image.new("RGB", (8, 8), (0, 90, 0)).save(tmp_path / "imgs" / "train" / "b" / "new.png")
    assert _actions(_run(cfg, run_dir, until="baseline"))["baseline"] == "ran"
