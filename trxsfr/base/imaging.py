"""The one preprocessing function (training, `label` and the exported signature all use it),
the tf.data pipeline around it, and the training-only distortions."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from trxsfr.base.config import MAX_IMAGE_PIXELS
from trxsfr.base.errors import first_line
from trxsfr.base.listing import FORMAT_NAMES

# Bump when decode_and_resize changes what it computes: it is part of the cache key.
PREPROCESSING_VERSION = "jpeg-dct-scaled+bilinear-v2"
_JPEG_RATIOS = (1, 2, 4, 8)


def decode_rgb(image_bytes: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """uint8 [h, w, 3] of an encoded image, for resizing to `size` (height, width).

    A JPEG at least twice the target size in both directions is decoded at
    1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, which low-pass filters as it
    shrinks and costs a fraction of a full decode (a 12-megapixel photo decodes
    about 20x faster at 1/8). Other formats decode at full size; an alpha channel
    is dropped (TF's PNG decoder does so itself, a transparent WebP needs 4 channels).
    """

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        fit = tf.minimum(shape[0] // size[0], shape[1] // size[1])  # how many times larger
        index = tf.reduce_sum(tf.cast(fit >= tf.constant(_JPEG_RATIOS[1:]), tf.int32))
        return tf.switch_case(index, [
            (lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r)) for r in _JPEG_RATIOS
        ])

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    def webp_rgba():  # TF refuses channels=3 for it; drop alpha as decode_png does
        image = tf.io.decode_image(image_bytes, channels=4, expand_animations=False)[..., :3]
        image.set_shape([None, None, 3])
        return image

    def not_jpeg():
        return tf.cond(_is_still_webp_with_alpha(image_bytes), webp_rgba, other)

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, not_jpeg)


def _is_still_webp_with_alpha(image_bytes: tf.Tensor) -> tf.Tensor:
    """bool scalar: a WebP whose header says alpha and no animation (TF decodes an
    animated WebP with neither 3 nor 4 channels and refuses it with a clear error)."""
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, 25), b"\0" * 25])  # 25+ bytes
    octets = tf.io.decode_raw(head, tf.uint8)
    chunk = tf.strings.substr(head, 12, 4)
    # VP8X: flags byte 20, alpha 0x10, animation 0x02. VP8L: alpha is bit 28 of bytes 21-24.
    extended = tf.logical_and(tf.equal(chunk, b"VP8X"),
                              tf.equal(tf.bitwise.bitwise_and(octets[20], 0x12), 0x10))
    lossless = tf.logical_and(tf.equal(chunk, b"VP8L"),
                              tf.equal(tf.bitwise.bitwise_and(octets[24], 0x10), 0x10))
    is_webp = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                             tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    return tf.logical_and(is_webp, tf.logical_or(extended, lossless))


def _unsigned(octets: tf.Tensor, offset: int, length: int, big_endian: bool = False) -> tf.Tensor:
    """int64 scalar: `length` bytes of uint8 `octets` from `offset`, as an unsigned integer."""
    part = tf.cast(octets[offset:offset + length], tf.int64)
    shifts = tf.constant([8 * i for i in range(length)][::-1 if big_endian else 1], tf.int64)
    return tf.reduce_sum(tf.bitwise.left_shift(part, shifts))


def header_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """int64 [2]: (height, width) from an image's header, without decoding it; (-1, -1)
    for a format or header this does not know (the decoder then says what is wrong).

    JPEG through libjpeg's header reader; PNG (IHDR), GIF (logical screen), BMP
    (BITMAPINFOHEADER, either row order) and WebP (VP8, VP8L, VP8X) from their
    fixed header fields.
    """
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, 30), b"\0" * 30])
    octets = tf.io.decode_raw(tf.strings.substr(head, 0, 30), tf.uint8)
    magic4, chunk = tf.strings.substr(head, 0, 4), tf.strings.substr(head, 12, 4)
    unknown = tf.constant([-1, -1], tf.int64)

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)

    def png():
        return tf.stack([_unsigned(octets, 20, 4, True), _unsigned(octets, 16, 4, True)])

    def gif():
        return tf.stack([_unsigned(octets, 8, 2), _unsigned(octets, 6, 2)])

    def bmp():  # a negative height (top-down rows) is a two's complement int32
        height = _unsigned(octets, 22, 4)
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return tf.stack([height, _unsigned(octets, 18, 4)])

    def webp():
        lossy = tf.stack([tf.bitwise.bitwise_and(_unsigned(octets, 28, 2), 0x3FFF),
                          tf.bitwise.bitwise_and(_unsigned(octets, 26, 2), 0x3FFF)])
        bits = _unsigned(octets, 21, 4)
        lossless = tf.stack([tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1,
                             tf.bitwise.bitwise_and(bits, 0x3FFF) + 1])
        extended = tf.stack([_unsigned(octets, 27, 3) + 1, _unsigned(octets, 24, 3) + 1])
        return tf.case([(tf.equal(chunk, b"VP8 "), lambda: lossy),
                        (tf.equal(chunk, b"VP8L"), lambda: lossless),
                        (tf.equal(chunk, b"VP8X"), lambda: extended)], default=lambda: unknown)

    is_webp = tf.logical_and(tf.equal(magic4, b"RIFF"),
                             tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    return tf.case([
        (tf.io.is_jpeg(image_bytes), jpeg),
        (tf.equal(magic4, b"\x89PNG"), png),
        (tf.equal(tf.strings.substr(head, 0, 3), b"GIF"), gif),
        (tf.equal(tf.strings.substr(head, 0, 2), b"BM"), bmp),
        (is_webp, webp),
    ], default=lambda: unknown)


TOO_LARGE = "image too large to decode"


def within_pixel_limit(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`image_bytes` once its header says at most `max_pixels` pixels; else the op fails
    (InvalidArgumentError naming TOO_LARGE) before anything is decoded, so a small file
    that decodes to gigabytes (a decompression bomb) costs nothing."""
    height_width = header_size(image_bytes)
    check = tf.debugging.assert_less_equal(
        tf.reduce_prod(tf.maximum(height_width, 0)), tf.constant(max_pixels, tf.int64),
        message=TOO_LARGE)
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def decode_and_resize(image_bytes: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Decode one encoded image and resize it for the feature extractor.

    Args:
        image_bytes: scalar tf.string, a JPEG, PNG, GIF (first frame), BMP or still
            WebP file's bytes.
        size: (height, width) the extractor takes.

    Returns:
        float32 [height, width, 3] in [0, 1]: bilinear resize (as TF-Hub's image
        modules expect) of the decoded image.
    """
    image = tf.image.convert_image_dtype(decode_rgb(image_bytes, size), tf.float32)
    image = tf.image.resize(image, size, method="bilinear")
    return tf.clip_by_value(image, 0.0, 1.0)


def decode_batch(image_bytes: tf.Tensor, size: tuple[int, int],
                 parallel_iterations: Optional[int] = None) -> tf.Tensor:
    """`decode_and_resize` over tf.string [N] -> float32 [N, height, width, 3] in [0, 1].

    `parallel_iterations` bounds how many images are decoded at once (map_fn's
    default in a graph: 10), and so the memory of large ones in flight.
    """
    return tf.map_fn(
        lambda b: decode_and_resize(b, size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([size[0], size[1], 3], tf.float32),
        parallel_iterations=parallel_iterations,
    )


# A seeded view of one image: (encoded bytes, (height, width), int64 [2] seed) ->
# float32 [H, W, 3] in [0, 1]; training's distortions are one (train/augment.py).
SeededView = Callable[[tf.Tensor, tuple[int, int], tf.Tensor], tf.Tensor]


def image_dataset(paths: Sequence[str], size: tuple[int, int], batch_size: int,
                  view: Optional[SeededView] = None,
                  seeds: Optional[np.ndarray] = None,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> tf.data.Dataset:
    """Files -> batches of (int64 [B] positions in `paths`, float32 [B, H, W, 3] in [0, 1]).

    Decoding runs in parallel and overlaps whatever consumes the batches. Files
    that do not decode are dropped; the positions say which ones came through
    (ask `decode_error` why the others did not). With `view`, file i becomes
    `view(bytes, size, seeds[i])` (seeds int64 [N, 2]) instead of `decode_and_resize`.
    A file whose header says more than `max_pixels` pixels is dropped undecoded.
    """
    positions = tf.range(len(paths), dtype=tf.int64)
    files = tf.constant(list(paths), tf.string)
    if view is None:
        def load(pos, path):
            data = within_pixel_limit(tf.io.read_file(path), max_pixels)
            return pos, decode_and_resize(data, size)

        ds = tf.data.Dataset.from_tensor_slices((positions, files))
    else:
        def load(pos, path, seed):
            return pos, view(within_pixel_limit(tf.io.read_file(path), max_pixels), size, seed)

        ds = tf.data.Dataset.from_tensor_slices((positions, files, tf.constant(seeds, tf.int64)))
    # The functions use tf.cond/switch_case themselves: AutoGraph's conversion would only
    # add 10-40 ms of tracing to every pipeline built.
    load = tf.autograph.experimental.do_not_convert(load)
    ds = ds.map(load, num_parallel_calls=usable_cores(), deterministic=True)
    ds = ds.ignore_errors().batch(batch_size).prefetch(2)
    # No autotuning: its model thread can hold up the iterator's deletion by up to 2 s
    # at the end of every pass (measured on 2 cores), and a fixed width does as well here.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Whether `batches` lowers the CPU priority of the pipeline's threads; False is for A/B
# measurements (it measured +9% images/s on 2 cores, see docs/ARCHITECTURE.md).
DEMOTE_PIPELINE_THREADS = True


def batches(ds: tf.data.Dataset, demote: Optional[bool] = None):
    """Iterate an `image_dataset` with its decode threads at the lowest CPU priority
    (`demote`, default DEMOTE_PIPELINE_THREADS; False: plain iteration).

    On a CPU the consumer is a forward pass that spreads each op over every core and
    waits for its slowest shard; a decode thread preempting one shard stalls the
    whole op. At nice 19 decoding takes the cycles the forward pass leaves idle
    (between its ops, in ops too small to shard) and yields when the forward pass
    wants the core. Which threads are tf.data's is not exposed, so every thread that
    starts while this iterates (other than TensorFlow's own `tf_*` pools) is demoted:
    in a program that starts threads of its own meanwhile, those run at nice 19 too.
    Per-thread priorities are Linux's; elsewhere this is plain iteration.
    """
    demote = DEMOTE_PIPELINE_THREADS if demote is None else demote
    known = _thread_ids()
    for item in ds:
        if demote and known is not None:
            _demote_new_threads(known)  # every batch: tf.data starts threads as it goes
        yield item


# Forward passes `map_batches` runs at once (1 for A/B measurements: plain `batches`).
FORWARD_STREAMS = 2


def map_batches(ds: tf.data.Dataset, fn, streams: Optional[int] = None,
                demote: Optional[bool] = None):
    """Yield (positions as int64 [B], fn(images)) for each batch of an `image_dataset`.

    `fn` (a forward pass) runs on `streams` (default FORWARD_STREAMS) batches at
    once, in threads of its own: one stream of calls left up to a fifth of 2 cores
    idle between and inside ops, which two streams fill (measured with ready
    tensors). Results come back in the dataset's order. `fn` must be thread-safe
    if streams > 1. `demote` as for `batches`: pass False when no forward pass is
    spread over threads that wait for each other (single-threaded LiteRT
    interpreters), which a decode thread could stall.
    """
    streams = FORWARD_STREAMS if streams is None else streams
    if streams < 2:
        for pos, images in batches(ds, demote):
            yield pos.numpy(), fn(images)
        return
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        # Start every worker now, so that `batches` does not count them as decode threads.
        started = threading.Barrier(streams + 1)
        for _ in range(streams):
            pool.submit(started.wait)
        started.wait()
        pending = collections.deque()
        try:
            for pos, images in batches(ds, demote):
                if len(pending) == streams:
                    yield pending.popleft().result()
                pending.append(pool.submit(lambda p=pos, x=images: (p.numpy(), fn(x))))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def lower_thread_priority(tid: int = 0) -> None:
    """nice 19 for one thread (0: the calling one); Linux priorities are per thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (AttributeError, OSError):
        pass  # ended meanwhile, not permitted, or not Linux: it keeps its priority


def _thread_ids() -> Optional[set[int]]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return None


def _demote_new_threads(known: set[int]) -> None:
    """nice 19 for threads not in `known` (then added), except TensorFlow's compute pool."""
    for tid in _thread_ids() or ():
        if tid in known:
            continue
        known.add(tid)
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read()
        except OSError:
            continue  # ended meanwhile
        if not name.startswith("tf_"):
            lower_thread_priority(tid)


_DECODE_ERRORS = (
    ("Unknown image file format", f"not a {FORMAT_NAMES} file"),
    # TF decodes still WebP images only (an animated one decoded with channels=0
    # corrupts its heap: decode_rgb never asks for that).
    ("WebP Animation must be", "animated WebP (stored as an animation): TensorFlow decodes "
                               "still WebP images only"),
    ("Number of channels requested does not match input",
     "animated WebP with transparency: TensorFlow decodes still WebP images only"),
    ("Failed to decode WebP", "truncated or corrupt WebP data"),
    ("Invalid JPEG data", "truncated or corrupt JPEG data"),
    ("jpeg::Uncompress failed", "truncated or corrupt JPEG data"),
    ("Invalid PNG data", "truncated or corrupt PNG data"),
    ("Invalid GIF data", "truncated or corrupt GIF data"),
)


def decode_reason(error: BaseException) -> Optional[str]:
    """A decoding error's cause in a few words, when it is one of the known ones."""
    return next((reason for needle, reason in _DECODE_ERRORS if needle in str(error)), None)


def decode_error(path: str, size: tuple[int, int], max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Why one file does not decode, in a few words (runs eagerly; for failures only)."""
    try:
        data = tf.io.read_file(path)
    except Exception as e:  # TF raises NotFoundError etc. with its own words
        return decode_reason(e) or "cannot decode: " + first_line(e, 160)
    return bytes_error(data, size, max_pixels)


def bytes_error(data, size: tuple[int, int], max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Why encoded image bytes (bytes or a scalar tf.string) do not decode, in the words
    of `decode_error` (runs eagerly; for failures only)."""
    try:
        data = tf.convert_to_tensor(data, tf.string)
        if int(tf.strings.length(data)) == 0:
            return "empty file (0 bytes)"
        height, width = (int(v) for v in header_size(data))
        if height * width > max_pixels:
            return (f"too large to decode: {width}x{height} = {width * height:,} pixels, over "
                    f"the limit of {max_pixels:,} (--max_image_pixels)")
        decode_and_resize(data, size)
    except Exception as e:  # TF raises InvalidArgumentError etc. with its own words
        return decode_reason(e) or "cannot decode: " + first_line(e, 160)
    return "cannot decode"
