"""Files on disk: the checked CSV reader every step uses, atomic writes, and finding image files."""
import contextlib
import os

import numpy as np
import pandas as pd

from data.decode import IMAGE_SUFFIXES
from data.errors import LabelFileError


def read_table(path, columns, what="CSV", error=LabelFileError, **read_csv_kwargs):
    """The CSV at `path` as a DataFrame, after checking that it holds `columns`.

    Raises `error` naming the file: when it is missing or unreadable, and when a column is missing (row 1, the
    header). `what` says in the message what the file should have been. Keyword arguments go to pandas.read_csv;
    `usecols` is checked against the header before the body is read.
    """
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    try:
        header = pd.read_csv(path, nrows=0, **{k: v for k, v in read_csv_kwargs.items() if k != "usecols"}).columns
        missing = [c for c in columns if c not in header]
        if missing:
            raise error(f"{path}: missing columns {missing} (row 1, the header); not {what}")
        return pd.read_csv(path, **read_csv_kwargs)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, error):
            raise
        raise error(f"{path}: cannot read as CSV: {e}") from None


def check_values(frame, path, columns, allowed, error=LabelFileError):
    """Raise `error` naming the file, the first bad row (CSV row numbers: the header is row 1) and its column when a
    value of `columns` is not in `allowed`."""
    bad = ~frame[list(columns)].isin(list(allowed))
    if bad.to_numpy().any():
        i, j = (int(k[0]) for k in np.nonzero(bad.to_numpy()))
        column = columns[j]
        raise error(f"{path}, row {i + 2}: {column} is {str(frame[column].iloc[i])!r}, expected one of "
                    f"{', '.join(map(str, allowed))}")


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to; renamed onto `path` only when the block ends without an error, so
    a process killed while writing leaves the previous file (or none), never a partial one."""
    tmp = f"{path}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(text)


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
