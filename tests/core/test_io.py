"""Atomic file output: a failure never leaves a half-written file at the destination."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from updp.core.errors import InputError
from updp.core.io import atomic_path, check_outputs, scratch_dir, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    write_text_atomic(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_write_creates_missing_folders(tmp_path):
    write_text_atomic(tmp_path / "a" / "b" / "c.txt", "x")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_write_removes_the_temporaries_of_dead_writers_and_keeps_live_ones(tmp_path):
    dead = tmp_path / f".out.txt.{_dead_pid()}.abc12345.tmp"
    dead.write_text("half of a killed write")
    dead_dir = tmp_path / f".out.txt.{_dead_pid()}.def12345.tmp"
    dead_dir.mkdir()
    alive = tmp_path / f".out.txt.{os.getppid()}.ghi12345.tmp"  # a live process (the test runner's parent)
    alive.write_text("a write in progress")
    other = tmp_path / f".other.txt.{_dead_pid()}.jkl12345.tmp"  # another destination's: not ours to judge here
    other.write_text("x")
    write_text_atomic(tmp_path / "out.txt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.txt", alive.name, other.name])


def test_check_outputs_refuses_an_input_and_a_repeated_output(tmp_path):
    src = tmp_path / "in.onnx"
    src.write_text("x")
    with pytest.raises(InputError, match="is the input"):
        check_outputs([tmp_path / "sub" / ".." / "in.onnx"], [src])
    with pytest.raises(InputError, match="two different outputs"):
        check_outputs([tmp_path / "a.json", tmp_path / "." / "a.json"])
    check_outputs([tmp_path / "new" / "b.json"], [src])
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []  # the probe is gone


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "folder", "is a directory"),
    (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "not a regular file"),
    (lambda d: ((d / "file").write_text("x"), d / "file" / "out")[1], "is a file, not a folder"),
])
def test_only_regular_files_are_replaced(tmp_path, make, match):
    (tmp_path / "folder").mkdir()
    dest = make(tmp_path)
    with pytest.raises(InputError, match=match):
        write_text_atomic(dest, "x")


def test_a_model_write_removes_data_files_of_earlier_and_killed_writes(tmp_path):
    """`staged_model` names its data files `<name>.<8 hex>.data`; a write killed between its two renames
    leaves one no .onnx refers to, and the next write of the same file removes it."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    import updp.exporter.torch_export as torch_export

    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", 1, [4])],
                                                [helper.make_tensor_value_info("y", 1, [4])], [w]))
    orphan = tmp_path / "m.onnx.0badf00d.data"
    orphan.write_bytes(b"left by a killed write")
    foreign = tmp_path / "m.onnx.data"  # not a name updp writes: left alone
    foreign.write_bytes(b"the user's")
    torch_export.save_model(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_the_file_and_then_its_folder_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """A power cut after the rename must not leave an empty file under the final name: the data is
    fsynced before the rename, the folder entry after it."""
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(tmp_path / "out.txt", "x")
    assert len(synced) == 3 and synced[0].startswith(".out.txt.") and synced[1:] == ["rename", tmp_path.name]


def test_a_command_starting_on_a_folder_sweeps_what_killed_writers_left(tmp_path):
    """A killed write that is never repeated (another file name) is still cleaned up: by the next
    command that writes into the folder."""
    from updp.core.io import check_writable_dir

    stale = tmp_path / f".config.json.{_dead_pid()}.ab_cd123.tmp"
    stale.write_text("half")
    nested = tmp_path / "export"
    nested.mkdir()
    stale_dir = nested / f".pruned.onnx.{_dead_pid()}.zz9_k2m1.tmp"
    stale_dir.mkdir()
    mine = tmp_path / f".x.{os.getpid()}.abcdefgh.tmp"  # a live writer's (this process)
    mine.write_text("in progress")
    lookalike = tmp_path / ".notes.1.txt.tmp"  # not updp's pattern
    lookalike.write_text("user's")
    check_writable_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", mine.name, lookalike.name])
    assert list(nested.iterdir()) == []


def test_scratch_folders_of_killed_processes_are_removed_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    leftover = tmp_path / f"updp-{dead.stdout.strip()}-export-abc123"
    (leftover / "model.onnx").parent.mkdir()
    (leftover / "model.onnx").write_bytes(b"half")
    live = tmp_path / f"updp-{os.getppid()}-lut-def456"  # a live process's: kept
    live.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()
    with scratch_dir("model") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f"updp-{os.getpid()}-model-")
        assert not leftover.exists() and live.exists() and other.exists()
        (folder / "x").write_text("scratch")
    assert not folder.exists()
