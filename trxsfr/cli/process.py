"""The process around a command: TensorFlow's start-up noise, malloc arenas, log lines."""

from __future__ import annotations

import logging
import os
import sys

from trxsfr.cli import native_stderr


def quiet_tensorflow() -> None:
    """Silence TensorFlow's Python and C++ logging below errors (the user's
    TF_CPP_MIN_LOG_LEVEL wins), and drop the C++ start-up lines that setting no
    longer silences (`native_stderr`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    native_stderr.enabled = True


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


def log_to_stderr(quiet: bool) -> None:
    """trxsfr's log lines go to stderr: warnings only with --quiet, else info too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger("trxsfr")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
