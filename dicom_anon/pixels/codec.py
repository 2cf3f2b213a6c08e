"""Decode DICOM pixel data to RGB frames and encode processed frames back.

Decoding uses pydicom's pixel backends (pylibjpeg for JPEG, JPEG 2000 and RLE), which
also convert YBR to RGB. JPEG Baseline colour photos, the common case, go through one more
pydicom decoding plugin defined here: Pillow's libjpeg-turbo with its own (SIMD) YCbCr to
RGB conversion, about twice as fast on a 12 MP photo as decoding to YBR and converting in numpy.

Encoding is lossless unless a route asks otherwise, because the preserved clinical area
must be bit-identical in what the archive receives; the lossy-compression attributes follow
PS3.3 C.7.6.1.1.5 (once lossy, always "01", with ratios and methods accumulated).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, features
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    RLELossless,
)

from ..headers.encapsulated import check_frame_headers, frames_of
from ..headers.errors import Refused
from ..headers.jpeg_markers import strip_and_measure

# Decoding allocates rows x columns x frames x 3 bytes before a pixel is read, and the face
# pipeline then holds a few full-size copies. The largest sensors in clinical cameras give
# 45-61 MP; twice that admits every real photo while no header can ask for gigabytes.
MAX_PIXELS = 120_000_000

_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
_MONO = {"MONOCHROME1", "MONOCHROME2"}
_YBR_FULL = {"YBR_FULL", "YBR_FULL_422"}

# Transfer syntaxes whose decoded pixels always differ from what the camera gave the
# encoder. JPEG 2000 (…4.91) may be lossless or lossy; the dataset's own Lossy Image
# Compression attribute decides for it.
_LOSSY_SYNTAX_METHOD: dict[str, str] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
}

# Attributes that describe the old encoding and would be wrong after re-encoding.
_STALE_TAGS = (
    0x7FE00001,  # Extended Offset Table
    0x7FE00002,  # Extended Offset Table Lengths
    0x00280106,  # Smallest Image Pixel Value
    0x00280107,  # Largest Image Pixel Value
)


class UndecodablePixels(Refused):
    """The pixel data cannot be turned into an image we can check; never forward what we cannot see."""

    def __init__(self, reason: str) -> None:
        super().__init__("undecodable-pixels", reason)


class UnsupportedPixels(Refused):
    """Decodable, but not a photograph we process (for example 16-bit grey or palette colour)."""

    def __init__(self, reason: str) -> None:
        super().__init__("unsupported-pixels", reason)


class UnencodablePixels(Refused):
    """The processed image could not be stored in the requested encoding."""

    def __init__(self, reason: str) -> None:
        super().__init__("unencodable-pixels", reason)


class OutputEncoding(StrEnum):
    """How processed pixels are stored. The first three are lossless.

    Explicit VR Little Endian is the default: every archive accepts it (storescp refuses
    compressed syntaxes unless told otherwise) and it costs no time; RLE and JPEG 2000
    lossless trade seconds for smaller files.
    """

    EXPLICIT_LE = "explicit-le"
    RLE = "rle"
    JPEG2000_LOSSLESS = "jpeg2000-lossless"
    JPEG_BASELINE = "jpeg-baseline"
    JPEG2000 = "jpeg2000"

    @property
    def lossy(self) -> bool:
        return self in (OutputEncoding.JPEG_BASELINE, OutputEncoding.JPEG2000)


@dataclass(frozen=True)
class DecodedPixels:
    """All frames as ``(frames, rows, columns, 3)`` uint8 RGB, plus what encoding back needs to know."""

    frames: np.ndarray
    monochrome: bool
    lossy_source: bool
    source_syntax: UID


def _lossy_source(ds: Dataset, syntax: UID) -> bool:
    if str(ds.get("LossyImageCompression", "")).strip() == "01":
        return True
    if syntax == JPEG2000:
        return str(ds.get("LossyImageCompression", "")).strip() != "00"
    return syntax in _LOSSY_SYNTAX_METHOD


def _why(exc: Exception) -> str:
    """The decoder's own reason on one line. pydicom heads the errors of all its plugins with
    "Unable to decode as exceptions were raised by all available plugins:", a line that says
    nothing: the first plugin's reason follows it ("pylibjpeg: ... SOI marker missing")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]


