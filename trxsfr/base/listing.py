"""Which files are images: formats, folder walking, skip records. Pure Python, no TensorFlow."""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Optional, Sequence

from trxsfr.base.errors import DatasetError

# Formats tf.io.decode_image reads (GIF: first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP or WebP"  # the same formats, for messages
# Files that operating systems and photo tools drop into folders; never images.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r", ".ds_store"})

@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file passed over: its path and why, as "kind: details" or a few words."""

    path: str
    reason: str

    @property
    def kind(self) -> str:
        """The reason without its details, to count skips by reason."""
        return self.reason.split(":", 1)[0]


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def not_an_image(path: str) -> Skipped:
    """The skip record of a file whose extension is no image format TensorFlow decodes."""
    ext = os.path.splitext(path)[1] or "(no extension)"
    return Skipped(path, f"not an image type TensorFlow decodes: {ext} "
                         f"(use one of {', '.join(IMAGE_EXTENSIONS)})")


@dataclasses.dataclass
class Walk:
    """What `walk` found: files (sorted relative paths, "/"-separated), the identity
    (st_dev, st_ino) of each, and the entries it passed over with the reason."""

    files: list[str]
    ids: list[tuple[int, int]]
    skipped: list[Skipped]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walk(folder: str, fence: Optional[str] = None) -> Walk:
    """Every non-hidden file below `folder`, each real file and folder once.

    Symbolic links are followed, but never around a loop and never twice: a link
    to the folder itself or to one of its parents, a link to a folder or file that
    is listed under its own path anyway, and (with `fence`, e.g. the image
    folder around a class folder) a link into another part of `fence` are
    skipped with the reason. A folder reached twice through links outside is
    listed once. So the walk costs what is on disk, whatever links point where.

    Args:
        folder: the folder to list.
        fence: an enclosing folder whose other parts links must not pull in
            (another class's images would get this class's label).
    """
    root = os.path.realpath(folder)
    fence = os.path.realpath(fence) if fence else root
    files, ids, skipped = [], [], []
    seen_dirs, seen_files = {}, {}

    def why_not_follow(real: str) -> Optional[str]:
        if _inside(root, real):
            return f"a symlink loop: links to {_show(real, fence)}, a folder it is inside"
        if _inside(real, root):
            return f"a second path to what is listed anyway: links to {_show(real, fence)}"
        if _inside(real, fence):
            return (f"a link into another class's folder: links to {_show(real, fence)}, "
                    f"whose images would get two labels")
        return None

    try:
        top = os.stat(folder)
    except OSError:
        return Walk([], [], [])
    seen_dirs[(top.st_dev, top.st_ino)] = "."
    stack = [(folder, "", frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        dir_path, rel_dir, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(dir_path), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(rel_dir or ".", f"cannot list: {e.strerror or e}"))
            continue
        subdirs = []
        for entry in entries:
            if _is_ignored(entry.name):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = os.stat(entry.path)  # follows links
            except OSError:
                skipped.append(Skipped(rel, "a broken link (its target does not exist)"
                                       if entry.is_symlink() else "cannot be read"))
                continue
            ident = (st.st_dev, st.st_ino)
            link = entry.is_symlink()
            real = os.path.realpath(entry.path) if link else ""
            if stat.S_ISDIR(st.st_mode):
                if ident in ancestors:
                    skipped.append(Skipped(rel, f"a symlink loop: links to {_show(real, fence)}, "
                                                f"a folder it is inside"))
                    continue
                reason = why_not_follow(real) if link else None
                if reason is None and ident in seen_dirs:
                    reason = f"a link to a folder already listed: {seen_dirs[ident]}"
                if reason:
                    skipped.append(Skipped(rel, reason))
                    continue
                seen_dirs[ident] = rel
                subdirs.append((entry.path, rel, ancestors | {ident}))
            elif stat.S_ISREG(st.st_mode):
                reason = why_not_follow(real) if link else None
                if reason is None and ident in seen_files:
                    reason = f"a second path to the same file: {seen_files[ident]}"
                if reason:
                    skipped.append(Skipped(rel, reason))
                    continue
                seen_files[ident] = rel
                files.append(rel)
                ids.append(ident)
        stack.extend(reversed(subdirs))
    order = sorted(range(len(files)), key=files.__getitem__)
    return Walk([files[i] for i in order], [ids[i] for i in order],
                sorted(skipped, key=lambda s: s.path))


def _show(real: str, fence: str) -> str:
    """A link's target as the user knows it: relative to the fence when inside it."""
    if real == fence or not _inside(real, fence):
        return real
    return os.path.relpath(real, fence).replace(os.sep, "/")


def list_files(folder: str) -> list[str]:
    """Non-hidden files below `folder`, as sorted "/"-separated relative paths (`walk`)."""
    return walk(folder).files


def top_files(root: str) -> list[str]:
    """Sorted names of the visible files directly in `root` (links to files included)."""
    return sorted(name for name in os.listdir(root)
                  if not _is_ignored(name) and os.path.isfile(os.path.join(root, name)))


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


def labelled_folders(root: str, labels: Sequence[str]) -> tuple[dict[str, list[str]], list[str],
                                                                  list[Skipped]]:
    """For evaluation: images of `root/<label>/...` by label (paths relative to `root`), the
    sub-folders that are no label, and what the walks passed over (see `walk`)."""
    known, unknown, skipped = {}, [], []
    for name in class_dirs(root):
        if name in labels:
            found = walk(os.path.join(root, name), fence=root)
            known[name] = [f"{name}/{rel}" for rel in found.files]
            skipped += [Skipped(f"{name}/{s.path}", s.reason) for s in found.skipped]
        else:
            unknown.append(name)
    return known, unknown, skipped
