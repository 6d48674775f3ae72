"""Images for the models: each row of a frame decoded once, in the loader's workers, to a uint8 square.

Flips and normalization happen on whole batches (data.transforms).
"""
import logging
import os
import stat

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from data.cache import image_cache
from data.commands import helper_process_signals
from data.decode import read_image
from data.errors import ImageError, InputError
from data.files import check_values, image_files, missing_files, read_table
from data.formats import SPLITS
from data.transforms import square_transform
from data.views import parse_views, view_mask

log = logging.getLogger(__name__)

# DataLoader workers are forked, and OpenCV's thread pool does not survive a fork: a worker that touches it can
# hang for good. Images are small and the workers are the parallelism, so OpenCV runs single-threaded.
cv2.setNumThreads(1)

FAST_SUFFIXES = (".png", ".jpg", ".jpeg")


def worker_process_init(_=None):
    """A helper process's set-up (a loader worker, a cache builder): one torch thread, since the processes are the
    parallelism, and the stop signals left to the main process (data.commands.helper_process_signals): it finishes
    its step with the batches the workers deliver."""
    torch.set_num_threads(1)
    helper_process_signals()


def read_gray(path):
    """The image at `path` as uint8 HxW at its original size.

    8-bit PNG and JPEG are read by OpenCV directly (the common case after download_images.py); 16-bit PNGs, colour
    files and DICOM go through data.decode.read_image, which maps them to 8 bits exactly as step 1 does.
    """
    path = str(path)
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block the reader for good
        raise ImageError("not a regular file")
    if path.lower().endswith(FAST_SUFFIXES):
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is not None and img.dtype == np.uint8 and img.ndim == 2:
            return img
    return read_image(path)


def decode_square(path, resize):
    """(uint8 [1, S, S], decoded (height, width) int64, "") for the image at `path`; for a file that does not decode
    (broken, unreadable: not a bug) a black image, (0, 0) and the reason. The one answer of the loader and of the
    persistent cache (data.cache), so that a cached run sees exactly what an uncached one does."""
    try:
        gray = read_gray(path)
    except (InputError, OSError, cv2.error) as e:
        blank = torch.zeros((1, resize.size, resize.size), dtype=torch.uint8)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip() or type(e).__name__
        return blank, torch.zeros(2, dtype=torch.int64), reason
    return resize(gray), torch.tensor(gray.shape[:2], dtype=torch.int64), ""


class ChestImages(Dataset):
    """For each row of a frame with `path` (and class columns): (image uint8 [1, S, S], labels float [C], row index,
    decoded size [height, width], error).

    A file that cannot be decoded does not kill a worker: it comes back as a black image with `error` saying why
    (empty when fine), and the engine reports it as bad input naming the file (self.paths[row index]). Rows without
    labels (prediction on new studies) get a label vector of -1.

    Two caches, so that epochs after the first decode nothing: cache_dir, the persistent one (data.cache: built once
    for these paths at this size, memory-mapped, shared by every process on the node and by later runs); or
    cache=True, one shared-memory uint8 tensor of this run, filled as images are first read (the workers, forked or
    spawned, write into the same memory). `progress`: the persistent cache's build shows a progress bar. `crop`: the
    model's geometry (data.transforms.square_transform: None stretches the whole image, "center" takes its centred
    square, as torchxrayvision's models expect); the persistent cache holds stretched images only.
    """

    def __init__(self, frame, image_size, classes=None, cache=False, cache_dir=None, progress=True, crop=None):
        self.paths = frame["path"].astype(str).tolist()
        self.resize = square_transform(image_size, crop)
        if crop is not None and cache_dir is not None:  # data.cache stores the stretched squares only
            raise ValueError("the persistent image cache holds whole images stretched to the square, not crops")
        if classes is not None and all(c in frame.columns for c in classes):
            self.labels = torch.tensor(frame[list(classes)].to_numpy(dtype=np.float32))
        else:
            self.labels = torch.full((len(frame), len(classes or [])), -1.0)
        self.cache = self.disk = None
        if cache_dir is not None:
            self.disk = image_cache(cache_dir, self.paths, image_size, decode_square, worker_process_init,
                                    progress=progress)
        elif cache:
            self.cache = torch.zeros((len(frame), 1, image_size, image_size), dtype=torch.uint8).share_memory_()
            self.sizes = torch.zeros((len(frame), 2), dtype=torch.int64).share_memory_()
            self.cached = torch.zeros(len(frame), dtype=torch.bool).share_memory_()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.disk is not None:  # copied out of the read-only map: a batch must not alias the page cache
            return (torch.from_numpy(np.array(self.disk.images[i])).unsqueeze(0), self.labels[i], i,
                    torch.from_numpy(self.disk.sizes[i].copy()), self.disk.errors[i])
        if self.cache is not None and self.cached[i]:
            return self.cache[i], self.labels[i], i, self.sizes[i], ""
        img, size, reason = decode_square(self.paths[i], self.resize)
        if self.cache is not None and not reason:
            self.cache[i], self.sizes[i] = img, size
            self.cached[i] = True
        return img, self.labels[i], i, size, reason