def decode(ds: Dataset) -> DecodedPixels:
    """Every frame of ``ds`` as RGB uint8; grey images are replicated into three equal channels.

    MONOCHROME1 is inverted to MONOCHROME2 so that the values mean what a viewer shows.
    """
    if "PixelData" not in ds:
        raise UndecodablePixels("the instance has no Pixel Data (7FE0,0010)")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise UndecodablePixels("the file meta has no Transfer Syntax UID, so the pixels cannot be read")
    syntax = UID(syntax)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _COLOUR | _MONO:
        raise UnsupportedPixels(f"Photometric Interpretation {photometric or '(missing)'} is not a photo")
    if int(ds.get("BitsAllocated", 0)) != 8 or int(ds.get("BitsStored", 8)) != 8:
        raise UnsupportedPixels(
            f"{ds.get('BitsStored', '?')}-bit pixels; photos are processed only with 8 bits per sample"
        )
    _check_size(ds, syntax)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UndecodablePixels(f"no decoder for transfer syntax {syntax} ({syntax.name})") from None
    if not decoder.is_available:
        raise UndecodablePixels(f"the decoder for {syntax.name} is not installed")
    # The native-RGB plugin first where it applies; pydicom's own plugins (in their order) otherwise
    # and whenever it fails, so it can only make decoding faster, never refuse more.
    native = _native_rgb(ds, syntax, photometric) and RGB_PLUGIN in decoder.available_plugins
    for plugin in [RGB_PLUGIN] * native + [""]:
        try:
            # With our plugin pydicom's own YBR->RGB conversion is off: the plugin did it.
            arr, info = decoder.as_array(ds, as_rgb=not plugin, decoding_plugin=plugin)
            break
        except Exception as exc:  # every backend raises its own types; all mean "cannot read it"
            if plugin:
                continue
            raise UndecodablePixels(f"{syntax.name} pixel data could not be decoded: {_why(exc)}") from None

    n_frames = int(info.get("number_of_frames") or 1)
    samples = int(info.get("samples_per_pixel") or 1)
    if n_frames == 1:
        arr = arr[np.newaxis]
    if samples == 1:
        if str(info.get("photometric_interpretation")) == "MONOCHROME1":
            arr = 255 - arr
        arr = np.repeat(arr[..., np.newaxis], 3, axis=-1)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise UnsupportedPixels(f"decoded to {arr.dtype} with shape {arr.shape}; expected 8-bit frames")
    return DecodedPixels(
        frames=np.ascontiguousarray(arr),
        monochrome=samples == 1,
        lossy_source=_lossy_source(ds, syntax),
        source_syntax=syntax,
    )


def _check_size(ds: Dataset, syntax: UID) -> None:
    """Refuse, before anything is allocated, an image too large, one whose frames declare another
    size (a 1 kB JPEG declaring 65,000 x 65,000 under a header of 16 x 16 took 24 GB to decode),
    or a JPEG stream broken between its segments or cut short."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        raise UndecodablePixels("Rows, Columns or Number of Frames is missing or not a number") from None
    if min(rows, columns, frames) < 1:
        raise UndecodablePixels(
            f"the header gives an empty image: {columns} x {rows} pixels, {frames} frames"
        )
    if rows * columns * frames > MAX_PIXELS:
        raise UnsupportedPixels(
            f"{columns} x {rows} pixels in {frames} frame(s), {rows * columns * frames / 1e6:.0f} MP; "
            f"photos above {MAX_PIXELS / 1e6:.0f} MP are not processed"
        )
    if syntax.is_encapsulated:
        try:
            # The header stage's own walk: a stream cut short or broken between its segments is
            # refused, not decoded with its missing part filled in grey (a photo cut off below
            # the nose was forwarded with a grey block where its kept mouth had been).
            check_frame_headers(ds, [strip_and_measure(frame)[2] for frame in frames_of(ds)])
        except Refused as exc:  # the header module's codes; here they all mean "cannot decode"
            raise UndecodablePixels(exc.reason) from None


# --- the native-RGB JPEG decoding plugin (pydicom's plugin interface: is_available,
# DECODER_DEPENDENCIES and a frame function, registered with the JPEG Baseline decoder) --------

RGB_PLUGIN = "dicom-anon-pillow-rgb"
DECODER_DEPENDENCIES = {JPEGBaseline8Bit: ("pillow>=10.0",)}


def is_available(uid: str) -> bool:
    """pydicom asks this when the plugin is registered: JPEG Baseline only, with Pillow's JPEG codec."""
    return uid == JPEGBaseline8Bit and bool(features.check_codec("jpg"))


def _native_rgb(ds: Dataset, syntax: UID, photometric: str) -> bool:
    return syntax == JPEGBaseline8Bit and int(ds.get("SamplesPerPixel", 1)) == 3 and photometric in _YBR_FULL


