import io
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from conftest import ROOT, WITHOUT_PYDICOM_AND_GCS
from data.decode import ImageError, decode_image_bytes, read_image, resize_longest


def dicom_bytes(ds):
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def unci_crop(size=384):
    """RG1_UNCI (real CR, MONOCHROME1, 15 bits stored, window 15000/30000) cropped for speed."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    arr = ds.pixel_array[600:600 + size, 700:700 + size].copy()
    ds.PixelData, ds.Rows, ds.Columns = arr.tobytes(), size, size
    return ds, arr


def standard_window(values, center, width, bits_out=8):
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently of pydicom."""
    y_max = 2 ** bits_out - 1
    c, w = center - 0.5, width - 1
    out = ((values.astype(np.float64) - c) / w + 0.5) * y_max
    out[values <= c - w / 2] = 0
    out[values > c + w / 2] = y_max
    return np.rint(out)


def test_j2k_lossy_container_decodes_to_exactly_the_uncompressed_pixels():
    unci = read_image(get_testdata_file("RG1_UNCI.dcm"))
    j2ki = read_image(get_testdata_file("RG1_J2KI.dcm"))
    assert unci.dtype == np.uint8 and unci.shape == (1955, 1841)
    assert np.array_equal(unci, j2ki)
    assert np.array_equal(resize_longest(unci, 512), resize_longest(j2ki, 512))


