"""A persistent image cache: every image of a CSV decoded once, at the training size, into one uint8 file on disk.

The file is memory-mapped read-only by every process that trains on it (DDP ranks, loader workers, later runs), so the
node holds one copy in its page cache and no run decodes an image twice. It is named by what it holds: the image size,
the decoder version and each path with its size and modification time; a CSV, an image size or a file that changes
names another cache, which is built anew. A build writes through data.files.atomic_path (a temporary file, renamed only
when every image is in), and the index (`.json`) is written last, so a build that is killed leaves nothing that can be
mistaken for a cache.
Builds take an exclusive lock (flock) on the cache's lock file: the first process builds, the others wait and open it.
"""
import collections
import errno
import fcntl
import hashlib
import json
import os

import numpy as np
from tqdm import tqdm

from data.errors import InputError
from data.files import atomic_path, remove_temporary_files, write_text_atomic
from data.pools import PoolStart, default_workers, forkserver_pool
from data.transforms import SquareResize

# Bump when the decoding or the resizing of training images changes: old caches then no longer match.
CACHE_VERSION = 2
CHUNK = 256
MIN_CHUNK = 16
# Below this many images, this process alone is done (about 2 ms an image) before builders, whose fork server
# imports torch (about 2 s), would be up.
PARALLEL_FROM = 1024


class ImageCache:
    """images: uint8 [N, S, S] (memory-mapped, read-only), sizes: int64 [N, 2] decoded (height, width), errors: the
    decode error of each image ('' when it decoded)."""

    def __init__(self, path, images, sizes, errors):
        self.path, self.images, self.sizes, self.errors = path, images, sizes, errors

    def __len__(self):
        return len(self.images)

    def __getstate__(self):  # a spawned loader worker maps the file again; pickling the map would copy every image
        return {**self.__dict__, "images": self.images.shape}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=state["images"])


def cache_folder(csv_path, setting=None, in_memory=False):
    """The persistent cache's folder for the images of `csv_path`: `setting` (a --cache-dir), else cache/ beside the
    CSV, where every later run on that CSV (and the view classifier's thumbnails) finds it; None for 'off', and by
    default when the images are kept in memory instead (--cache)."""
    if setting == "off" or setting is None and in_memory:
        return None
    return setting or os.path.join(os.path.dirname(os.path.abspath(csv_path)), "cache")


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
    """Decode the images of one chunk into the partial cache file (in a builder process, or the caller's); their
    sizes and errors."""
    file, n, size, start, paths, decode = task
    out = np.memmap(file, dtype=np.uint8, mode="r+", shape=(n, size, size))
    resize = SquareResize(size)
    sizes, errors = np.zeros((len(paths), 2), dtype=np.int64), []
    for k, path in enumerate(paths):
        img, decoded, reason = decode(path, resize)
        if not reason:
            out[start + k], sizes[k] = img.numpy()[0], decoded.numpy()
        errors.append(reason)
    out.flush()
    return start, sizes, errors


def _storage_error(folder, e):
    reasons = {errno.ENOSPC: "is full", errno.EROFS: "is read-only", errno.EACCES: "is not writable",
               errno.EPERM: "is not writable", errno.EDQUOT: "is over its quota",
               errno.EFBIG: "does not take a file this large"}
    return InputError(f"--cache-dir {folder} {reasons.get(e.errno, 'cannot be written')}: {e.strerror or e}; "
                      "free space, choose another --cache-dir, or pass --cache-dir off")


def _open(base, n, size):
    with open(base + ".json", encoding="utf-8") as f:
        index = json.load(f)
    if index.get("images") != n or index.get("size") != size or len(index.get("errors", [])) != n:
        raise ValueError("index does not match")
    if os.path.getsize(base + ".u8") != n * size * size:
        raise ValueError("image file has the wrong size")
    images = np.memmap(base + ".u8", dtype=np.uint8, mode="r", shape=(n, size, size))
    return ImageCache(base + ".u8", images, np.asarray(index["sizes"], dtype=np.int64).reshape(n, 2), index["errors"])


