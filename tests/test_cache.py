"""The persistent image cache: one file per image list and size, shared by processes, rebuilt when stale."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, read_only
from data.cache import image_cache as build_cache
from data.dataset import decode_square, read_gray, worker_process_init
from data.errors import InputError
from data.transforms import SquareResize


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (40 + i, 50), dtype=np.uint8))
        paths.append(str(path))
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    return paths + [str(tmp_path / "img" / "bad.png")]


def image_cache(folder, paths, size, **options):
    """data.cache.image_cache with the loader's decoding, as data.dataset.ChestImages calls it."""
    return build_cache(folder, paths, size, decode_square, worker_process_init, **options)


def identities(cache):
    """(inode, modification time) of a cache's image file and of its index: a build writes both anew and renames
    them into place, so a rebuild changes them even where it gives the same name and bytes."""
    return [(st.st_ino, st.st_mtime_ns) for st in map(os.stat, (cache.path, cache.path[:-3] + ".json"))]


def expected(path, size):
    return SquareResize(size)(read_gray(path)).numpy()[0]


def test_cache_holds_what_the_loader_decodes(tmp_path, images):
    cache = image_cache(tmp_path / "cache", images, 32, workers=2, progress=False)
    assert cache.images.shape == (8, 32, 32) and not cache.images.flags.writeable
    for i, path in enumerate(images[:-1]):
        assert np.array_equal(cache.images[i], expected(path, 32))
        assert tuple(cache.sizes[i]) == (40 + i, 50) and cache.errors[i] == ""
    assert cache.errors[7] == decode_square(images[7], SquareResize(32))[2] == \
        "not a readable PNG (no PNG signature and IHDR header)"  # the loader's own reason, for the engine to name
    built = identities(cache)
    again = image_cache(tmp_path / "cache", images, 32, workers=2, progress=False)
    assert again.path == cache.path and identities(again) == built  # reused: the same files, not written again
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".u8")]) == 1
    os.utime(images[0], ns=(1, 1))  # an input changes (its modification time alone): the cache is stale
    changed = image_cache(tmp_path / "cache", images, 32, workers=1, progress=False)
    assert identities(changed) != built and not os.path.exists(cache.path)  # rebuilt, and the stale one removed


@pytest.mark.parametrize("builders_only", [False, True], ids=["this process while they start", "builders only"])
def test_builders_and_this_process_together_write_what_the_loader_decodes(tmp_path, images, monkeypatch,
                                                                         builders_only):
    """The parallel build (builders forked from a fork server, this process decoding while they start) on a set
    small enough for a test: every image in its row, byte for byte the loader's, whoever decoded it."""
    import data.cache
    from data.pools import PoolStart
    monkeypatch.setattr(data.cache, "PARALLEL_FROM", 0)
    monkeypatch.setattr(data.cache, "MIN_CHUNK", 1)
    if builders_only:  # as if the builders were up at once: every chunk goes to them
        monkeypatch.setattr(data.cache, "PoolStart", type("Started", (PoolStart,), {"running": False}))
    many = images[:-1] * 4 + images[-1:]  # 29 images, 8 chunks of up to 4 for 2 builders
    cache = image_cache(tmp_path / "cache", many, 32, workers=2, progress=False)
    for i, path in enumerate(many[:-1]):
        assert np.array_equal(cache.images[i], expected(path, 32)), i
    assert cache.errors == [""] * 28 + ["not a readable PNG (no PNG signature and IHDR header)"]


def test_stale_or_partial_caches_are_rebuilt(tmp_path, images):
    folder = tmp_path / "cache"
    first = image_cache(folder, images, 32, workers=1, progress=False)
    other_size = image_cache(folder, images, 24, workers=1, progress=False)
    assert other_size.path != first.path and other_size.images.shape == (8, 24, 24)
    cv2.imwrite(images[0], np.full((30, 30), 7, dtype=np.uint8))  # a file changes: the old cache is stale
    os.utime(images[0], ns=(1, 1))
    changed = image_cache(folder, images, 32, workers=1, progress=False)
    assert changed.path != first.path and not os.path.exists(first.path)  # the stale one is removed
    assert (changed.images[0] == 7).all()
    # a build killed before its index was written: the image file alone is never used
    os.remove(changed.path[:-3] + ".json")
    with open(changed.path, "r+b") as f:
        f.write(b"\xff" * 100)
    rebuilt = image_cache(folder, images, 32, workers=1, progress=False)
    assert (rebuilt.images[0] == 7).all()
    # a damaged index is rebuilt too
    with open(rebuilt.path[:-3] + ".json", "w") as f:
        f.write("{")
    assert (image_cache(folder, images, 32, workers=1, progress=False).images[0] == 7).all()