def test_dicom_rendering_matches_the_standard_window_and_inversion():
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    expected = 255 - standard_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    got = read_image(get_testdata_file("RG1_UNCI.dcm"))
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1
    # MONOCHROME1: the lungs (dark) are below the mediastinum and bones (bright).
    h, w = got.shape
    lungs = np.concatenate([got[h // 3:h // 2, w // 5:w // 3].ravel(), got[h // 3:h // 2, -w // 3:-w // 5].ravel()])
    spine = got[h // 3:h // 2, w // 2 - 40:w // 2 + 40]
    assert lungs.mean() + 30 < spine.mean()


@pytest.mark.skipif(shutil.which("dcmj2pnm") is None, reason="dcmtk (apt install dcmtk) not installed")
@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG1_J2KR.dcm"])
def test_dicom_rendering_agrees_with_dcmtk(tmp_path, name):
    # dcmj2pnm decodes JPEG 2000 itself only with extra plugins, so give it uncompressed pixels.
    ds = pydicom.dcmread(get_testdata_file(name))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    src = tmp_path / "in.dcm"
    ds.save_as(src)
    subprocess.run(["dcmj2pnm", "--quiet", "+Wi", "1", "+on", str(src), str(tmp_path / "ref.png")], check=True)
    ref = cv2.imread(str(tmp_path / "ref.png"), cv2.IMREAD_UNCHANGED)
    ours = read_image(get_testdata_file(name))
    assert ref.shape == ours.shape
    diff = np.abs(resize_longest(ours, 512).astype(int) - resize_longest(ref, 512))
    assert diff.max() <= 3 and diff.mean() < 1.0


def test_monochrome2_is_not_inverted_and_modality_lut_is_applied():
    ds, arr = unci_crop()
    mono1, info = decode_image_bytes(dicom_bytes(ds), "a.dcm")
    assert info == {"width": 384, "height": 384, "bits": 15, "photometric": "MONOCHROME1", "view": "PA"}
    ds.PhotometricInterpretation = "MONOCHROME2"
    mono2, _ = decode_image_bytes(dicom_bytes(ds), "a.dcm")
    assert np.array_equal(mono2, 255 - mono1)
    # Same picture stored as v' = (v + 1000) / 2 with a rescale back and the same window.
    ds.PixelData = ((arr.astype(np.int32) + 1000) // 2).astype(np.uint16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    rescaled, _ = decode_image_bytes(dicom_bytes(ds), "a.dcm")
    assert np.abs(rescaled.astype(int) - mono2).max() <= 1


def test_voi_lut_sequence_is_preferred_over_the_window():
    ds, arr = unci_crop()
    ds.PhotometricInterpretation = "MONOCHROME2"
    # A 12-bit LUT that inverts: output must follow the LUT, not the (non-inverting) window.
    first, entries = 0, 2 ** 15
    lut = (4095 - np.arange(entries) * 4095 // (entries - 1)).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [entries, first, 12])
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    ds.VOILUTSequence = [item]
    got, _ = decode_image_bytes(dicom_bytes(ds), "a.dcm")
    expected = np.rint(lut[arr].astype(np.float64) * 255 / 4095)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_dicom_without_window_gets_the_robust_window():
    ds, arr = unci_crop()
    del ds.WindowCenter, ds.WindowWidth
    ds.PhotometricInterpretation = "MONOCHROME2"
    got, _ = decode_image_bytes(dicom_bytes(ds), "a.dcm")
    assert got.min() == 0 and got.max() == 255
    assert np.corrcoef(got.ravel().astype(float), arr.ravel().astype(float))[0, 1] > 0.95


def test_16bit_png_window_is_robust_to_a_hot_pixel(tmp_path):
    ramp = np.tile(np.linspace(1000, 3000, 400), (300, 1)).astype(np.uint16)
    hot = ramp.copy()
    hot[10, 10] = 65535
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    cv2.imwrite(str(tmp_path / "hot.png"), hot)
    a, b = read_image(tmp_path / "ramp.png"), read_image(tmp_path / "hot.png")
    assert a.min() == 0 and a.max() == 255  # uses the whole 8-bit range
    mask = np.ones(a.shape, bool)
    mask[10, 10] = False
    assert np.abs(a.astype(int) - b)[mask].max() <= 1  # a min-max window would squash b to ~0..10
    _, info = decode_image_bytes((tmp_path / "hot.png").read_bytes(), "hot.png")
    assert info == {"width": 400, "height": 300, "bits": 16, "photometric": "MONOCHROME2", "view": ""}


def test_8bit_png_and_jpeg_keep_their_pixels(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert np.array_equal(read_image(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.jpg"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    jpg = read_image(tmp_path / "b.jpg")
    assert jpg.shape == (50, 70) and jpg.dtype == np.uint8


def test_resize_longest_keeps_aspect_and_never_upscales():
    img = np.zeros((2500, 2048), np.uint8)
    assert resize_longest(img, 512).shape == (512, 419)
    assert resize_longest(img.T, 512).shape == (419, 512)
    assert resize_longest(np.zeros((100, 80), np.uint8), 512).shape == (100, 80)
    assert resize_longest(img, 0).shape == (2500, 2048)


@pytest.mark.parametrize("shape, size, expected", [((5000, 1), 64, (64, 1)), ((1, 5000), 64, (1, 64)),
                                                   ((5000, 3), 512, (512, 1)), ((3, 5000), 64, (1, 64))])
def test_a_strip_keeps_at_least_one_pixel_across(shape, size, expected):
    assert resize_longest(np.full(shape, 200, np.uint8), size).shape == expected


def test_the_format_comes_from_the_bytes_not_the_suffix():
    png16 = cv2.imencode(".png", np.full((30, 40), 3000, np.uint16))[1].tobytes()
    img, info = decode_image_bytes(png16, "disguised.jpg")
    assert info == {"width": 40, "height": 30, "bits": 16, "photometric": "MONOCHROME2", "view": ""} \
        and img.shape == (30, 40)
    jpg = cv2.imencode(".jpg", np.full((30, 40), 90, np.uint8))[1].tobytes()
    assert decode_image_bytes(jpg, "disguised.png")[1] == {"width": 40, "height": 30, "bits": 8,
                                                           "photometric": "MONOCHROME2", "view": ""}
    ds, _ = unci_crop(32)
    assert decode_image_bytes(dicom_bytes(ds), "disguised.png")[1]["photometric"] == "MONOCHROME1"


def png_header_only(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_bad_images_raise_image_error_with_a_reason(tmp_path):
    good = cv2.imencode(".png", np.full((200, 200), 1234, np.uint16))[1].tobytes()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image_bytes(good[:len(good) // 2], "t.png")
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image_bytes(png_header_only(30000, 30000), "bomb.png")
    with pytest.raises(ImageError, match="not a readable PNG"):
        decode_image_bytes(b"hello", "x.png")
    with pytest.raises(ImageError, match="not an image file"):
        decode_image_bytes(good, "x.txt")
    no_pixels, _ = unci_crop(64)
    del no_pixels.PixelData
    with pytest.raises(ImageError, match="no pixel data"):
        decode_image_bytes(dicom_bytes(no_pixels), "a.dcm")
    huge, _ = unci_crop(64)
    huge.Rows = huge.Columns = 60000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image_bytes(dicom_bytes(huge), "a.dcm")
    mpeg, _ = unci_crop(64)
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    mpeg.PixelData = pydicom.encaps.encapsulate([b"\0" * 100])
    with pytest.raises(ImageError, match="cannot decode pixel data, transfer syntax 1.2.840.10008.1.2.4.100"):
        decode_image_bytes(dicom_bytes(mpeg), "a.dcm")
    with pytest.raises(ImageError, match="not a readable DICOM"):
        decode_image_bytes(b"\0" * 300, "a.dcm")


def test_rle_jpeg_lossless_and_baseline_dicoms_decode():
    plain = read_image(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(read_image(get_testdata_file("MR_small_RLE.dcm")), plain)
    assert np.array_equal(read_image(get_testdata_file("MR_small_jp2klossless.dcm")), plain)
    lossless = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))
    assert lossless.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    img = read_image(get_testdata_file("JPEG-LL.dcm"))
    assert img.shape == (lossless.Rows, lossless.Columns) and img.max() > img.min()
    rgb = read_image(get_testdata_file("SC_jpeg_no_color_transform.dcm"))  # JPEG baseline, colour -> gray
    assert rgb.shape == (256, 256) and rgb.dtype == np.uint8


@pytest.mark.slow
def test_the_training_path_reads_pngs_without_pydicom_or_the_gcs_client(tmp_path):
    img8 = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    img16 = np.random.default_rng(1).integers(500, 4000, (40, 30)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), img8)
    cv2.imwrite(str(tmp_path / "b.png"), img16)
    (tmp_path / "c.dcm").write_bytes(dicom_bytes(unci_crop(32)[0]))
    np.save(tmp_path / "b.npy", read_image(tmp_path / "b.png"))  # what step 1's mapping gives, decided here
    code = WITHOUT_PYDICOM_AND_GCS + textwrap.dedent(f"""
        import numpy as np, pandas as pd
        from data.dataset import ChestImages, read_gray
        from data.errors import EnvironmentFault
        folder = {str(tmp_path)!r}
        a, b = read_gray(folder + "/a.png"), read_gray(folder + "/b.png")  # 8-bit fast path; 16-bit via data.decode
        assert a.shape == (40, 30) and np.array_equal(b, np.load(folder + "/b.npy"))
        image, _, _, size, error = ChestImages(pd.DataFrame({{"path": [folder + "/a.png"]}}), 16)[0]
        assert tuple(image.shape) == (1, 16, 16) and size.tolist() == [40, 30] and error == ""
        try:
            read_gray(folder + "/c.dcm")
        except EnvironmentFault as e:
            assert "decoding DICOM needs pydicom" in str(e) and "pip install pydicom" in str(e), e
        else:
            raise AssertionError("a DICOM decoded without pydicom")
        import sys
        assert not [m for m in sys.modules if m.startswith(("pydicom", "google.cloud"))]
        np.save(folder + "/a_read.npy", a)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "a_read.npy"), img8)
