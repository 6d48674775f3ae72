"""The whole sample world: generate() writes the three datasets and the box lists, montage() draws a preview, main()
is the command line (python -m sample_world)."""

import os
import shutil
import tarfile
import time
import zipfile

import cv2
import numpy as np
import pandas as pd
import pydicom

from data.commands import Parser, run_main
from data.errors import EnvironmentFault, InputError
from sample_world.findings import DRAWN_FINDINGS
from sample_world.nih import BOX_LIST, NIH_DIR, write_nih
from sample_world.openi import write_openi
from sample_world.padchest import taxonomy_cuis, write_padchest

MAX_LATERAL_FRACTION = 0.45  # every PA study with a lateral gives 0.85 / 1.85 of the images as laterals


def check_settings(padchest_images=1200, openi_reports=150, images_per_zip=300, exclude_rows=2, openi_without_image=3,
                   normal_fraction=0.3, prevalence=0.21, jpeg2000_fraction=0.33, lateral_fraction=0.25,
                   openi_no_view_fraction=0.33, nih_images=300):
    """ValueError naming the first setting out of range (as a command-line flag). A prevalence of 0 would make the
    draw of an abnormal study's findings, which repeats until it has one, loop for ever."""
    counts = {"padchest-images": (padchest_images, 1, None), "openi-reports": (openi_reports, 1, None),
              "images-per-zip": (images_per_zip, 1, None), "exclude-rows": (exclude_rows, 0, padchest_images),
              "openi-without-image": (openi_without_image, 0, openi_reports), "nih-images": (nih_images, 0, None)}
    for flag, (value, low, high) in counts.items():
        if value < low or (high is not None and value > high):
            upper = f" and at most {high} (the number of {'images' if flag == 'exclude-rows' else 'reports'})" \
                if high is not None else ""
            raise ValueError(f"--{flag} must be at least {low}{upper}, got {value}")
    for flag, value in (("normal-fraction", normal_fraction), ("jpeg2000-fraction", jpeg2000_fraction),
                        ("openi-no-view-fraction", openi_no_view_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"--{flag} must be from 0 to 1, got {value}")
    if not 0 <= lateral_fraction <= MAX_LATERAL_FRACTION:
        raise ValueError(f"--lateral-fraction must be from 0 to {MAX_LATERAL_FRACTION} (every PA study with a "
                         f"lateral), got {lateral_fraction}")
    if not 0 < prevalence <= 1:
        raise ValueError(f"--prevalence must be above 0 and at most 1 (an abnormal study needs a finding), got "
                         f"{prevalence}")


def generate(out_dir, seed=0, padchest_images=1200, openi_reports=150, images_per_zip=300, exclude_rows=2,
             openi_without_image=3, normal_fraction=0.3, prevalence=0.21, jpeg2000_fraction=0.33, lateral_fraction=0.25,
             openi_no_view_fraction=0.33, nih_images=300, progress=True):
    """Write the sample world into out_dir and return a summary dict (counts, prevalence per finding, seconds).
    nih_images=0 writes no NIH part (and removes an earlier world's)."""
    check_settings(padchest_images, openi_reports, images_per_zip, exclude_rows, openi_without_image, normal_fraction,
                   prevalence, jpeg2000_fraction, lateral_fraction, openi_no_view_fraction, nih_images)
    start = time.time()
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
    for name in os.listdir(os.path.join(out_dir, "images")):
        if name.endswith(".zip") and name[:-4].isdigit():  # stale zips from a bigger earlier world
            os.remove(os.path.join(out_dir, "images", name))
    cuis = taxonomy_cuis()
    pad_boxes, n_pad, n_pad_lateral = write_padchest(out_dir, seed, padchest_images, images_per_zip, exclude_rows,
                                                     normal_fraction, prevalence, lateral_fraction, cuis, progress)
    openi_boxes, openi = write_openi(out_dir, seed, openi_reports, openi_without_image, normal_fraction, prevalence,
                                     jpeg2000_fraction, openi_no_view_fraction, progress)
    boxes = pd.DataFrame(pad_boxes + openi_boxes, columns=["Image Index", "Finding Label", "x", "y", "w", "h"])
    boxes.to_csv(os.path.join(out_dir, "BBox_List_2017.csv"), index=False)
    if nih_images:
        nih = write_nih(out_dir, seed, nih_images, normal_fraction, prevalence, progress)
    else:
        shutil.rmtree(os.path.join(out_dir, NIH_DIR), ignore_errors=True)
        nih = {"images": 0, "patients": 0, "boxes": 0, "box_images": 0, "test_images": 0}
    n_frontal = n_pad - n_pad_lateral + openi["dicoms"] - openi["lateral"]
    per_image = boxes.drop_duplicates(["Image Index", "Finding Label"])["Finding Label"].value_counts()
    return {
        "out_dir": out_dir,
        "padchest_images": n_pad,
        "padchest_lateral": n_pad_lateral,
        "zips": (n_pad + images_per_zip - 1) // images_per_zip,
        "openi_reports": openi_reports,
        "openi_dicoms": openi["dicoms"],
        "openi_jpeg2000": openi["jpeg2000"],
        "openi_lateral": openi["lateral"],
        "openi_no_view": openi["no_view"],
        "boxes": len(boxes),
        "nih": nih,
        # over PadChest's and OpenI's frontal images, the ones with boxes
        "prevalence": {name: round(float(per_image.get(name, 0)) / max(n_frontal, 1), 3) for name in DRAWN_FINDINGS},
        "seconds": round(time.time() - start, 1),
    }


def montage(world_dir, out_path, n=12, columns=4, size=256):
    """A grid of the world's first images (8-bit window, OpenI inverted; a third OpenI, a quarter NIH when there is an
    NIH part) with their boxes, to eyeball the drawing."""
    boxes = pd.read_csv(os.path.join(world_dir, "BBox_List_2017.csv"))
    nih_dir = os.path.join(world_dir, NIH_DIR)
    n_nih = n // 4 if os.path.isdir(nih_dir) else 0
    if n_nih:
        # NIH's header has more fields than names: the columns are taken by position
        nih_boxes = pd.read_csv(os.path.join(nih_dir, BOX_LIST), header=None, skiprows=1).iloc[:, :6]
        boxes = pd.concat([boxes, nih_boxes.set_axis(boxes.columns, axis=1)], ignore_index=True)
    tiles = []
    with zipfile.ZipFile(os.path.join(world_dir, "images", "0.zip")) as zf:
        for name in zf.namelist()[: n - n // 3 - n_nih]:
            img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)
            lo, hi = np.percentile(img, [0.5, 99.5])
            tiles.append((name, np.clip((img - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)))
    with tarfile.open(os.path.join(world_dir, "images", "NLMCXR_dcm.tgz")) as tar:
        for member in tar.getmembers()[: n // 3]:
            ds = pydicom.dcmread(tar.extractfile(member))
            arr = ds.pixel_array.astype(np.float32)
            wc, ww = float(ds.WindowCenter), float(ds.WindowWidth)
            img = np.clip((arr - (wc - ww / 2)) / ww * 255, 0, 255)
            tiles.append(("CXR" + member.name[:-4], (255 - img).astype(np.uint8)))
    with_boxes = list(dict.fromkeys(boxes["Image Index"][boxes["Image Index"].str.match(r"\d{8}_\d{3}\.png$")]))
    for name in with_boxes[:n_nih]:
        tiles.append((name, cv2.imread(os.path.join(nih_dir, "png", name), cv2.IMREAD_GRAYSCALE)))
    cells = []
    for image_id, img in tiles:
        h, w = img.shape
        scale = size / max(h, w)
        cell = np.zeros((size, size, 3), np.uint8)
        small = cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        cell[: small.shape[0], : small.shape[1]] = small[..., None]
        for _, b in boxes[boxes["Image Index"] == image_id].iterrows():
            p0 = (int(b.x * scale), int(b.y * scale))
            p1 = (int((b.x + b.w) * scale), int((b.y + b.h) * scale))
            cv2.rectangle(cell, p0, p1, (0, 200, 255), 1)
            cv2.putText(cell, b["Finding Label"], (p0[0], max(p0[1] - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                        (0, 255, 0), 1)
        cells.append(cell)
    while len(cells) % columns:
        cells.append(np.zeros((size, size, 3), np.uint8))
    rows = [np.hstack(cells[i: i + columns]) for i in range(0, len(cells), columns)]
    ok, encoded = cv2.imencode(os.path.splitext(out_path)[1] or ".png", np.vstack(rows))
    if not ok:
        raise ValueError(f"cannot encode the montage as {out_path}")
    with open(out_path, "wb") as f:  # OSError naming the path, where cv2.imwrite would only return False
        f.write(encoded.tobytes())
    return out_path


def check_montage_path(path):
    """ValueError when no montage could be written at `path`, found before the world is generated."""
    if os.path.isdir(path):
        raise ValueError(f"--montage {path} is a folder; give the path of a .png file")
    if not cv2.haveImageWriter(path):
        raise ValueError(f"--montage {path}: no image format for its suffix (use .png or .jpg)")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
        if not existed:
            os.remove(path)
    except OSError as e:
        raise ValueError(f"--montage {path} cannot be written ({e.strerror or e})") from None


def main(argv=None):
    """python -m sample_world --out WORLD [options]: write a world and print its summary."""
    parser = Parser(
        prog="python -m sample_world",
        description="Generate a small synthetic PadChest + OpenI + NIH world shaped like the real inputs.")
    parser.add_argument("--out", required=True, help="output folder (created; files of an earlier world are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--padchest-images", type=int, default=1200, help="number of PadChest PNG images / CSV rows")
    parser.add_argument("--openi-reports", type=int, default=150, help="number of OpenI XML reports (1-2 DICOMs each)")
    parser.add_argument("--images-per-zip", type=int, default=300,
                        help="PadChest images per zip (zip number = ImageDir)")
    parser.add_argument("--exclude-rows", type=int, default=2,
                        help="PadChest rows labelled ['exclude'] (images still zipped)")
    parser.add_argument("--openi-without-image", type=int, default=3,
                        help="OpenI reports that have no image, as in the real data")
    parser.add_argument("--normal-fraction", type=float, default=0.3,
                        help="fraction of studies drawn and labelled normal")
    parser.add_argument("--prevalence", type=float, default=0.21,
                        help="chance of each drawn finding in an abnormal study (about 0.17 of all images at 0.21)")
    parser.add_argument("--jpeg2000-fraction", type=float, default=0.33,
                        help="fraction of DICOMs stored JPEG 2000 lossless")
    parser.add_argument("--lateral-fraction", type=float, default=0.25,
                        help="share of PadChest images that are laterals (Projection L), each the second image of a "
                             f"PA study; at most {MAX_LATERAL_FRACTION}")
    parser.add_argument("--openi-no-view-fraction", type=float, default=0.33,
                        help="fraction of OpenI DICOMs whose ViewPosition is empty (frontal and lateral alike)")
    parser.add_argument("--nih-images", type=int, default=300,
                        help="number of NIH-style 1024x1024 PNGs under nih/png (0: no NIH part)")
    parser.add_argument("--montage", default=None,
                        help="also write a PNG grid of 12 images with their boxes to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return run_main(parser.prog, parser.parse_args, write_world, argv)


def write_world(args):
    """The world of the command's flags written to --out (and --montage), and its summary printed."""
    try:
        check_settings(args.padchest_images, args.openi_reports, args.images_per_zip, args.exclude_rows,
                       args.openi_without_image, args.normal_fraction, args.prevalence, args.jpeg2000_fraction,
                       args.lateral_fraction, args.openi_no_view_fraction, args.nih_images)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out {args.out} exists and is not a folder")
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {args.out} cannot be created ({e.strerror or e})") from None
        if args.montage:
            check_montage_path(args.montage)
    except ValueError as e:  # the checks of the flags say which is wrong and why
        raise InputError(str(e)) from None
    summary = generate(args.out, args.seed, args.padchest_images, args.openi_reports, args.images_per_zip,
                       args.exclude_rows, args.openi_without_image, args.normal_fraction, args.prevalence,
                       args.jpeg2000_fraction, args.lateral_fraction, args.openi_no_view_fraction, args.nih_images,
                       progress=not args.quiet)
    if args.montage:
        try:
            montage(args.out, args.montage)
        except OSError as e:
            raise EnvironmentFault(f"--montage {args.montage} cannot be written ({e.strerror or e})") from None
    prevalence = ", ".join(f"{k} {v:.2f}" for k, v in summary["prevalence"].items())
    nih = summary["nih"]
    nih_part = (f"{nih['images']} NIH PNGs of {nih['patients']} patients with {nih['boxes']} boxes on "
                f"{nih['box_images']} images, " if nih["images"] else "")
    print(f"wrote {summary['padchest_images']} PadChest PNGs ({summary['padchest_lateral']} lateral) in "
          f"{summary['zips']} zips, {summary['openi_dicoms']} OpenI DICOMs ({summary['openi_lateral']} lateral, "
          f"{summary['openi_no_view']} without ViewPosition, {summary['openi_jpeg2000']} JPEG 2000) for "
          f"{summary['openi_reports']} reports, {summary['boxes']} boxes, {nih_part}"
          f"to {args.out} in {summary['seconds']:.1f} s; prevalence on frontal views: {prevalence}")

