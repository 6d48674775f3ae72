"""Archives and loose image files as units of ingest work, and their members as jobs.

A *unit* is one archive (.zip, .tar, .tgz, .tar.gz) or the loose image files of
one folder: all of them up to LOOSE_BATCH files, else a batch (see loose_batches). Members are streamed out of an archive one at a time (zip: by name,
read by the worker itself; tar: sequential 'r|*' stream), so no archive is ever
unpacked to disk. Members that are not plain, safe, reasonably sized image files
come out as errors with a reason instead of jobs.

Input files are opened through SourceFile, which tells the two kinds of failure
apart: what the machine refuses now (permission, I/O) is an EnvironmentFault that
stops the run, while what is wrong with the bytes (a bad zip, a cut tar, a bz2
stream's own OSError) is an error row.
"""
import hashlib
import io
import os
import re
import stat
import tarfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from urllib.parse import quote

from data.decode import IMAGE_SUFFIXES, is_image_name
from data.errors import EnvironmentFault, InputError

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")
# A 16-bit 4300 x 3500 radiograph is about 30 MB uncompressed; anything bigger
# than this is refused as a bomb rather than read into memory.
MAX_MEMBER_BYTES = 512 * 2**20
OPENI_DICOM = re.compile(r"^\d+(?:_\d+)*_IM-\d+")
NIH_NAME = re.compile(r"^\d{8}_\d{3}$")  # NIH ChestX-ray14: patient number, follow-up number
# A folder of loose files (NIH's bucket: 112,120 PNGs under one prefix) is cut into batches of about this many, so
# that shards can split it and a resumed run redoes at most one batch.
LOOSE_BATCH = 500


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
    zip_info: zipfile.ZipInfo = None  # not the name: a zip may hold two members of one name
    file_path: str = None
    data: bytes = None
    out_name: str = None      # file name under OUT/images, and its collision key (see file_key)
    key: str = None


def archive_kind(name):
    lower = name.lower()
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def plan_units(names):
    """Units from source-relative file names: one per archive, one per folder of loose images (or per batch of one,
    see loose_batches)."""
    units, loose = [], {}
    for name in sorted(names):
        kind = archive_kind(name)
        if kind:
            units.append(Unit(name, kind, [name]))
        elif is_image_name(name):
            loose.setdefault(os.path.dirname(name) or ".", []).append(name)
    for folder, files in loose.items():
        units += loose_batches(folder, files)
    return sorted(units, key=lambda u: u.name)


BATCH_SUFFIX = re.compile(r"#\d{5}$")


