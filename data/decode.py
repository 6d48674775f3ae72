"""Decode chest radiographs (PNG 8/16-bit, JPEG, DICOM) to 8-bit grayscale.

One intensity mapping for the whole toolkit, so that the images written by
download_images.py and the images read back by the other steps look the same:

* 8-bit PNG / JPEG: kept as they are (colour is converted to gray).
* 16-bit PNG (PadChest): a robust window from the 0.5th to the 99.5th
  percentile of the pixel values (counted on every 4th row and column), mapped
  linearly to 0..255. A plain min-max window is ruined by one hot pixel or a
  burned-in label; the percentiles are not.
* DICOM: modality LUT (rescale slope/intercept or LUT), then the first VOI LUT
  or, when there is none, the first window (centre/width) as the DICOM standard
  defines it (pydicom.pixels.apply_voi_lut), scaled from the VOI output range to
  0..255. Without any VOI the robust percentile window is used. MONOCHROME1 is
  inverted so that lungs are dark, as in MONOCHROME2.

The format comes from the file's first bytes (PNG and JPEG signatures, DICOM's "DICM" at byte 128), so PNG bytes
named .jpg are read as the PNG they are; only bytes without a signature (DICOM without its preamble) fall back to
the suffix. Bad input raises ImageError with a short reason that ends up in errors.csv.
Images whose header declares more than MAX_PIXELS pixels are refused before
decoding (decompression bombs).

pydicom is imported only when a DICOM is decoded: training reads the 8-bit PNGs of step 1, and a GPU machine without
pydicom must be able to (a missing pydicom is then an EnvironmentFault naming the package, not a bad image).
"""
import io
import os
import struct

import cv2
import numpy as np
from PIL import Image

from data.errors import EnvironmentFault, ImageError
from data.views import header_view

# 8000 x 8000; real radiographs are at most about 4300 x 3500.
MAX_PIXELS = 64_000_000
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = PNG_SUFFIXES + JPEG_SUFFIXES + DICOM_SUFFIXES
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Part of what a finished ingest records (OUT/.parts): bump it whenever the pixels written for the same input change
# (decoding, intensity mapping, resizing, PNG parameters), so that a rerun re-ingests instead of mixing versions.
DECODER_VERSION = 2
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


def is_image_name(name):
    return name.lower().endswith(IMAGE_SUFFIXES)


def read_image(path):
    """Read an image file as uint8 HxW at its original size (see module doc for the mapping)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_image_bytes(data, os.path.basename(path))[0]


def image_format(data, name):
    """"PNG", "JPEG" or "DICOM": from the signature in the bytes, else from the suffix of `name`."""
    suffix = os.path.splitext(name.lower())[1]
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"not an image file (suffix {suffix or 'none'!r})")
    if data[:8] == PNG_SIGNATURE:
        return "PNG"
    if data[:3] == JPEG_SIGNATURE:
        return "JPEG"
    if data[128:132] == b"DICM":
        return "DICOM"
    return "PNG" if suffix in PNG_SUFFIXES else "JPEG" if suffix in JPEG_SUFFIXES else "DICOM"


def decode_image_bytes(data, name):
    """Decode one file's bytes (`name` only needs an image suffix; see image_format).

    Returns (uint8 HxW array, info) with info = {width, height, bits, photometric, view}
    describing the original image; view is the DICOM header's (data.views.header_view), '' for PNG and JPEG.
    """
    kind = image_format(data, name)
    return _decode_dicom(data) if kind == "DICOM" else _decode_raster(data, kind)


def resize_longest(img, size):
    """Resize so that the longest side is `size`, keeping the aspect ratio (cv2.INTER_AREA,
    after an integer INTER_AREA pre-shrink when the image is 2x or more too big).

    Images already no larger than `size` are returned unchanged (never upscaled),
    and size <= 0 keeps the original size.
    """
    h, w = img.shape[:2]
    if size <= 0 or max(h, w) <= size:
        return img
    shrink = max(h, w) // size
    if shrink >= 2 and min(h, w) >= shrink:  # a 1 x 5000 strip would lose its short side to 0 px
        # Integer area reduction first: OpenCV's fast path, 2x quicker than one fractional INTER_AREA.
        img = cv2.resize(img, None, fx=1 / shrink, fy=1 / shrink, interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
    scale = size / max(h, w)
    new_w = size if w >= h else max(1, round(w * scale))
    new_h = size if h > w else max(1, round(h * scale))
    if (new_h, new_w) == (h, w):
        return img
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)


def robust_window(values):
    """(low, high) = the 0.5th and 99.5th percentiles of a subsample (every 4th row and column)."""
    sample = values[::4, ::4]
    if sample.dtype in (np.uint8, np.uint16):
        # A histogram is 10x faster than np.percentile on integer images.
        cdf = np.cumsum(np.bincount(sample.ravel(), minlength=1))
        n = cdf[-1]
        low = int(np.searchsorted(cdf, n * LOW_PERCENTILE / 100, side="right"))
        high = int(np.searchsorted(cdf, n * HIGH_PERCENTILE / 100, side="left"))
    else:
        low, high = np.percentile(sample, [LOW_PERCENTILE, HIGH_PERCENTILE], method="nearest")
    if high <= low:
        high = low + 1
    return low, high


def window_to_uint8(values, low, high):
    """Map [low, high] linearly onto 0..255 (rounded, clipped)."""
    if values.dtype == np.uint16 and float(low).is_integer():
        # Saturating OpenCV arithmetic: 5x faster than numpy on a 5-megapixel image.
        shifted = cv2.subtract(values, int(low))
        return cv2.convertScaleAbs(shifted, alpha=255.0 / (high - low))
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _check_pixels(width, height, frames=1):
    if width * height * frames > MAX_PIXELS:
        raise ImageError(
            f"decompression bomb refused: {width}x{height}x{frames} pixels > {MAX_PIXELS}")


def _png_header(data):
    """(width, height, bits, photometric) from the PNG IHDR chunk, read without decoding."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26:
        raise ImageError("not a readable PNG (no PNG signature and IHDR header)")
    width, height, bits, color = struct.unpack(">IIBB", data[16:26])
    photometric = {0: "MONOCHROME2", 4: "MONOCHROME2", 2: "RGB", 6: "RGB", 3: "PALETTE COLOR"}.get(color, "?")
    return width, height, bits, photometric


