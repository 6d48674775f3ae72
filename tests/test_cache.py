"""The persistent image cache: one file per image list and size, shared by processes, rebuilt when stale."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data.cache import image_cache
from data.dataset import read_gray
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


def expected(path, size):
    return SquareResize(size)(read_gray(path)).numpy()[0]


def test_cache_holds_what_the_loader_decodes(tmp_path, images):
    cache = image_cache(tmp_path / "cache", images, 32, workers=2, progress=False)
    assert cache.images.shape == (8, 32, 32) and not cache.images.flags.writeable
    for i, path in enumerate(images[:-1]):
        assert np.array_equal(cache.images[i], expected(path, 32))
        assert tuple(cache.sizes[i]) == (40 + i, 50) and cache.errors[i] == ""
    assert "cannot decode" in cache.errors[7] and images[7] in cache.errors[7]
    again = image_cache(tmp_path / "cache", images, 32, workers=2, progress=False)
    assert again.path == cache.path  # reused, not rebuilt
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".u8")]) == 1


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


CHILD = """
import hashlib, sys
from data.cache import image_cache
cache = image_cache(sys.argv[1], sys.argv[2:], 32, workers=1, progress=False)
print(cache.path, hashlib.sha256(cache.images.tobytes()).hexdigest())
"""


def test_two_processes_share_one_cache(tmp_path, images):
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cache"), *images],
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert all(child.returncode == 0 for child in children)
    assert outputs[0] == outputs[1] and outputs[0].strip()
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".u8")]) == 1


def test_unwritable_cache_folder_is_one_clear_error(tmp_path, images):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--cache-dir .*file/cache cannot be written"):
        image_cache(tmp_path / "file" / "cache", images, 32, progress=False)
