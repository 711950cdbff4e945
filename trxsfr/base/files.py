"""Folders and files the user names: checked before the work, created with a clear
error, and new files written whole or not at all, never over an existing one."""

from __future__ import annotations

import errno
import os
import uuid

from trxsfr.base.errors import InputError


def check_folder(path: str, flag: str) -> None:
    """Fail before any work if `path` (named by `flag`) cannot be a folder: it, or the
    nearest part of it that exists, is a file.

    Raises:
        InputError: a file is in the way.
    """
    target = os.path.abspath(path)
    probe = target
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        where = "is a file" if probe == target else f"is inside {probe}, which is a file"
        raise InputError(f"{flag} {path} {where}; pass a folder")


def make_folder(path: str, flag: str) -> None:
    """`os.makedirs(path, exist_ok=True)` for a folder the user named with `flag`.

    Raises:
        InputError: a file is in the way, or the folder cannot be created (permissions,
            a read-only filesystem).
    """
    check_folder(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {flag} {path}: {e.strerror or e}") from e


def write_new(path: str, data: bytes) -> None:
    """Write `data` to `path`, which must not exist; readers never see half a file.

    Raises:
        FileExistsError: `path` exists (or appeared meanwhile): it is left untouched.
        OSError: the folder cannot be written (NotADirectoryError: a file is in the way).
    """
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):  # makedirs: "File exists"
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", parent)
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


def write_replacing(path: str, data: bytes) -> None:
    """Replace a file trxsfr itself owns (an index it can rebuild) with `data`, atomically:
    readers see the old file or the new one, never half of either."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
