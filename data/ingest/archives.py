"""Archives and loose image files as units of ingest work, and their members as jobs.

A *unit* is one archive (.zip, .tar, .tgz, .tar.gz) or all loose image files of
one folder. Members are streamed out of an archive one at a time (zip: by name,
read by the worker itself; tar: sequential 'r|*' stream), so no archive is ever
unpacked to disk. Members that are not plain, safe, reasonably sized image files
come out as errors with a reason instead of jobs.
"""
import os
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field

from data.decode import IMAGE_SUFFIXES, is_image_name

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")
# A 16-bit 4300 x 3500 radiograph is about 30 MB uncompressed; anything bigger
# than this is refused as a bomb rather than read into memory.
MAX_MEMBER_BYTES = 512 * 2**20
OPENI_DICOM = re.compile(r"^\d+(?:_\d+)*_IM-\d+")


@dataclass
class Unit:
    name: str                 # archive path relative to the source, or the folder of loose files
    kind: str                 # "zip", "tar" or "loose"
    files: list = field(default_factory=list)  # source-relative paths to fetch


@dataclass
class Job:
    """One member to decode: read from a zip by name, from a loose file, or carried as bytes."""
    member: str
    image_id: str
    zip_path: str = None
    file_path: str = None
    data: bytes = None


def archive_kind(name):
    lower = name.lower()
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def plan_units(names):
    """Units from source-relative file names: one per archive, one per folder of loose images."""
    units, loose = [], {}
    for name in sorted(names):
        kind = archive_kind(name)
        if kind:
            units.append(Unit(name, kind, [name]))
        elif is_image_name(name):
            folder = os.path.dirname(name) or "."
            loose.setdefault(folder, Unit(folder, "loose")).files.append(name)
    return sorted(units + list(loose.values()), key=lambda u: u.name)


def shard_units(units, k, n):
    """Shard k of n (0 <= k < n): every n-th unit of the sorted list, so shards are disjoint and balanced."""
    return sorted(units, key=lambda u: u.name)[k::n]


def image_id_for(member):
    """ImageID of a member: the PNG file name (PadChest), CXR + stem for OpenI DICOMs, else the stem."""
    base = os.path.basename(member.replace("\\", "/"))
    stem, suffix = os.path.splitext(base)
    if suffix.lower() == ".png":
        return base
    if suffix.lower() in (".dcm", ".dicom") and OPENI_DICOM.match(stem):
        return "CXR" + stem
    return stem


def output_name(image_id):
    """File name under OUT/images: the ImageID without a trailing .png, plus .png."""
    stem = image_id[:-4] if image_id.lower().endswith(".png") else image_id
    return stem + ".png"


def member_problem(name, size, is_link=False, is_file=True):
    """Why a member cannot be ingested, or None when it is a safe image file."""
    path = name.replace("\\", "/")
    if is_link:
        return "link member refused"
    if not is_file:
        return "not a regular file"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "unsafe member path (absolute)"
    if ".." in path.split("/"):
        return "unsafe member path (escapes the output folder)"
    if "\x00" in path or not os.path.basename(path).strip():
        return "unsafe member path (bad file name)"
    if not is_image_name(path):
        return f"not an image member (expected one of {', '.join(IMAGE_SUFFIXES)})"
    if size > MAX_MEMBER_BYTES:
        return f"member too large ({size} bytes > {MAX_MEMBER_BYTES}), refused as a decompression bomb"
    return None


def iter_members(unit, local_files):
    """Yield (member, Job or None, error reason or None) for every member of a unit.

    local_files maps the unit's source-relative file names to local paths. An
    archive that cannot be read (any more) yields one error with member "".
    """
    if unit.kind == "loose":
        for name in unit.files:
            member = os.path.basename(name)
            yield member, Job(member, image_id_for(member), file_path=local_files[name]), None
    elif unit.kind == "zip":
        yield from _zip_members(local_files[unit.files[0]])
    else:
        yield from _tar_members(local_files[unit.files[0]])


def _zip_members(path):
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        yield "", None, f"corrupt archive ({type(e).__name__}: {e})"
        return
    for info in infos:
        if info.is_dir():
            continue
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        problem = member_problem(info.filename, info.file_size, is_link=is_link)
        if problem:
            yield info.filename, None, problem
        else:
            yield info.filename, Job(info.filename, image_id_for(info.filename), zip_path=path), None


def _tar_members(path):
    complete = 0
    try:
        with tarfile.open(path, "r|*") as tf:
            for info in tf:
                if info.isdir():
                    continue
                problem = member_problem(info.name, info.size, is_link=info.issym() or info.islnk(),
                                         is_file=info.isfile())
                if problem:
                    complete += 1
                    yield info.name, None, problem
                    continue
                data = tf.extractfile(info).read()
                complete += 1
                yield info.name, Job(info.name, image_id_for(info.name), data=data), None
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        # zlib/gzip errors are OSError or EOFError subclasses.
        yield "", None, f"corrupt archive (after {complete} complete members; {type(e).__name__}: {e})"


_open_zip = {}


def read_job_bytes(job):
    """The member's bytes; a worker keeps one zip open and reopens when the archive changes."""
    if job.data is not None:
        return job.data
    if job.file_path is not None:
        with open(job.file_path, "rb") as f:
            return f.read()
    zf = _open_zip.get(job.zip_path)
    if zf is None:
        for old in _open_zip.values():
            old.close()  # the archive may be deleted next: don't hold its disk space
        _open_zip.clear()
        zf = _open_zip[job.zip_path] = zipfile.ZipFile(job.zip_path)
    return zf.read(job.member)
