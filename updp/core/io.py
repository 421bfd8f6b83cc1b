"""File output that fails cleanly: checked before work, atomic, durable, never over a non-file.

Every file updp writes goes through here (`atomic_path`, or `staged_dir` for a file with side
files), so the guarantees hold for checkpoints, ONNX models, plans, tables and reports alike:

* **Checked first**: `check_destination` refuses an empty path, a directory, a device, a FIFO or a
  socket (os.replace would put a regular file in its place), a parent that is a file, and a folder
  that is not writable; `check_writable` also creates a probe file, so a read-only mount is found
  before an hour of training, not after it.
* **Atomic**: the data is written to a temporary name in the destination's folder, flushed to disk
  (fsync of the file, then of the folder after the rename), and renamed onto the destination. A
  failure or a kill leaves the old file, or none, never half of one.
* **Permissions**: the final file gets what the umask gives a new file (mkstemp's 0600 would make a
  deployed model unreadable by the serving user).
* **Leftovers**: temporary names carry the writer's pid (`.<name>.<pid>.<random>.tmp`); those of
  writers that are no longer alive are removed by the next successful write of the same file and
  when a command starts on the folder (`check_outputs`, `check_writable_dir`).
* **Errors**: an OSError (full disk, read-only file system, permission) becomes an `InputError`
  that names the path: exit 2, one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from updp.core.errors import InputError

_TEMP_SUFFIX = ".tmp"


def check_destination(dest: str | os.PathLike) -> Path:
    """`dest` as a Path, or an `InputError` saying why updp must not write there.

    Refused: an empty path; an existing directory, device, FIFO or socket (only regular files are
    ever replaced); a parent path that runs through a regular file; an existing folder on the way
    that is not writable.
    """
    if not str(dest).strip():
        raise InputError("the output path is empty")
    path = Path(dest)
    if path.exists():
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{path}: is a directory; give a file path")
        if not stat.S_ISREG(mode):
            raise InputError(f"{path}: is not a regular file (a device, FIFO or socket); updp only replaces files")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
        raise InputError(f"{path}: the folder {folder} is " + ("on a read-only file system" if read_only
                                                                 else "not writable"))
    return path


def check_writable(dest: str | os.PathLike) -> Path:
    """`check_destination`, then create the folders and a probe file: called before long work, so
    that an output that cannot be written fails in a second (a read-only mount, a full quota)."""
    path = check_destination(dest)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    return path


def check_writable_dir(folder: str | os.PathLike) -> Path:
    """The same check for an output folder (a run directory): it must be, or become, a folder; what
    killed writers left anywhere in it is removed."""
    if not str(folder).strip():
        raise InputError("the output folder path is empty")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    check_writable(path / ".updp-write-check")
    sweep_stale_temps(path, recursive=True)
    return path


def refuse_same_file(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output that is one of the command's inputs: a failed run would be fine (the write is
    atomic), but a successful one would silently replace the user's original."""
    out_path = Path(out)
    for inp in inputs:
        if inp is None or not out_path.exists() or not Path(inp).exists():
            continue
        if os.path.samefile(out_path, inp):
            raise InputError(f"the output {out_path} is the input {inp}: write the result to another path")


def check_outputs(outputs: list[str | os.PathLike | None], inputs: list[str | os.PathLike | None] = ()) -> None:
    """Before a command's work: every output it will write can be written, none is one of its inputs,
    and no two are the same file (`check_writable`, `refuse_same_file`); the temporaries killed
    writers left beside them are removed."""
    if any(o is not None and not str(o).strip() for o in outputs):
        raise InputError("the output path is empty")
    chosen = [Path(o) for o in outputs if o is not None]
    for out in chosen:
        check_writable(out)
        refuse_same_file(out, *inputs)
        sweep_stale_temps(out.parent)
    resolved = [os.path.abspath(o) for o in chosen]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise InputError(f"{chosen[i]} is given as two different outputs")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success it is made durable and renamed onto `dest`.

    The temporary file lives in the destination's folder, so that the final `os.replace` is an atomic
    rename on one file system. On any exception the temporary file is removed and `dest` is left
    untouched. OSErrors, the caller's writes included, become `InputError`s naming `dest`.
    """
    dest = check_destination(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=_TEMP_SUFFIX, dir=dest.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(dest):  # the caller writes the temporary file: a full disk shows here
            yield tmp_path
            finish_file(tmp_path)
            commit(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def staged_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """A private temporary folder next to `dest`, for a file written with side files (an ONNX model
    with external data): the caller writes there, then moves each piece with `commit`. Removed
    afterwards, whatever happens."""
    dest = check_destination(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=_TEMP_SUFFIX, dir=dest.parent))
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def finish_file(path: Path) -> None:
    """Give a finished temporary file the umask's permissions and flush it to disk."""
    os.chmod(path, 0o666 & ~_umask())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, dest: Path) -> None:
    """Rename a finished temporary file onto `dest`, make the rename durable, and remove what killed
    writers of `dest` left behind. `dest` is checked again: something may have appeared there."""
    check_destination(dest)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    remove_stale_temps(dest)


# `.<name>.<pid>.<8 random characters of mkstemp/mkdtemp>.tmp`
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX) + "$")


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temporary files and folders of writes to `dest` whose writer is no longer alive."""
    return _sweep(dest.parent, only=dest.name)


def sweep_stale_temps(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove what killed writers left in `folder` (any file's temporaries): called when a command
    starts on an output folder, so that a write killed and never repeated leaves nothing behind."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = _sweep(folder)
    if recursive:
        for sub in sorted(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()):
            if sub.exists():
                removed += _sweep(sub)
    return removed


def _left_by_dead(folder: Path, pattern: re.Pattern) -> list[tuple[Path, re.Match]]:
    """The entries of `folder` named by `pattern` (with a `pid` group) whose process is gone."""
    found = []
    with contextlib.suppress(OSError):
        for entry in list(folder.iterdir()):
            match = pattern.match(entry.name)
            if match is not None and not _alive(int(match["pid"])):
                found.append((entry, match))
    return found


def _sweep(folder: Path, only: str | None = None) -> list[Path]:
    removed = []
    for entry, match in _left_by_dead(folder, _TEMP_NAME):
        if only is not None and match["name"] != only:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# `updp-<pid>-<what>-<random>` in the system's temporary folder: scratch space of one process.
_SCRATCH_NAME = re.compile(r"^updp-(?P<pid>\d+)-")


@contextlib.contextmanager
def scratch_dir(what: str) -> Iterator[Path]:
    """A private folder in the system's temporary folder, removed on exit.

    Its name carries the pid, so that the folders of processes killed before their cleanup (SIGKILL,
    out of memory) are removed by the next updp process that asks for one.
    """
    for entry, _ in _left_by_dead(Path(tempfile.gettempdir()), _SCRATCH_NAME):
        if entry.is_dir() and not entry.is_symlink():  # folders only: the temp folder is shared
            shutil.rmtree(entry, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"updp-{os.getpid()}-{what}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` is the user's to fix (space, permissions, mounts): exit 2
    with the path named."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise InputError(f"cannot write {path}: {reason}") from exc


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename). Some file systems cannot open a folder: skip there."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
