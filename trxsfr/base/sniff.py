"""What a blob of bytes is: its real image format (from its first bytes, never from a
file name or a Content-Type), and whether the decoder training uses reads it."""

from __future__ import annotations

import threading
from typing import Optional

from trxsfr.base.errors import first_line
from trxsfr.base.listing import FORMAT_NAMES

# Size the decode check resizes to: the default extractor's. The size only picks the
# JPEG scale step and the resize; whether a file decodes does not depend on it.
CHECK_SIZE = (224, 224)

_MAGIC = (  # (prefix, extension); WebP is checked apart (RIFF....WEBP)
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def image_format(data: bytes) -> Optional[str]:
    """The file extension of the image format `data` starts like ("jpg", "png", "gif",
    "bmp", "webp"), or None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), None)


def _what_else(data: bytes) -> str:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "an HTML page"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "an SVG drawing (TensorFlow decodes no SVG)"
    if head.startswith((b"{", b"[")):
        return "JSON"
    if head.startswith(b"<?xml"):
        return "an XML document"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "an AVIF/HEIC image (TensorFlow decodes neither)"
    return f"not a {FORMAT_NAMES} file"


def format_problem(data: bytes, content_type: str = "") -> Optional[str]:
    """Why `data` is no image TensorFlow decodes, judged by its first bytes; None if it
    starts like one. `content_type` (as a server declared it) is named in the reason."""
    if not data:
        return "empty (0 bytes)"
    if image_format(data):
        return None
    sent_as = f" (sent as {content_type.split(';')[0].strip()})" if content_type else ""
    return f"not an image: {_what_else(data)}{sent_as}"


_lock = threading.Lock()
_decode = None


def load_decoder():
    """The decode check's tf.function (TensorFlow is imported and the function traced on
    the first call: make that call before starting threads that decode)."""
    global _decode
    with _lock:
        if _decode is None:  # traced once: eager tf.cond would cost more per call
            import tensorflow as tf

            from trxsfr.base import imaging

            def decode_check(image_bytes):
                return imaging.decode_and_resize(image_bytes, CHECK_SIZE)

            _decode = tf.function(decode_check, input_signature=[tf.TensorSpec([], tf.string)])
            _decode.get_concrete_function()  # trace now, under the lock
    return _decode


def decode_problem(data: bytes, content_type: str = "") -> Optional[str]:
    """Why the decoder training uses (imaging.decode_and_resize) refuses `data`, in a few
    words; None when it decodes. The cheap `format_problem` comes first. Safe to call
    from several threads."""
    reason = format_problem(data, content_type)
    if reason:
        return reason
    import tensorflow as tf

    from trxsfr.base import imaging

    try:
        load_decoder()(tf.constant(data))
    except Exception as e:  # TF raises InvalidArgumentError etc. with its own words
        return imaging.decode_reason(e) or "cannot decode: " + first_line(e, 160)
    return None
