"""Files on disk: the checked CSV reader every step uses, atomic writes, output locations, and finding image files.

Row numbers in messages are the rows a spreadsheet shows: the header is row 1, so the first data row is row 2.

A CSV that a step writes with `write_csv` gets a row count beside it (`NAME.rows`); `read_table` compares the
count with what it read, so a file cut short (a killed writer of an older version, a partial copy, a full disk) is
an error naming the file instead of fewer rows. A CSV without a count (written by hand or by another tool) reads
unchecked.

Every file a step writes goes through atomic_path: written under a temporary name beside it (one `is_temporary`
knows), renamed into place when complete.
"""
import contextlib
import lzma
import os
import secrets
import shutil
import zlib

import numpy as np

from data.decode import IMAGE_SUFFIXES
from data.errors import InputError, LabelFileError

ROWS_SUFFIX = ".rows"
TEMPORARY_SUFFIX = ".tmp"
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst", ".tar")


def rows_path(path):
    """Where the row count of the CSV at `path` is kept."""
    return f"{path}{ROWS_SUFFIX}"


def read_table(path, columns, what="CSV", error=LabelFileError, fallback_encoding=None, **read_csv_kwargs):
    """The CSV at `path` as a DataFrame, after checking that it holds `columns`.

    Raises `error` naming the file: when it is missing or unreadable (a cut .gz too), when a column is missing (row 1,
    the header), and when it has another number of rows than the count written beside it. `what` says in the message
    what the file should have been. Text that is not UTF-8 is an error saying so, or is read as `fallback_encoding`
    (then `frame.attrs["encoding"]` names it, so the caller can say so). Keyword arguments go to pandas.read_csv;
    `usecols` is checked against the header before the body is read.
    """
    import pandas as pd  # here, not at the top: step 1's decoding workers import this module and never read a CSV
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        try:
            frame = _read_checked(path, columns, what, error, read_csv_kwargs)
        except UnicodeDecodeError as e:
            if fallback_encoding is None:
                raise error(f"{path}: not UTF-8 text ({e.reason}, byte {e.object[e.start:e.start + 1]!r}); "
                            f"save it as UTF-8") from None
            frame = _read_checked(path, columns, what, error, {**read_csv_kwargs, "encoding": fallback_encoding})
            frame.attrs["encoding"] = fallback_encoding
    except (OSError, EOFError, zlib.error, lzma.LZMAError, pd.errors.ParserError, pd.errors.EmptyDataError,
            UnicodeDecodeError, ValueError) as e:
        if isinstance(e, error):
            raise
        cut = " (the compressed file is cut short)" if isinstance(e, EOFError) else ""
        raise error(f"{path}: cannot read as CSV{cut}: {' '.join(str(e).split())}") from None
    if "nrows" not in read_csv_kwargs:
        _check_row_count(path, len(frame), error)
    return frame


def _read_checked(path, columns, what, error, kwargs):
    import pandas as pd
    header = pd.read_csv(path, nrows=0, **{k: v for k, v in kwargs.items() if k != "usecols"}).columns
    missing = [c for c in columns if c not in header]
    if missing:
        raise error(f"{path}: missing columns {missing} (row 1, the header); not {what}")
    return pd.read_csv(path, **kwargs)


def _check_row_count(path, rows, error):
    count_file = rows_path(path)
    if not os.path.isfile(count_file):
        return
    try:
        with open(count_file, encoding="utf-8") as f:
            expected = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        raise error(f"{count_file}: not a row count; delete it to read {path} unchecked") from None
    cut_row = not path.lower().endswith(_COMPRESSED) and not _ends_with_newline(path)
    if rows != expected or cut_row:
        found = f"{rows} data rows" + (", the last one cut" if cut_row else "")
        raise error(f"{path}: {found}, but {count_file} says {expected}: the file was cut short (a killed write, a "
                    f"partial copy, a full disk) or changed after it was written; write it again (or delete "
                    f"{count_file} if you changed the CSV on purpose)")


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def check_values(frame, path, columns, allowed, error=LabelFileError, blank=False):
    """Raise `error` naming the file, the first bad value's row and column and the value as the file has it, when a
    value of `columns` is not one of `allowed` (for numbers, text that reads as one, '1' or '1.0', is fine; blank
    is not, unless `blank`: then an empty cell, or one of spaces, is fine too). `frame` is the CSV at `path` as read,
    one frame row per data row, with or without pandas' NA reading."""
    import pandas as pd
    columns, allowed = list(columns), list(allowed)
    numbers = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = ~numbers.isin(allowed).to_numpy() & ~frame[columns].isin(allowed).to_numpy()  # numbers, or text ('train')
    if blank:
        bad &= ~frame[columns].apply(lambda c: c.isna() | (c.astype(str).str.strip() == "")).to_numpy()
    if not bad.any():
        return
    rows, cols = np.nonzero(bad)  # row-major: the first is the first bad row, its leftmost bad column
    i, column = int(rows[0]), columns[int(cols[0])]
    value = _as_written(path, i, column, frame[column].iloc[i])
    more = f"; {len(rows) - 1} more bad values" if len(rows) > 1 else ""
    named = [*map(str, allowed), *(["blank (unknown)"] if blank else [])]
    expected = ", ".join(named[:-1]) + f" or {named[-1]}" if len(named) > 1 else named[0]
    raise error(f"{path}, row {i + 2}: {column} is {value!r}{' (blank)' if value == '' else ''}, expected "
                f"{expected} (row 1 is the header: this is data row {i + 1}){more}")


