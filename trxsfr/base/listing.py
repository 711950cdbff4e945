"""Which files are images: formats, folder walking, skip records. Pure Python, no TensorFlow."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from trxsfr.base.errors import DatasetError

# Formats tf.io.decode_image reads (GIF: first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP or WebP"  # the same formats, for messages
# Files that operating systems and photo tools drop into folders; never images.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r", ".ds_store"})

@dataclasses.dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def not_an_image(path: str) -> Skipped:
    """The skip record of a file whose extension is no image format TensorFlow decodes."""
    ext = os.path.splitext(path)[1] or "(no extension)"
    return Skipped(path, f"not an image type TensorFlow decodes: {ext} "
                         f"(use one of {', '.join(IMAGE_EXTENSIONS)})")


def list_files(folder: str) -> list[str]:
    """Non-hidden files below `folder`, as sorted "/"-separated relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored(d))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if _is_ignored(name):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def class_dirs(root: str) -> list[str]:
    """Sorted names of the visible sub-directories of `root`."""
    return sorted(
        name
        for name in os.listdir(root)
        if not _is_ignored(name) and os.path.isdir(os.path.join(root, name))
    )


def check_dir(root: str, what: str) -> None:
    if not root:
        raise DatasetError(f"no {what} given")
    if not os.path.exists(root):
        raise DatasetError(f"{what} {root} does not exist")
    if not os.path.isdir(root):
        raise DatasetError(f"{what} {root} is not a directory")


def labelled_folders(root: str, labels: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """For evaluation: images of `root/<label>/...` by label, and the sub-folders that are no label."""
    known, unknown = {}, []
    for name in class_dirs(root):
        if name in labels:
            known[name] = [f"{name}/{rel}" for rel in list_files(os.path.join(root, name))]
        else:
            unknown.append(name)
    return known, unknown