def decode_rgb_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG Baseline colour frame as RGB, converted by libjpeg-turbo as it decodes.

    pydicom's own Pillow plugin asks for raw YCbCr (so that its numpy conversion can follow the
    header); here libjpeg applies the colour transform the JPEG stream itself declares (JFIF,
    Adobe or RGB component ids). ``decode`` calls it with pydicom's conversion switched off
    (``as_rgb=False``) and knows the frames are RGB; telling the runner instead would make
    pydicom re-check the header against every frame's JFIF marker and warn each time. Asked
    with ``as_rgb`` (pydicom trying plugins on its own), it declines, since pydicom would then
    convert the colours a second time.
    """
    if runner.get_option("as_rgb", False):
        raise ValueError(f"{RGB_PLUGIN} returns RGB itself; use it with as_rgb=False")
    image = Image.open(io.BytesIO(src), formats=("JPEG",))
    if image.mode != "RGB":
        raise ValueError(f"the JPEG stream decodes to {image.mode}, not RGB")
    return image.tobytes()


def _register_rgb_plugin() -> None:
    with contextlib.suppress(ValueError):  # already registered (the module was imported again)
        get_decoder(JPEGBaseline8Bit).add_plugin(RGB_PLUGIN, (__name__, "decode_rgb_frame"))


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in integers: exact for grey pixels (r == g == b), so a preserved grey area survives."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((299 * r + 587 * g + 114 * b + 500) // 1000).astype(np.uint8)


def _jpeg_frames(frames: np.ndarray, monochrome: bool, quality: int) -> list[bytes]:
    # pydicom has no JPEG Baseline encoder; Pillow's libjpeg writes a clean stream
    # (no EXIF, no COM segments, so no PHI can ride along inside the bitstream).
    out = []
    for frame in frames:
        buf = io.BytesIO()
        img = Image.fromarray(frame)  # (h, w) -> L, (h, w, 3) -> RGB
        # subsampling=1 is 4:2:2, which is what YBR_FULL_422 declares.
        img.save(buf, format="JPEG", quality=quality, subsampling=1, optimize=True)
        out.append(buf.getvalue())
    return out


def _append_multi(ds: Dataset, keyword: str, value: str) -> None:
    old = ds.get(keyword)
    values = [] if old is None or old == "" else (list(old) if not isinstance(old, str | float) else [old])
    setattr(ds, keyword, [*values, value] if values else value)


def _compress(
    ds: Dataset, data: np.ndarray, array: np.ndarray, output: OutputEncoding, quality: int, monochrome: bool
) -> str | None:
    """Compress the uncompressed Pixel Data already in ``ds``; return the lossy method code, if lossy."""
    if output is OutputEncoding.RLE:
        # pylibjpeg-rle is ~15x faster than pydicom's pure-Python RLE encoder on a 12 MP photo.
        ds.compress(RLELossless, array, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif output is OutputEncoding.JPEG2000_LOSSLESS:
        ds.compress(JPEG2000Lossless, array, generate_instance_uid=False)
    elif output is OutputEncoding.JPEG2000:
        # A compression-ratio target rather than PSNR keeps file sizes predictable.
        ds.compress(JPEG2000, array, generate_instance_uid=False, j2k_cr=[max(2.0, 100.0 / (101 - quality))])
        return "ISO_15444_1"
    elif output is OutputEncoding.JPEG_BASELINE:
        ds.PixelData = encapsulate(_jpeg_frames(data, monochrome, quality), has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        if not monochrome:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        return "ISO_10918_1"
    return None


def encode(
    ds: Dataset,
    frames: np.ndarray,
    *,
    monochrome: bool,
    lossy_source: bool,
    source_syntax: str = "",
    output: OutputEncoding = OutputEncoding.EXPLICIT_LE,
    quality: int = 92,
) -> None:
    """Replace the pixel data of ``ds`` (in place) with ``frames`` in the requested encoding.

    ``frames`` is ``(frames, rows, columns, 3)`` uint8 RGB as ``decode`` returns it. Grey
    sources go back as MONOCHROME2. Pixel module and Lossy Image Compression attributes are
    rewritten to describe the new data; the SOP Instance UID is left to the header stage.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (frames, rows, columns, 3) uint8, got {frames.dtype} {frames.shape}")
    n, rows, cols, _ = frames.shape
    data = to_grey(frames) if monochrome else np.ascontiguousarray(frames)
    for tag in _STALE_TAGS:
        if tag in ds:
            del ds[tag]
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if monochrome:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        if "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
    else:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    if n > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = n
    raw_size = data.nbytes
    array = data if n > 1 else data[0]

    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = array.tobytes()
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = False

    try:
        method = _compress(ds, data, array, output, quality, monochrome)
    except Exception as exc:  # encoder plugins raise their own types; all mean "cannot store it"
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise UnencodablePixels(f"{output.value} encoding failed: {first}") from None

    if method is not None:
        ratio = raw_size / max(1, len(ds.PixelData))
        ds.LossyImageCompression = "01"
        _append_multi(ds, "LossyImageCompressionRatio", f"{ratio:.2f}"[:16])
        _append_multi(ds, "LossyImageCompressionMethod", method)
    elif lossy_source:
        # Lossless storage of a once-lossy image is still a lossy image (PS3.3 C.7.6.1.1.5).
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds and source_syntax in _LOSSY_SYNTAX_METHOD:
            ds.LossyImageCompressionMethod = _LOSSY_SYNTAX_METHOD[source_syntax]
    elif "LossyImageCompression" in ds:
        ds.LossyImageCompression = "00"


_register_rgb_plugin()