def _as_written(path, i, column, parsed):
    """The text of one cell as the file has it: a parsed frame shows blanks as NaN and 2 as 2.0."""
    import pandas as pd
    try:
        raw = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column]
        return raw.iloc[i] if i < len(raw) else str(parsed)
    except Exception:  # the message is already an error path: fall back to what was parsed
        return str(parsed)


def is_temporary(name):
    """Whether the file (or object) `name` is the temporary file of an atomic write: in progress, or left by a writer
    that was killed. The one rule for every writer (atomic_path, the writable-folder check), so that what copies a
    folder elsewhere (the bucket sync) can leave those out without knowing the writers."""
    return str(name).endswith(TEMPORARY_SUFFIX)


def temporary_path(path):
    """A fresh temporary path beside `path` (a name is_temporary knows): unique, so that two writers of one file
    never write into each other's temporary file."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{name[:200]}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to; renamed onto `path` only when the block ends without an error, so
    a process killed while writing leaves the previous file (or none), never a partial one."""
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def copy_file(source, path):
    """A copy of the file `source` at `path`, whole or not at all."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def remove_temporary_files(folder, prefix=""):
    """Delete the temporary files directly in `folder` whose names start with `prefix`: what killed writers left.
    Only for a caller that knows no writer of them runs now (it holds the folder's lock)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix) and is_temporary(name):
            os.remove(os.path.join(folder, name))


def write_text_atomic(path, text, rows=None):
    """Write `text` to `path` atomically; with `rows`, also the row count that read_table checks."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
    _write_counted(path, rows, write)


def write_bytes_atomic(path, data):
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_csv(frame, path, **to_csv_kwargs):
    """frame.to_csv(path) atomically, with its row count beside it; InputError naming the file when it cannot be
    written (a read-only folder, a full disk)."""
    try:
        _write_counted(path, len(frame), lambda tmp: frame.to_csv(tmp, **to_csv_kwargs))
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror or e}") from None


def _write_counted(path, rows, write):
    with atomic_path(path) as tmp:
        write(tmp)
        if rows is not None and os.path.exists(rows_path(path)):
            # the old count goes just before the rename: a kill in between leaves a file without a count, never a
            # count that belongs to another file
            os.remove(rows_path(path))
    if rows is not None:
        write_text_atomic(rows_path(path), f"{rows} data rows in {os.path.basename(path)}\n")


def output_folder(path, flag="--out"):
    """Create the folder `path` if needed and check that files can be written in it, before any work; InputError
    naming `flag` when it is a file, cannot be created or is read-only."""
    problem = _folder_problem(path)
    if problem == _NOT_A_FOLDER:
        raise InputError(f"{flag} {path} {problem}")
    if problem:
        raise InputError(f"{flag} {path} {problem}: not a writable folder")


def output_file(path, flag="--out"):
    """Check that the file `path` can be written (its folder is created if needed), before any work; InputError
    naming `flag` otherwise."""
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder; give the path of the file to write")
    folder = os.path.dirname(os.path.abspath(path))
    problem = _folder_problem(folder)
    if problem:
        raise InputError(f"{flag} {path}: its folder {folder} {problem}, so {os.path.basename(path)} cannot be "
                         f"written")


_NOT_A_FOLDER = "is a file, not a folder"


def _folder_problem(folder):
    """Why no file can be written in `folder` (created when missing), or None when one can: proven by writing one."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return _NOT_A_FOLDER
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        reason = "a part of the path is a file" if isinstance(e, (NotADirectoryError, FileExistsError)) \
            else e.strerror or str(e)
        return f"cannot be created ({reason})"
    probe = temporary_path(os.path.join(folder, ".write-check"))
    try:
        open(probe, "xb").close()
    except OSError as e:
        return f"is not writable ({e.strerror or e})"
    finally:  # a signal's exception included
        if os.path.exists(probe):
            os.remove(probe)
    return None


def is_gcs_url(location):
    """Whether a location given on a command line is a gs:// URL (data.gcs reads and writes those) rather than a path;
    here, where asking costs nothing, so that a run on local files never loads the GCS client."""
    return str(location).startswith("gs://")


def missing_files(paths):
    """The paths in `paths` that are not files."""
    return [p for p in paths if not os.path.isfile(p)]


def image_files(path):
    """The PNG, JPEG and DICOM files at `path` (a file, or a folder searched recursively), sorted."""
    path = str(path)
    if os.path.isfile(path):
        return [path]
    found = []
    for root, _, names in os.walk(path):
        found += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)
