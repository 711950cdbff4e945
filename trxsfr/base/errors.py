"""Errors a user can fix. The CLI prints `str(error)` on one line and exits 2."""

import errno
import os
import re


class TrxsfrError(Exception):
    """Base class: a problem with the user's input, not a bug in trxsfr."""


class DatasetError(TrxsfrError):
    """The image folder cannot train or evaluate a model as it stands."""


class ModuleError(TrxsfrError):
    """The feature-extractor handle cannot be loaded or is not an image feature vector."""


class ModelError(TrxsfrError):
    """A path given as an exported trxsfr model is not one."""


class ExportError(TrxsfrError):
    """The export destination cannot take a new model version."""


class InputError(TrxsfrError):
    """A flag or input path is unusable."""


# Lines of a TensorFlow graph error around its message: "Graph execution error:",
# "Detected at node ... defined at (most recent call last):", the stack of the
# op's definition (`  File "...", line N, in f`) or "<stack traces unavailable>".
_TF_PREAMBLE = re.compile(r"Graph execution error:|Detected at node .*|\s+File \".*|<stack traces unavailable>")


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type.

    TensorFlow's decorations are dropped: the `{{function_node ...}}` prefix of an
    error raised inside a tf.function, the `[Op:Name]` suffix of an eager op, and a
    graph error's preamble and `[[{{node ...}}]]` marks, so the op's own message is
    what remains.
    """
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error).strip())
    text = re.sub(r"\s*\[Op:[\w.]+\].*$", "", text, flags=re.S)
    text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", text)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not _TF_PREAMBLE.fullmatch(line.rstrip())]
    return lines[0][:limit] if lines else type(error).__name__


def saved_model_failure(path: str, error: BaseException) -> str:
    """Why `tf.saved_model.load(path)` failed, in words for the person who gave `path`."""
    pb = os.path.join(path, "saved_model.pb")
    if os.path.isfile(pb) and os.path.getsize(pb) == 0:
        return "its saved_model.pb is empty (an interrupted copy?)"
    if "0 MetaGraphs" in str(error):  # TF then advises a `tags=` argument, which does not apply
        return "its saved_model.pb holds no graph (damaged or not a SavedModel)"
    return first_line(error)


# How TensorFlow's file system layer words the OS errors a user can fix (its OpErrors
# carry no errno): the text -> the errno it stands for.
OS_ERROR_TEXTS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                  "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES,
                  "File name too long": errno.ENAMETOOLONG,
                  "Too many open files": errno.EMFILE}


def os_errno(error: BaseException):
    """The errno of an OSError, or of a TensorFlow error worded as one; else None."""
    code = getattr(error, "errno", None)
    if isinstance(code, int):
        return code
    return next((c for text, c in OS_ERROR_TEXTS.items() if text in str(error)), None)