def _build(base, paths, size, decode, init, workers, progress):
    with atomic_path(base + ".u8") as partial:
        sizes, errors = _fill(partial, paths, size, decode, init, workers, progress)
    write_text_atomic(base + ".json", json.dumps({"version": CACHE_VERSION, "images": len(paths), "size": size,
                                                  "sizes": sizes.ravel().tolist(), "errors": errors}))


def _fill(partial, paths, size, decode, init, workers, progress):
    """Decode every image into the new image file `partial`; (their decoded sizes, their errors)."""
    n = len(paths)
    with open(partial, "xb") as f:
        if n:  # allocated now: a full disk is an error here, not a SIGBUS in a worker writing to a sparse file
            os.posix_fallocate(f.fileno(), 0, n * size * size)
    sizes, errors = np.zeros((n, 2), dtype=np.int64), [""] * n
    # Chunks small enough that every builder gets several (the last one is not decoded by one builder while the
    # others idle), large enough that a task's own cost is nothing.
    chunk = max(MIN_CHUNK, min(CHUNK, -(-n // (8 * max(workers, 1)))))
    tasks = collections.deque((partial, n, size, s, paths[s:s + chunk], decode) for s in range(0, n, chunk))
    workers = min(workers, len(tasks)) if n >= PARALLEL_FROM else 1
    with tqdm(total=n, desc="cache", unit="img", disable=not progress) as bar:
        if workers <= 1:
            _collect(map(_decode_chunk, tasks), sizes, errors, bar)
        else:
            # From a fork server (data.pools): a clean process, no CUDA or threads of the caller's copied, that
            # imports torch and the decoder once instead of once per builder; while the builders start, this process
            # decodes the first chunks itself. The builders ignore SIGINT/SIGTERM; on either, the caller cancels what
            # has not started and waits only for the chunks in hand (seconds), and the partial file is never taken
            # for a cache.
            modules = {__name__, decode.__module__} | ({init.__module__} if init is not None else set())
            pool = forkserver_pool(workers, sorted(modules), init)
            starter = PoolStart(pool, workers)
            try:
                while tasks and starter.running:
                    _collect([_decode_chunk(tasks.popleft())], sizes, errors, bar)
                starter.wait()
                jobs = [pool.submit(_decode_chunk, task) for task in tasks]  # all started: no start-up to cut
                _collect((job.result() for job in jobs), sizes, errors, bar)
            finally:
                starter.wait()
                pool.shutdown(wait=True, cancel_futures=True)
    return sizes, errors


def _collect(results, sizes, errors, bar):
    for start, chunk_sizes, chunk_errors in results:
        sizes[start:start + len(chunk_errors)] = chunk_sizes
        errors[start:start + len(chunk_errors)] = chunk_errors
        bar.update(len(chunk_errors))


def image_cache(folder, paths, image_size, decode, init=None, workers=None, progress=True):
    """The ImageCache of these paths at this size in `folder`, built first (with `workers` processes, default all
    cores) when it is absent, partial or stale. Older caches of the same image list and size are removed. A complete
    cache is opened without the lock, so a read-only folder that holds one serves it.

    decode(path, resize) -> (uint8 [1, S, S], (height, width), reason): the loader's own decoding
    (data.dataset.decode_square), so that a cached batch is an uncached one; init: each builder process's set-up.
    Both are module-level functions, which a spawned builder imports by name."""
    paths = [str(p) for p in paths]
    size = int(image_size)
    name, state = cache_name(paths, size)
    base = os.path.join(folder, f"images-{size}px-{name}-{state}")
    try:
        return _open(base, len(paths), size)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, partial or damaged: build it, unless another process is building it now
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
            pass
        try:
            # Under the lock every temporary file of this image list is a killed build's (a builder process it left
            # behind may still write into it: once removed, its writes go nowhere); .partial: an earlier version's.
            remove_temporary_files(folder, prefix=f"images-{size}px-{name}-")
            for old in os.listdir(folder):
                if old.startswith(f"images-{size}px-{name}-") and (not old.startswith(os.path.basename(base))
                                                                   or old.endswith(".partial")):
                    os.remove(os.path.join(folder, old))
            _build(base, paths, size, decode, init, workers or default_workers(), progress)
        except OSError as e:
            raise _storage_error(folder, e) from None
        return _open(base, len(paths), size)
