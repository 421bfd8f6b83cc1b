"""Typed errors. The CLI turns each into one line on stderr and a documented exit code.

Exit codes:
    0  success
    1  unexpected internal error (a bug: please report it with the traceback from --verbose)
    2  bad usage or bad input (unknown model, unreadable/malformed file, wrong input size, ...)
    3  unsupported pattern or block (the tool refuses rather than produce a wrong model)
    4  verification failed: the optimized model does not match the reference; nothing was written
  130  interrupted (Ctrl-C): 128 + SIGINT, what a shell reports for a command it stopped
  141  the reader of its output went away (`updp ... | head`): 128 + SIGPIPE, as a shell reports it
"""

from __future__ import annotations

EXIT_INTERRUPTED = 130  # the status of a command stopped by Ctrl-C (see above)
EXIT_BROKEN_PIPE = 141  # the status of a command whose stdout was closed (see above)


class UpdpError(Exception):
    """Base class for errors a user can act on. `exit_code` is what the CLI returns."""

    exit_code = 2


class InputError(UpdpError):
    """Bad input: unknown model, unreadable or malformed file, wrong input size, bad option."""

    exit_code = 2


class UnsupportedError(UpdpError):
    """A pattern or block updp refuses to transform, with the reason."""

    exit_code = 3


class VerificationError(UpdpError):
    """The optimized model's outputs differ from the reference beyond tolerance."""

    exit_code = 4


def first_line(exc: BaseException, default: str | None = None) -> str:
    """An exception's message as one line: what the CLI prints, and what a wrapping error quotes
    (C++ libraries such as ONNX Runtime and protobuf put file names and context on the next ones)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)
