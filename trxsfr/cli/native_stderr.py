"""Drop known start-up chatter that TensorFlow's and LiteRT's C++ code writes to stderr.

Their INFO lines go straight to file descriptor 2, past Python's `sys.stderr`, and
neither `TF_CPP_MIN_LOG_LEVEL` (since absl took over TensorFlow's logging,
tensorflow/tensorflow#100442) nor any LiteRT setting silences all of them. The CLI
turns this on (`enabled`) around TensorFlow's import and model loading, so that a
failing command's stderr is its one error line; the library never touches stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# The CLI sets this; False leaves file descriptor 2 untouched.
enabled = False

NOISE = re.compile(
    # TensorFlow: absl's notice that it is not initialised yet, INFO and WARNING lines,
    # and the CUDA probe's errors on a machine without a GPU
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \S+ +\d+ \S+:\d+\] .*"
    r"|E\d{4} \S+ +\d+ (cuda\w*|cudart_stub)\.cc:\d+\] .*"
    # LiteRT's interpreter, once per process
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    # Apache Beam's worker processes (extract, label --runner), before their log level is set
    r"|WARNING:root:apitools not found, and bigquery client libraries are not available.*"
    r"|INFO:__main__:Logging handler created\.")


@contextlib.contextmanager
def quiet():
    """While inside, lines written to file descriptor 2 that match `NOISE` are dropped and
    every other line passes through unchanged. A no-op unless `enabled`, or when
    TF_CPP_MIN_LOG_LEVEL=0 asks for TensorFlow's INFO lines."""
    if not enabled or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_forward_lines, args=(read_end, saved), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump reads to its end
        pump.join(timeout=10)
        os.close(saved)


def _forward_lines(read_end: int, target: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            if not NOISE.fullmatch(raw.decode("utf-8", "replace").rstrip("\r\n")):
                os.write(target, raw)
