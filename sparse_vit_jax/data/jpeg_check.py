"""Cheap JPEG (and PNG) structure checks, so tf.data can drop (and count) broken images.

TensorFlow has no graph-level try/except: a JPEG that libjpeg rejects makes
`decode_and_crop_jpeg` raise and stops the input pipeline. Worse, a truncated
file may or may not raise depending on the crop window (only the rows above
the crop bottom are decoded), so failures would depend on the random seed.
`tf.data.experimental.ignore_errors` would hide how many images were lost.

Instead, `is_decodable` walks the JPEG marker segments without decoding any
pixels and accepts a file only if

* it starts with SOI (FF D8);
* every segment before the first SOS (FF DA) has a well-formed marker and
  length that stays inside the file;
* a frame header (SOFn) with non-zero height and width and 1, 3 or 4
  components precedes the first SOS;
* an EOI marker (FF D9) follows the first SOS (entropy-coded data never
  contains FF D9, so a missing EOI means the file was truncated).

This rejects truncated, empty and non-JPEG (garbage, PNG, GIF) bytes: what
interrupted copies and mislabelled files produce. It does not validate the
entropy-coded data itself; libjpeg treats most damage there as a warning and
decodes anyway, so a file that passes can in principle still fail to decode.
Trailing bytes after EOI are accepted, as libjpeg does.

`is_decodable` is the predicate the input pipeline gives to
`pipeline.drop_invalid`, which runs it in a parallel map and counts what it drops.
"""

import tensorflow as tf

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_WINDOW = 10  # Bytes read per segment: marker, length, frame header fields.
_MAX_SEGMENTS = 4096  # A bound on the marker walk; real files use ~10-30.


def _is_frame_header(marker):
    """SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)."""
    return (
        (marker >= 0xC0) & (marker <= 0xCF) & (marker != 0xC4) & (marker != 0xC8) & (marker != 0xCC)
    )


def _is_standalone(marker):
    """Markers without a length field: RSTn (D0-D7) and TEM (01)."""
    return ((marker >= 0xD0) & (marker <= 0xD7)) | (marker == 0x01)


def jpeg_structure_is_valid(encoded):
    """True iff the scalar tf.string `encoded` passes the checks above."""
    raw = tf.io.decode_raw(encoded, tf.uint8)
    size = tf.size(raw)
    padded = tf.pad(raw, [[0, _WINDOW]])
    offsets = tf.range(_WINDOW)

    def window(pos):
        """The _WINDOW bytes at `pos` as int32 scalars (zeros past the end)."""
        index = tf.clip_by_value(pos, 0, size) + offsets
        return tf.unstack(tf.cast(tf.gather(padded, index), tf.int32), _WINDOW)

    head = window(0)
    starts_with_soi = (size >= 4) & tf.equal(head[0], 0xFF) & tf.equal(head[1], _SOI)

    def keep_walking(pos, done, valid, saw_frame, sos_pos):
        del pos, valid, saw_frame, sos_pos
        return tf.logical_not(done)

    def step(pos, done, valid, saw_frame, sos_pos):
        del done, valid
        # Segment layout: FF marker [len_hi len_lo [precision h_hi h_lo w_hi
        # w_lo components ...]] -- the last five only for frame headers.
        ff, marker, len_hi, len_lo, _, h_hi, h_lo, w_hi, w_lo, comps = window(pos)
        length = len_hi * 256 + len_lo
        is_fill = tf.equal(marker, 0xFF)  # FF bytes may pad before a marker
        is_sos = tf.equal(marker, _SOS)
        standalone = _is_standalone(marker)
        frame_ok = (
            _is_frame_header(marker)
            & (length >= 8)
            & (h_hi * 256 + h_lo > 0)
            & (w_hi * 256 + w_lo > 0)
            & ((comps == 1) | (comps == 3) | (comps == 4))
        )
        bad = (
            (pos + 3 >= size)
            | tf.not_equal(ff, 0xFF)
            | tf.equal(marker, _SOI)
            | tf.equal(marker, _EOI)
            | (_is_frame_header(marker) & ~frame_ok)
            | (~is_fill & ~is_sos & ~standalone & (length < 2))
        )
        next_pos = tf.where(is_fill, pos + 1, tf.where(standalone, pos + 2, pos + 2 + length))
        stop = bad | is_sos
        saw_frame |= frame_ok
        return (
            tf.where(stop, pos, next_pos),
            stop,
            ~bad & is_sos & saw_frame,
            saw_frame,
            tf.where(is_sos, pos, sos_pos),
        )

    _, done, header_ok, _, sos_pos = tf.while_loop(
        keep_walking,
        step,
        (
            tf.constant(2),
            tf.logical_not(starts_with_soi),
            tf.constant(False),
            tf.constant(False),
            tf.constant(-1),
        ),
        maximum_iterations=_MAX_SEGMENTS,
    )
    header_ok &= done & starts_with_soi
    # EOI must appear after the scan header.
    scan = raw[tf.maximum(sos_pos + 2, 0) :]
    has_eoi = tf.reduce_any(tf.equal(scan[:-1], 0xFF) & tf.equal(scan[1:], _EOI))
    return header_ok & has_eoi


def is_decodable(features):
    """Filter predicate on a TFDS example with SkipDecoding'd 'image' bytes."""
    return jpeg_structure_is_valid(features['image'])


# A PNG starts with this signature and ends with an empty IEND chunk (length 0, type, CRC).
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def png_structure_is_valid(encoded):
    """True iff the scalar tf.string `encoded` has PNG's signature, an IHDR chunk first, and
    the IEND chunk at the end (a truncated file lacks it)."""
    size = tf.strings.length(encoded)
    head = tf.strings.substr(encoded, 0, 16)
    tail = tf.strings.substr(encoded, tf.maximum(size - len(_PNG_END), 0), len(_PNG_END))
    return (
        (size >= 8 + 25 + len(_PNG_END))
        & tf.equal(tf.strings.substr(head, 0, 8), _PNG_SIGNATURE)
        & tf.equal(tf.strings.substr(head, 12, 4), b'IHDR')
        & tf.equal(tail, _PNG_END)
    )


def is_decodable_image(features):
    """Filter predicate for JPEG or PNG bytes (image folders mix them): the matching check."""
    encoded = features['image']
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: jpeg_structure_is_valid(encoded),
        lambda: png_structure_is_valid(encoded),
    )