# A training process of its own: the loader traintest.py builds over the persistent cache, one epoch's batches.
CHILD = """
import sys
import numpy as np, torch
from data.classes import CLASSES
from data.dataset import read_combined
from utils.engine import make_loader
frame = read_combined(sys.argv[1], CLASSES)
loader = make_loader(frame, 32, CLASSES, batch_size=5, workers=1, train=True, seed=3, cache_dir=sys.argv[2])
loader.sampler.set_epoch(1)
batches = list(loader)
np.savez(sys.argv[3], *[np.asarray(x) for batch in batches for x in batch])
"""


@pytest.mark.slow
def test_two_processes_share_one_cache_and_see_the_uncached_batches(tmp_path, make_dataset):
    from data.classes import CLASSES
    from data.dataset import read_combined
    from utils.engine import make_loader

    def epoch(loader):
        loader.sampler.set_epoch(1)
        return [np.asarray(x) for batch in loader for x in batch]

    csv = make_dataset(tmp_path / "data", n_train=23, n_val=2, n_test=2, size=40)
    (tmp_path / "data" / "images" / "train004.png").write_bytes(b"not a png")  # its reason is cached too
    cache = tmp_path / "shared"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(csv), str(cache), str(tmp_path / "child.npz")],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
    frame = read_combined(str(csv), CLASSES)
    expected = epoch(make_loader(frame, 32, CLASSES, batch_size=5, workers=0, train=True, seed=3))
    here = epoch(make_loader(frame, 32, CLASSES, batch_size=5, workers=0, train=True, seed=3, cache_dir=cache))
    assert child.wait(timeout=240) == 0, child.stderr.read()[-3000:]
    there = np.load(tmp_path / "child.npz", allow_pickle=True)
    assert len(there.files) == len(here) == len(expected) == 5 * 5  # 5 batches of (images, labels, rows, sizes, errors)
    for name, mine, want in zip(there.files, here, expected):
        assert np.array_equal(there[name], want) and np.array_equal(mine, want), name
    assert sum("not a readable PNG" in str(errors) for errors in expected[4::5]) == 1
    assert len([f for f in os.listdir(cache) if f.endswith(".u8")]) == 1  # one file, built once for both


def test_unwritable_cache_folder_is_one_clear_error(tmp_path, images):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--cache-dir .*file/cache cannot be written"):
        image_cache(tmp_path / "file" / "cache", images, 32, progress=False)


def test_a_read_only_folder_serves_its_cache_and_refuses_a_new_one(tmp_path, images):
    folder = tmp_path / "ro"
    built = image_cache(folder, images, 32, progress=False)
    with read_only(folder):
        again = image_cache(folder, images, 32, progress=False)
        assert again.path == built.path and np.array_equal(again.images, built.images)
        with pytest.raises(InputError, match=r"--cache-dir .*/ro is (not writable|read-only).*--cache-dir off"):
            image_cache(folder, images, 24, progress=False)


def test_a_full_cache_folder_is_one_clear_error(tmp_path, images):
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        with pytest.raises(InputError, match=r"--cache-dir .*/small is full"):
            image_cache(folder, images, 128, progress=False)  # 8 x 128 x 128 bytes: more than 64 KiB
        assert not [f for f in os.listdir(folder) if f.endswith((".u8", ".json"))]
        assert image_cache(folder, images, 32, progress=False).images.shape == (8, 32, 32)  # a smaller one fits
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_another_csvs_cache_is_left_alone_and_never_read(tmp_path, images):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a cache")
    whole = image_cache(folder, images, 32, progress=False)
    part = image_cache(folder, images[2:5], 32, progress=False)  # another CSV's image list, same size
    assert part.path != whole.path and os.path.exists(whole.path)
    assert np.array_equal(part.images, whole.images[2:5])
    assert (folder / "notes.txt").read_text() == "not a cache"
