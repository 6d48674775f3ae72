"""A persistent image cache: every image of a CSV decoded once, at the training size, into one uint8 file on disk.

The file is memory-mapped read-only by every process that trains on it (DDP ranks, loader workers, later runs), so the
node holds one copy in its page cache and no run decodes an image twice. It is named by what it holds: the image size,
the decoder version and each path with its size and modification time; a CSV, an image size or a file that changes
names another cache, which is built anew. A build writes to a `.partial` file and renames it only when every image is
in, and the index (`.json`) is written last, so a build that is killed leaves nothing that can be mistaken for a cache.
Builds take an exclusive lock (flock) on the cache's lock file: the first process builds, the others wait and open it.
"""
import concurrent.futures
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os

import numpy as np
from tqdm import tqdm

from data.errors import InputError

# Bump when the decoding or the resizing of training images changes: old caches then no longer match.
CACHE_VERSION = 1
CHUNK = 256


class ImageCache:
    """images: uint8 [N, S, S] (memory-mapped, read-only), sizes: int64 [N, 2] decoded (height, width), errors: the
    decode error of each image ('' when it decoded)."""

    def __init__(self, path, images, sizes, errors):
        self.path, self.images, self.sizes, self.errors = path, images, sizes, errors

    def __len__(self):
        return len(self.images)


def cache_name(paths, image_size):
    """(name, state): name identifies the CSV's image list and size, state also each file's size and mtime."""
    what = hashlib.sha256(f"v{CACHE_VERSION} {int(image_size)}\n".encode())
    state = hashlib.sha256()
    for path in paths:
        what.update(path.encode() + b"\n")
        try:
            st = os.stat(path)
            state.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            state.update(b"missing\n")
    return what.hexdigest()[:16], state.hexdigest()[:16]


def _decode_chunk(task):
    """Worker: decode the images of one chunk into the partial cache file; their sizes and errors."""
    from data.dataset import read_gray  # the worker's own import: the same decoding as the uncached loader
    from data.transforms import SquareResize

    file, n, size, start, paths = task
    out = np.memmap(file, dtype=np.uint8, mode="r+", shape=(n, size, size))
    resize = SquareResize(size)
    sizes, errors = np.zeros((len(paths), 2), dtype=np.int64), []
    for k, path in enumerate(paths):
        try:
            gray = read_gray(path)
        except Exception as e:  # noqa: BLE001 - recorded in-band, as the loader does; the engine reports it
            errors.append(f"cannot decode {path}: {e}")
            continue
        out[start + k] = resize(gray).numpy()[0]
        sizes[k] = gray.shape[:2]
        errors.append("")
    out.flush()
    return start, sizes, errors


def _storage_error(folder, e):
    reasons = {errno.ENOSPC: "is full", errno.EROFS: "is read-only", errno.EACCES: "is not writable",
               errno.EDQUOT: "is over its quota"}
    return InputError(f"--cache-dir {folder} {reasons.get(e.errno, 'cannot be written')}: {e.strerror or e}; "
                      "free space, choose another --cache-dir, or train without it")


def _open(base, n, size):
    with open(base + ".json", encoding="utf-8") as f:
        index = json.load(f)
    if index.get("images") != n or index.get("size") != size or len(index.get("errors", [])) != n:
        raise ValueError("index does not match")
    if os.path.getsize(base + ".u8") != n * size * size:
        raise ValueError("image file has the wrong size")
    images = np.memmap(base + ".u8", dtype=np.uint8, mode="r", shape=(n, size, size))
    return ImageCache(base + ".u8", images, np.asarray(index["sizes"], dtype=np.int64).reshape(n, 2), index["errors"])


def _build(folder, base, paths, size, workers, progress):
    n = len(paths)
    partial = base + ".u8.partial"
    with open(partial, "wb") as f:
        if n:  # allocated now: a full disk is an error here, not a SIGBUS in a worker writing to a sparse file
            os.posix_fallocate(f.fileno(), 0, n * size * size)
    sizes, errors = np.zeros((n, 2), dtype=np.int64), [""] * n
    tasks = [(partial, n, size, s, paths[s:s + CHUNK]) for s in range(0, n, CHUNK)]
    # spawn: the caller may hold CUDA or threads that a fork would copy in a broken state
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool, \
            tqdm(total=n, desc="cache", unit="img", disable=not progress) as bar:
        for start, chunk_sizes, chunk_errors in pool.map(_decode_chunk, tasks):
            sizes[start:start + len(chunk_errors)] = chunk_sizes
            errors[start:start + len(chunk_errors)] = chunk_errors
            bar.update(len(chunk_errors))
    os.replace(partial, base + ".u8")
    tmp = base + ".json.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": CACHE_VERSION, "images": n, "size": size, "sizes": sizes.ravel().tolist(),
                   "errors": errors}, f)
    os.replace(tmp, base + ".json")


def image_cache(folder, paths, image_size, workers=None, progress=True):
    """The ImageCache of these paths at this size in `folder`, built first (with `workers` processes, default all
    cores) when it is absent, partial or stale. Older caches of the same image list and size are removed."""
    paths = [str(p) for p in paths]
    size = int(image_size)
    name, state = cache_name(paths, size)
    base = os.path.join(folder, f"images-{size}px-{name}-{state}")
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.join(folder, f"images-{size}px-{name}.lock"), "a")
    except OSError as e:
        raise _storage_error(folder, e) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait here, then find it built
        try:
            return _open(base, len(paths), size)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent, partial or damaged: build it
        for old in os.listdir(folder):
            if old.startswith(f"images-{size}px-{name}-") and not old.startswith(os.path.basename(base)):
                os.remove(os.path.join(folder, old))
        try:
            _build(folder, base, paths, size, workers or len(os.sched_getaffinity(0)), progress)
        except OSError as e:
            raise _storage_error(folder, e) from None
        return _open(base, len(paths), size)