def loose_batches(folder, files):
    """The units of one folder's loose files (sorted names): one unit named by the folder when it holds at most
    LOOSE_BATCH files; else batches FOLDER#00000, FOLDER#00001, ... A file's batch is a hash of its output file key
    modulo a power of two (the smallest giving batches of at most about LOOSE_BATCH), so a file added or removed
    changes one batch, not every batch after it, and files that would write one output file (x.png, X.PNG, x.jpg)
    share a batch and collide there in name order, as in one unit."""
    if len(files) <= LOOSE_BATCH:
        return [Unit(folder, "loose", list(files))]
    count = 1 << (-(-len(files) // LOOSE_BATCH) - 1).bit_length()
    batches = {}
    for name in files:
        key = file_key(output_name(image_id_for(name)))
        index = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % count
        batches.setdefault(index, Unit(f"{folder}#{index:05d}", "loose")).files.append(name)
    return [batches[i] for i in sorted(batches)]


def loose_folder_of(unit_name):
    """The folder a loose unit's name names: FOLDER for FOLDER#00007, else the name itself."""
    return BATCH_SUFFIX.sub("", unit_name)


def shard_units(units, k, n):
    """Shard k of n (0 <= k < n): every n-th unit of the sorted list, so shards are disjoint and balanced."""
    return sorted(units, key=lambda u: u.name)[k::n]


def image_id_for(member):
    """ImageID of a member, as the sources' label files name the image: the PNG file name (PadChest's ImageID, NIH's
    Image Index 00000001_000.png); for DICOMs, CXR + stem when OpenI's (1000_IM-0003-2001.dcm ->
    CXR1000_IM-0003-2001), stem + .png when NIH's (Google's copy dicom/00000001_000.dcm -> 00000001_000.png, the name
    in NIH's CSVs); else the stem."""
    base = os.path.basename(member.replace("\\", "/"))
    stem, suffix = os.path.splitext(base)
    if suffix.lower() == ".png":
        return base
    if suffix.lower() in (".dcm", ".dicom"):
        if OPENI_DICOM.match(stem):
            return "CXR" + stem
        if NIH_NAME.match(stem):
            return stem + ".png"
    return stem


def output_name(image_id):
    """File name under OUT/images: the ImageID without a trailing .png, plus .png."""
    stem = image_id[:-4] if image_id.lower().endswith(".png") else image_id
    return stem + ".png"


def file_key(name):
    """What makes two output file names one file on some file system: case (macOS, Windows) and Unicode
    normalization (macOS) are folded, so images that would overwrite each other there collide everywhere."""
    return unicodedata.normalize("NFC", name).casefold()


MAX_NAME_BYTES = 255  # a file name's limit on ext4, XFS, APFS and NTFS


def safe_file_name(name, suffix=""):
    """A file name for anything named `name` (an archive, a blob path): the name %-quoted when that is short enough
    ('0.zip' -> '0.zip' + suffix, 'a/b.zip' -> 'a%2Fb.zip' + suffix); else its first 80 quoted characters, '+' (which
    quoting always escapes, so the two forms never meet) and a hash of the whole name. Distinct names, distinct files."""
    quoted = quote(name, safe="")
    if len(quoted) + len(suffix.encode()) <= 200:
        return quoted + suffix
    readable = quoted[:80]
    readable = readable[:readable.rfind("%")] if "%" in readable[-2:] else readable  # no escape cut in two
    return f"{readable}+{hashlib.sha256(name.encode()).hexdigest()[:16]}{suffix}"


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


class SourceFile(io.FileIO):
    """An input file, opened without blocking (a FIFO named x.png must not hang the run) and checked to be a regular
    file (InputError otherwise); the operating system's refusals to open or read it are EnvironmentFaults."""

    def __init__(self, path):
        try:
            super().__init__(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))
        except OSError as e:
            if os.path.islink(path) and not os.path.exists(path):
                raise InputError("broken symbolic link") from None
            raise EnvironmentFault(f"{path}: cannot open ({e.strerror or e})") from None
        mode = os.fstat(self.fileno()).st_mode
        if not stat.S_ISREG(mode):
            self.close()
            kind = ("FIFO" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "socket" if stat.S_ISSOCK(mode) else "not a file")
            raise InputError(f"not a regular file ({kind})")

    def _fault(self, e):
        return EnvironmentFault(f"{self.name}: cannot read ({e.strerror or e})")

    def read(self, size=-1):
        try:
            return super().read(size)
        except OSError as e:
            raise self._fault(e) from None

    def readall(self):
        try:
            return super().readall()
        except OSError as e:
            raise self._fault(e) from None

    def readinto(self, buffer):
        try:
            return super().readinto(buffer)
        except OSError as e:
            raise self._fault(e) from None


def read_loose_file(path):
    """A loose file's bytes; InputError when it is not a regular file or too large to be an image."""
    with SourceFile(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_MEMBER_BYTES:
            raise InputError(f"file too large ({size} bytes > {MAX_MEMBER_BYTES}), refused as a decompression bomb")
        return f.read()


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
        with SourceFile(path) as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except EnvironmentFault:
        raise
    except InputError as e:
        yield "", None, str(e)
        return
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
            yield info.filename, Job(info.filename, image_id_for(info.filename), zip_path=path, zip_info=info), None


class _TarInfo(tarfile.TarInfo):
    """Remembers on its TarFile why reading headers stopped: tarfile ends quietly at a missing, cut or damaged
    header, which would make a tar cut at a member boundary look complete."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            tf.end_reason = e
            raise


def _missing_end(tf):
    """Why the stream did not end with the two zero blocks of a complete tar, or None when it did."""
    reason = getattr(tf, "end_reason", None)
    if isinstance(reason, tarfile.EOFHeaderError):  # the first zero block was read; the second must follow
        return None if tf.fileobj.read(tarfile.BLOCKSIZE) == tarfile.NUL * tarfile.BLOCKSIZE else \
            "it ends after one of its two end-of-archive blocks"
    if isinstance(reason, tarfile.InvalidHeaderError):
        return f"a damaged header where the next member should start ({reason})"
    return "it ends without the end-of-archive blocks"


def _tar_members(path):
    complete = 0
    try:
        with SourceFile(path) as f, tarfile.open(fileobj=f, mode="r|*", tarinfo=_TarInfo) as tf:
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
            missing = _missing_end(tf)
    except EnvironmentFault:
        raise
    except InputError as e:
        yield "", None, str(e)
        return
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        # zlib/gzip errors are OSError or EOFError subclasses.
        yield "", None, f"corrupt archive (after {complete} complete members; {type(e).__name__}: {e})"
        return
    if missing:
        yield "", None, f"truncated archive (after {complete} complete members; {missing})"


_open_zip = {}


def read_job_bytes(job):
    """The member's bytes; a worker keeps one zip open and reopens when the archive changes.

    InputError when the member cannot be read out of its archive (bad CRC, broken compressed data, encryption),
    EnvironmentFault when the file cannot be read now.
    """
    if job.data is not None:
        return job.data
    if job.file_path is not None:
        return read_loose_file(job.file_path)
    if job.zip_path not in _open_zip:
        for f, zf in _open_zip.values():
            zf.close()
            f.close()  # the archive may be deleted next: don't hold its disk space
        _open_zip.clear()
        f = SourceFile(job.zip_path)
        try:
            _open_zip[job.zip_path] = f, zipfile.ZipFile(f)
        except Exception as e:
            f.close()
            if isinstance(e, (EnvironmentFault, InputError)):
                raise
            raise InputError(f"corrupt archive ({type(e).__name__}: {e})") from None
    try:
        return _open_zip[job.zip_path][1].read(job.zip_info)
    except EnvironmentFault:
        raise
    except Exception as e:  # bad CRC, zlib/bz2/lzma data errors, an encrypted or unsupported member
        raise InputError(f"cannot read member ({type(e).__name__}: {e})") from None
