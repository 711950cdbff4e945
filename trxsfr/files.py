"""Writing a new file whole or not at all, and never over an existing one."""

from __future__ import annotations

import os
import uuid


def write_new(path: str, data: bytes) -> None:
    """Write `data` to `path`, which must not exist; readers never see half a file.

    Raises:
        FileExistsError: `path` exists (or appeared meanwhile): it is left untouched.
        OSError: the folder cannot be written.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # unlike rename, fails if `path` exists
        except FileExistsError:
            raise
        except OSError:  # no hard links on this filesystem: exclusive create instead
            with open(path, "xb") as f:
                f.write(data)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
