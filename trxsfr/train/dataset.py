"""Find class-per-directory images and split them stably. Pure Python, no TensorFlow."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import re
from typing import Iterable

from trxsfr.base.errors import DatasetError
from trxsfr.base.listing import (
    IMAGE_EXTENSIONS,
    Skipped,
    check_dir,
    class_dirs,
    is_image_name,
    not_an_image,
    walk,
)

# Same constant as TF's retrain.py, so splits match the codelab's for flat class folders.
_MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
FEW_IMAGES_WARNING = 20


class Split(str, enum.Enum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


@dataclasses.dataclass(frozen=True)
class Item:
    path: str  # relative to the image dir, "/"-separated
    label: int
    split: Split


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Images of one root folder: sorted labels, items, and what was passed over."""

    root: str
    labels: tuple[str, ...]
    items: tuple[Item, ...]
    skipped: tuple[Skipped, ...] = ()
    empty_classes: tuple[str, ...] = ()

    def abs_path(self, item: Item) -> str:
        return os.path.join(self.root, *item.path.split("/"))

    def of_split(self, split: Split) -> list[Item]:
        return [item for item in self.items if item.split == split]

    def counts(self) -> dict[str, dict[Split, int]]:
        """Per label, how many items fall in each split."""
        table = {label: {s: 0 for s in Split} for label in self.labels}
        for item in self.items:
            table[self.labels[item.label]][item.split] += 1
        return table

    def without(self, failed: Iterable[Skipped]) -> "ImageSet":
        """This set minus files that turned out unreadable; classes left empty are dropped."""
        failed = tuple(failed)
        if not failed:
            return self
        bad = {f.path for f in failed}
        by_label: dict[str, list[Item]] = {label: [] for label in self.labels}
        for item in self.items:
            if item.path not in bad:
                by_label[self.labels[item.label]].append(item)
        kept_labels = tuple(label for label in self.labels if by_label[label])
        empty = self.empty_classes + tuple(l for l in self.labels if not by_label[l])
        index = {label: i for i, label in enumerate(kept_labels)}
        items = tuple(
            dataclasses.replace(item, label=index[label])
            for label in kept_labels
            for item in by_label[label]
        )
        return ImageSet(self.root, kept_labels, items, self.skipped + failed, empty)


def split_of(rel_path: str, validation_pct: float, testing_pct: float) -> Split:
    """The split of one file, stable across runs, machines and added files.

    As in TF's retrain.py, everything from `_nohash_` to the end of the name is
    ignored, so `cat_nohash_1.jpg` and `cat_nohash_2.jpg` share a split.
    The hash covers the path relative to the image dir, so the same photo name
    in two classes may land in different splits.
    """
    hash_name = re.sub(r"_nohash_.*$", "", rel_path)
    digest = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage = (int(digest, 16) % (_MAX_NUM_IMAGES_PER_CLASS + 1)) * (
        100.0 / _MAX_NUM_IMAGES_PER_CLASS
    )
    if percentage < validation_pct:
        return Split.VALIDATION
    if percentage < validation_pct + testing_pct:
        return Split.TEST
    return Split.TRAIN


def discover(
    image_dir: str, validation_pct: float = 10.0, testing_pct: float = 10.0
) -> ImageSet:
    """Find images in `image_dir/<class>/...` and give each a stable split.

    Files whose extension is not an image format TensorFlow decodes are skipped
    and named; hidden and system files are ignored silently. Classes with no
    image file are left out (see `warnings_of`). `check_trainable` says whether
    the result can train a model.

    Raises:
        DatasetError: the folder is missing or the percentages leave no training split.
    """
    check_dir(image_dir, "--image_dir")
    for name, pct in (("validation", validation_pct), ("testing", testing_pct)):
        if not 0 <= pct < 100:
            raise DatasetError(f"--{name}_percentage must be in [0, 100), got {pct}")
    if validation_pct + testing_pct >= 100:
        raise DatasetError(
            f"--validation_percentage + --testing_percentage = "
            f"{validation_pct + testing_pct} leaves no training images; keep it below 100"
        )
    items_by_class: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    classes_of: dict[tuple[int, int], list[str]] = {}  # one real file -> its paths
    for name in class_dirs(image_dir):
        if "\n" in name:
            raise DatasetError(f"class folder name {name!r} contains a newline; rename it")
        images = []
        found = walk(os.path.join(image_dir, name), fence=image_dir)
        skipped += [Skipped(f"{name}/{s.path}", s.reason) for s in found.skipped]
        for rel, ident in zip(found.files, found.ids):
            path = f"{name}/{rel}"
            if is_image_name(rel):
                images.append(path)
                classes_of.setdefault(ident, []).append(path)
            else:
                skipped.append(not_an_image(path))
        items_by_class[name] = images
    # The same real file in two classes (hard links, or a class folder linked twice)
    # cannot have both labels: each copy is left out and named.
    conflicts = {path: paths for paths in classes_of.values()
                 if len({p.split("/", 1)[0] for p in paths}) > 1 for path in paths}
    for path, paths in sorted(conflicts.items()):
        others = ", ".join(p for p in paths if p != path)
        skipped.append(Skipped(path, f"a labelling conflict: the same file is also {others}; "
                                     f"keep it in one class folder"))
    if conflicts:
        items_by_class = {name: [p for p in images if p not in conflicts]
                          for name, images in items_by_class.items()}
    skipped.sort(key=lambda s: s.path)
    labels = tuple(name for name, images in items_by_class.items() if images)
    empty = tuple(name for name, images in items_by_class.items() if not images)
    items = tuple(
        Item(path, index, split_of(path, validation_pct, testing_pct))
        for index, label in enumerate(labels)
        for path in items_by_class[label]
    )
    return ImageSet(os.path.abspath(image_dir), labels, items, tuple(skipped), empty)


def check_trainable(image_set: ImageSet) -> None:
    """Raise DatasetError unless the set has 2+ classes and a non-empty training split."""
    if not image_set.labels and not image_set.empty_classes:
        raise DatasetError(
            f"no class folders under {image_set.root}: put each class's images in "
            f"a sub-folder named after the class ({', '.join(IMAGE_EXTENSIONS)})"
        )
    if len(image_set.labels) < 2:
        have = ", ".join(image_set.labels) or "none"
        empty = (f"; class folders without usable images: {', '.join(image_set.empty_classes)}"
                 if image_set.empty_classes else "")
        raise DatasetError(
            f"need at least 2 classes with usable images under {image_set.root}, "
            f"found {len(image_set.labels)} ({have}){empty}"
        )
    if not any(item.split == Split.TRAIN for item in image_set.items):
        raise DatasetError(
            f"the training split under {image_set.root} is empty: add images or "
            f"lower --validation_percentage/--testing_percentage"
        )


def warnings_of(image_set: ImageSet) -> list[str]:
    """What the user should know about the set before trusting a model trained on it."""
    notes = [f"class folder {name} has no usable images and is left out"
             for name in image_set.empty_classes]
    for label, row in image_set.counts().items():
        total = sum(row.values())
        if total < FEW_IMAGES_WARNING:
            notes.append(f"class {label} has only {total} images; {FEW_IMAGES_WARNING} or "
                         f"more per class train a more reliable model")
    return notes
