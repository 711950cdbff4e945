"""The process around a command: TensorFlow's start-up noise, malloc arenas, log lines."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from typing import Iterator, Optional

from trxsfr.base.errors import os_errno
from trxsfr.cli import native_stderr


def quiet_tensorflow() -> None:
    """Silence TensorFlow's Python and C++ logging below errors (the user's
    TF_CPP_MIN_LOG_LEVEL wins), and drop the C++ start-up lines that setting no
    longer silences (`native_stderr`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    native_stderr.enabled = True
    from trxsfr.base import litert

    litert.native_quiet = native_stderr.quiet  # interpreters made by --runtime litert/auto


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and set up its devices with its C++ start-up lines dropped."""
    if "tensorflow" in sys.modules:
        return
    with native_stderr.quiet():
        import tensorflow as tf

        tf.config.list_logical_devices()  # the CUDA probe logs here, not at the import


def quietly(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` with native start-up lines dropped from stderr (e.g. LiteRT's
    "Created TensorFlow Lite XNNPACK delegate" when a .tflite is loaded)."""
    with native_stderr.quiet():
        return fn(*args, **kwargs)


def cap_malloc_arenas(arenas: int = 2) -> None:
    """Ask glibc for at most `arenas` malloc arenas (as MALLOC_ARENA_MAX does).

    By default every thread that allocates gets an arena of its own, up to 8 per
    core; with TensorFlow's and tf.data's threads passing 600 KB images and 20 MB
    batches around, those arenas fragment and peak memory creeps up with every
    batch (measured: +41 MB over 4,000 images, against +6 MB with two arenas, at
    the same speed). Must run before TensorFlow starts its threads; a no-op off glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return  # the user's own setting wins
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


class LineFormatter(logging.Formatter):
    """Info lines as they are; warnings and errors as `trxsfr: warning: ...`."""

    def format(self, record):
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"trxsfr: {record.levelname.lower()}: {message}"
        return message


@contextlib.contextmanager
def log_to_stderr(quiet: bool) -> Iterator[None]:
    """While inside, trxsfr's log lines go to stderr: warnings only with --quiet, else info
    too. The `trxsfr` logger is as it was again on leaving: `main` also runs in-process
    (tests, notebooks), where a handler left on a since-replaced stderr and a logger that
    stopped propagating would swallow every later log record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger("trxsfr")
    saved = root.handlers[:], root.level, root.propagate
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    try:
        yield
    finally:
        root.handlers[:], root.propagate = saved[0], saved[2]
        root.setLevel(saved[1])


# OS errors a user can cause or fix, with what to do about each.
_FIXABLE = {
    errno.ENOSPC: "the disk is full: free space or use a folder on another disk; a rerun "
                  "reuses everything already written",
    errno.EDQUOT: "your disk quota is used up: free space or use a folder elsewhere; a rerun "
                  "reuses everything already written",
    errno.EROFS: "the file system is read-only: use a writable folder",
    errno.EACCES: "permission denied: use a folder you can write to (or fix its permissions)",
    errno.EPERM: "operation not permitted: use a folder you own",
    errno.ENAMETOOLONG: "a file name is too long: use a shorter folder path or file names",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run again",
    errno.ENFILE: "the system has too many open files: close some programs and run again",
}


def fixable_os_error(error: BaseException) -> Optional[str]:
    """One line for an OS error the user can fix (a full disk, a read-only or forbidden
    folder, a long name, too many open files), naming the path; None for anything else."""
    for e in _chain(error):
        code = os_errno(e)
        if code in _FIXABLE:
            path = getattr(e, "filename", None) or _path_in(str(e))
            where = f" ({path})" if path else ""
            return f"{os.strerror(code)}{where}: {_FIXABLE[code]}"
    return None


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _path_in(text: str) -> Optional[str]:
    match = re.search(r"(/[^\s:;,'\"]+)", text)
    return match.group(1) if match else None
