"""CLI behaviour: one-line errors, exit codes, no partial output, JSON for pipelines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "updp", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {proc.stderr!r}"
    return lines[0]


def _tiny_conv_bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    inits = [w] + [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
                   [("g", rng.uniform(0.5, 2, 4)), ("b", rng.standard_normal(4)), ("m", rng.standard_normal(4)),
                    ("v", rng.uniform(0.5, 2, 4))]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_help_lists_commands_and_exit_codes():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("blocks", "export", "optimize", "bench"):
        assert cmd in proc.stdout
    assert "exit codes" in proc.stdout


def test_unknown_model_is_one_line_exit_2(tmp_path):
    out = tmp_path / "x.onnx"
    proc = run_cli("export", "timm:definitely_not_a_model", "--out", str(out))
    assert proc.returncode == 2
    assert "definitely_not_a_model" in _one_line_error(proc)
    assert not out.exists()


def test_malformed_onnx_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\x01\x02")
    out = tmp_path / "out.onnx"
    proc = run_cli("optimize", str(bad), "--out", str(out))
    assert proc.returncode == 2
    assert "bad.onnx" in _one_line_error(proc)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.onnx*")), "a temporary file was left behind"


def test_missing_onnx_file(tmp_path):
    proc = run_cli("bench", str(tmp_path / "nope.onnx"))
    assert proc.returncode == 2
    assert "not found" in _one_line_error(proc)


def test_wrong_input_size_is_one_line(tmp_path):
    out = tmp_path / "x.onnx"
    # A 7x7 input is too small for ResNet's five stride-2 stages plus the 7x7 stem conv? It is not:
    # it runs. An input smaller than the stem kernel is not valid for a conv stack.
    proc = run_cli("export", "timm:convnext_atto", "--input-size", "2", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "input" in _one_line_error(proc).lower()
    assert not out.exists()


def test_bad_block_index_is_one_line(tmp_path):
    out = tmp_path / "x.onnx"
    code = main(["export", "timm:resnet18", "--input-size", "32", "--blocks", "99", "--out", str(out)])
    assert code == 2
    assert not out.exists()


def test_optimize_json_reports_diff_and_node_counts(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    onnx.save(_tiny_conv_bn_model(), str(src))
    code = main(["optimize", str(src), "--out", str(out), "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["nodes_before"] == 2 and payload["nodes_after"] == 1
    assert payload["max_abs_diff"] is not None and payload["rel_diff"] <= 1e-4
    assert out.exists()
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv"]


def test_bench_json_has_median_and_p90(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_tiny_conv_bn_model(), str(src))
    code = main(["bench", str(src), str(src), "--repeats", "3", "--warmup", "1", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["batches"] == [1] and len(payload["reports"]) == 1
    report = payload["reports"][0]
    rows = report["results"]
    # both files under ORT_DISABLE_ALL and ORT_ENABLE_ALL (the default: only a gain under "all" counts)
    assert sorted(r["opt_level"] for r in rows) == ["all", "all", "disable", "disable"]
    assert report["setup"]["repeats"] == 3 and report["setup"]["warmup"] == 1
    for row in rows:
        assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]


@pytest.mark.parametrize("argv", [["export", "timm:resnet18", "--blocks", "1,x", "--out", "o.onnx"],
                                  ["export", "timm:resnet18", "--input-size", "0", "--out", "o.onnx"]])
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_failed_verification_writes_nothing(tmp_path, monkeypatch, capsys):
    """A rewrite that changes the function must be caught: exit 4, no output file."""
    import updp.exporter.optimize as optimizing
    from updp.onnx_passes import optimize_model as real_optimize

    def corrupting_optimize(model, **kw):
        res = real_optimize(model, **kw)
        w = res.model.graph.initializer[0]
        arr = numpy_helper.to_array(w).copy()
        arr.flat[0] += 1.0
        w.CopyFrom(numpy_helper.from_array(arr, w.name))
        return res

    monkeypatch.setattr(optimizing, "optimize_model", corrupting_optimize)
    src, out = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    onnx.save(_tiny_conv_bn_model(), str(src))
    code = main(["optimize", str(src), "--out", str(out)])
    assert code == 4
    assert "differs from the reference" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", [["run", "--out", "r"], ["demo"], ["blocks", "resnet18", "--latency"],
                                     ["export", "resnet18", "--out", "x.onnx"],
                                     ["optimize", "a.onnx", "--out", "b.onnx"], ["bench", "a.onnx", "b.onnx"],
                                     ["eval", "a.onnx", "--data", "digits"]])
def test_commands_that_are_not_data_parallel_refuse_torchrun_in_one_line(tmp_path, monkeypatch, capsys, command):
    """Under torchrun every rank would do the whole job again (the same files written twice, each
    rank timing the others' load): one line, exit 2, nothing written, before any work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"updp {command[0]}: error: updp {command[0]} runs in one process" in err[0], err
    assert "not under torchrun (WORLD_SIZE=2)" in err[0]
    assert ("updp train" in err[0]) if command[0] in ("run", "demo") else ("only train, search, prune" in err[0])
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process launched by torchrun is a plain run
    assert main(["run", "--print-config"]) == 0


def test_printing_a_run_config_under_torchrun_is_allowed(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--print-config"]) == 0 and "[model]" in capsys.readouterr().out


def test_bench_of_a_file_with_a_dynamic_image_size(tmp_path, capsys):
    """`--dim NAME=VALUE` gives the symbolic image dims; without them: one line, exit 2."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="/r/Relu")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    src = tmp_path / "dyn.onnx"
    onnx.save(model, str(src))
    assert main(["bench", str(src), "--repeats", "2", "--warmup", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dim height=224" in err[0], err
    assert main(["bench", str(src), "--repeats", "2", "--warmup", "1", "--dim", "height=6", "--dim", "width=4",
                 "--batch", "1", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["setup"]["dims"] for r in payload["reports"]] == [{"height": 6, "width": 4}] * 2
    assert [r["setup"]["batch"] for r in payload["reports"]] == [1, 2]


def test_a_closed_output_pipe_is_exit_141_not_an_internal_error(tmp_path):
    """`updp ... | head`: the reader is gone when the summary is printed (`true` reads nothing and
    exits at once); the command ends like a shell command killed by SIGPIPE, silently."""
    script = "import sys; from updp.cli import main; sys.exit(main(['blocks', 'resnet18', '--json']))"
    proc = subprocess.run(f"{sys.executable} -c \"{script}\" | true; echo \"${{PIPESTATUS[0]}}\"", shell=True,
                          capture_output=True, text=True, cwd=tmp_path, executable="/bin/bash")
    assert proc.stdout.strip() == "141", (proc.stdout, proc.stderr)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