def _jpeg_header(data):
    try:
        header = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb refused: {e}") from None
    except Exception as e:
        raise ImageError(f"not a readable JPEG ({type(e).__name__}: {e})") from None
    return header.width, header.height, 8, "MONOCHROME2" if header.mode == "L" else header.mode


def _decode_raster(data, kind):
    width, height, bits, photometric = _png_header(data) if kind == "PNG" else _jpeg_header(data)
    _check_pixels(width, height)  # before anything is decompressed
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ImageError(f"truncated or corrupt {kind} image")
    if img.shape != (height, width):
        raise ImageError(f"decoded size {img.shape} differs from header {height}x{width}")
    if img.dtype == np.uint16:
        img = window_to_uint8(img, *robust_window(img))
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    return img, {"width": width, "height": height, "bits": bits, "photometric": photometric, "view": ""}


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels
    except ImportError as e:
        raise EnvironmentFault(f"decoding DICOM needs pydicom, which cannot be imported here ({e}); "
                               f"pip install pydicom") from None
    return pydicom


def _dicom_view(ds):
    """The header's view, '' when it names none or a value cannot be read (the view is then unknown)."""
    try:
        return header_view(ds)
    except Exception:  # a malformed element is read lazily by pydicom and fails here; the pixels may be fine
        return ""


def _decode_dicom(data):
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:
        raise ImageError(f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ImageError("DICOM has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        photometric = str(ds.PhotometricInterpretation)
    except Exception as e:
        raise ImageError(f"DICOM lacks image attributes ({type(e).__name__}: {e})") from None
    _check_pixels(cols, rows, frames)
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
    try:
        arr = ds.pixel_array
    except Exception as e:
        name = getattr(syntax, "name", syntax)
        raise ImageError(f"cannot decode pixel data, transfer syntax {syntax} ({name}): "
                         f"{type(e).__name__}: {e}") from None
    if frames > 1:
        arr = arr[0]  # radiographs are single frame; keep the first one
    info = {"width": cols, "height": rows, "bits": int(ds.get("BitsStored") or 8),
            "photometric": photometric, "view": _dicom_view(ds)}
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
            return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY), info  # pydicom returns RGB
        raise ImageError(f"unsupported photometric interpretation {photometric}")
    img = window_to_uint8(*_dicom_voi(arr, ds))
    if photometric == "MONOCHROME1":
        img = 255 - img
    return img, info


def _dicom_voi(arr, ds):
    """(values, low, high): the VOI-transformed pixels and the output range to map to 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    values = apply_modality_lut(arr, ds)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_lut or has_window:
        try:
            if has_lut and values.dtype.kind == "f":
                values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
            out = apply_voi_lut(values, ds, prefer_lut=True)
            low, high = _voi_output_range(ds)
            if high > low:
                return out, low, high
        except (ValueError, TypeError, IndexError, NotImplementedError, KeyError):
            pass  # malformed VOI attributes: fall back to the robust window below
    return (values, *robust_window(values))


def _voi_output_range(ds):
    """Smallest and largest value the dataset's first VOI LUT or window can output."""
    from pydicom.pixels import apply_voi_lut
    if ds.get("VOILUTSequence"):
        entries, first, _ = ds.VOILUTSequence[0].LUTDescriptor
        probe = np.arange(first, first + (entries or 65536))
    else:
        probe = np.array([-1e12, 1e12])  # the window's two saturated ends
    out = apply_voi_lut(probe, ds, prefer_lut=True)
    return float(out.min()), float(out.max())