def read_combined(csv_path, classes, skip_missing=False):
    """combinelabels.py's CSV with absolute image paths; InputError naming the file (and row) for a bad CSV or
    missing images. Relative paths are taken from the CSV's folder. Class cells are 1, 0, -1 (uncertain) or blank
    (unknown: a class the source never annotates); both -1 and blank come back as -1, which no loss or metric counts."""
    if not csv_path:
        raise InputError("--csv is required for training and evaluation")
    what = f"combinelabels.py's CSV (ImageID, path, split and the {len(classes)} class columns)"
    if os.path.isdir(csv_path):
        raise InputError(f"--csv {csv_path} is a folder, not {what}")
    # keep_default_na=False: only an empty cell means "unknown"; text such as 'NA' in a class column stays an error
    frame = read_table(csv_path, ["ImageID", "path", "split", *classes], what=what, error=InputError,
                       dtype={"ImageID": str, "path": str, "split": str}, keep_default_na=False)
    for column in ("ImageID", "path"):
        empty = np.flatnonzero(frame[column].isna().to_numpy() | (frame[column].str.strip() == "").to_numpy())
        if len(empty):
            more = f" (and {len(empty) - 1} more rows)" if len(empty) > 1 else ""
            raise InputError(f"{csv_path}, row {empty[0] + 2}: {column} is empty{more}")
    check_values(frame, csv_path, ["split"], SPLITS, error=InputError)  # another split would be left out unseen
    check_values(frame, csv_path, classes, (1, 0, -1), error=InputError, blank=True)
    # A blank is a class the image's source never annotates (NIH's nine): like -1, left out of every loss and metric.
    frame[list(classes)] = frame[list(classes)].apply(pd.to_numeric, errors="coerce").fillna(-1).astype(np.int8)
    root = os.path.dirname(os.path.abspath(csv_path))
    frame["path"] = [p if os.path.isabs(p) else os.path.join(root, p) for p in frame["path"].astype(str)]
    gone = missing_files(frame["path"])
    if gone:
        first = ", ".join(gone[:5])
        if not skip_missing:
            raise InputError(f"{len(gone)} of {len(frame)} images listed in {csv_path} are missing (first: {first}); "
                             f"fix the paths or pass --skip-missing to drop them")
        log.warning("dropping %d rows whose image is missing (first: %s)", len(gone), first)
        frame = frame[~frame["path"].isin(set(gone))]
    return frame.reset_index(drop=True)


def selected_rows(frame, csv_path, views="frontal", train_sources=None, test_sources=None):
    """The rows of a combined.csv frame a run uses: those of `views` (a --views value), and with `train_sources`
    only those of the training and held-out sources (checked against the Source column); InputError naming the
    flag and what matches nothing."""
    named = [*(train_sources or []), *(test_sources or [])]
    if named:
        if "Source" not in frame.columns:
            raise InputError(f"--train-sources and --test-sources need a Source column in {csv_path}")
        present = sorted(frame["Source"].astype(str).unique())
        for flag, names in (("--train-sources", train_sources), ("--test-sources", test_sources)):
            unknown = [n for n in names or [] if n not in present]
            if unknown:
                raise InputError(f"{flag}: {', '.join(unknown)} not in {csv_path}'s Source column (it has "
                                 f"{', '.join(present)})")
        both = set(train_sources or []) & set(test_sources or [])
        if both:
            raise InputError(f"{', '.join(sorted(both))} is both a training and a held-out source")
        if train_sources:
            frame = frame[frame["Source"].isin(named)].reset_index(drop=True)
    keep = view_mask(frame, parse_views(views))
    if not keep.all():
        left_out = frame.loc[~keep, "view"].fillna("").astype(str).replace("", "unknown").value_counts()
        log.info("--views %s: %d of %d images kept; left out by view: %s", views, int(keep.sum()), len(frame),
                 ", ".join(f"{v} {n}" for v, n in left_out.items()))
        frame = frame[keep].reset_index(drop=True)
    if not len(frame):
        raise InputError(f"no image of {csv_path} has a view in --views (use --views all, or label unknown views "
                         f"with python -m utils.view_classifier)")
    return frame


def split(frame, name, limit=None):
    """The rows of one split ('train', 'val', 'test'), at most `limit` of them."""
    part = frame[frame["split"] == name].reset_index(drop=True)
    return part.head(limit) if limit else part


def training_splits(frame, csv_path, held_out=None, limit=None):
    """(train, val): the rows a model trains and validates on, all of the `held_out` sources left out (they are
    evaluated in full); InputError when either split is empty."""
    pool = frame[~frame["Source"].isin(held_out)] if held_out else frame
    train, val = split(pool, "train", limit), split(pool, "val", limit)
    if len(train) == 0 or len(val) == 0:
        raise InputError(f"{csv_path} needs train and val rows (split column); it has {len(train)} train and "
                         f"{len(val)} val rows")
    return train, val


def image_frame(path):
    """ImageID (the file stem) and path of every PNG, JPEG and DICOM file at `path` (a file or a folder)."""
    files = image_files(path)
    if not files:
        raise InputError(f"no PNG, JPEG or DICOM files at {path}")
    return pd.DataFrame({"ImageID": [os.path.splitext(os.path.basename(f))[0] for f in files], "path": files})
