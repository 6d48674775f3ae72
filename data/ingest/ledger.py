"""The part markers in OUT/.parts: which units are finished, from what input and with which settings, and which image
owns each output file.

A marker is one JSON file per unit, written atomically once the unit is finished. It records the unit's name, its
identity (local: size and modification time of the archive, or of every loose file of a folder; GCS: generation and
CRC32C), the settings that shape the pixels (--size, DECODER_VERSION), its manifest and error rows, and the output
file names its members lost to an earlier unit. A unit counts as done only when its marker's format, identity and
settings match this run; otherwise (another --size, an archive replaced under the same name, new files in a
folder, a marker that cannot be read) it is ingested again and its rows are replaced.

One image, one file, one row: each file under OUT/images belongs to exactly one manifest row. The first copy, in
unit order (units sorted by name, members in archive order), that decodes keeps an output file name; any later copy
is an error row and its pixels are never written. Two ImageIDs whose files would overwrite each other on some file
system (x.png and x from x.jpg; names that differ only in case) collide the same way. When an earlier unit claims a
name that a later finished unit holds (an archive added or replaced), the later unit's marker is removed before
anything is written, and that unit is ingested again after, so that the outcome is the one a fresh run gives.

A unit no longer listed keeps its rows (an archive deleted from the bucket), except a loose folder's former unit: when
a folder's files are cut into other batches (it grew past LOOSE_BATCH, or past another power of two of them), its
earlier units are retired: not done, and once the run has finished, their images that no current unit owns are
deleted with their markers.
"""
import hashlib
import json
import os
from dataclasses import dataclass

from data.decode import DECODER_VERSION, DICOM_SUFFIXES
from data.files import write_text_atomic
from data.formats import MANIFEST_COLUMNS
from data.ingest.archives import file_key, loose_folder_of, safe_file_name

FORMAT = 3
ERROR_COLUMNS = ["archive", "member", "reason"]


def settings_for(size):
    return {"size": size, "decoder": DECODER_VERSION}


def unit_identity(unit, file_identities):
    """What a unit was made from: its archive's identity, or a digest over the names and identities of its loose
    files (so a file added to a finished folder makes the folder not done)."""
    if unit.kind != "loose":
        return file_identities[unit.files[0]]
    listing = json.dumps([[name, file_identities[name]] for name in unit.files], sort_keys=True)
    return {"files": len(unit.files), "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def part_file_name(unit_name):
    return safe_file_name(unit_name, ".json")


@dataclass(frozen=True)
class Holder:
    unit: str
    member: str
    image_id: str


def _check_marker(marker):
    """Raise ValueError when `marker` is not a part marker's structure."""
    if not isinstance(marker, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("archive", "manifest", "errors") if k not in marker]
    if missing:
        raise ValueError(f"missing keys {missing}")
    if not isinstance(marker["archive"], str) or not isinstance(marker["manifest"], list) \
            or not isinstance(marker["errors"], list) or not isinstance(marker.get("lost", []), list):
        raise ValueError("archive, manifest, errors or lost of the wrong type")
    columns = MANIFEST_COLUMNS if marker.get("format") == FORMAT else MANIFEST_COLUMNS[:-1]  # format 2: no view
    for rows, columns in ((marker["manifest"], columns), (marker["errors"], ERROR_COLUMNS)):
        for row in rows:
            if not isinstance(row, dict) or any(not isinstance(row.get(c), (str, int)) for c in columns):
                raise ValueError(f"a row without {columns}")
    for row in marker["manifest"]:
        if not _image_name(row):
            raise ValueError(f"a manifest row whose path is not images/<file>: {row['path']!r}")


def _upgraded(marker):
    """A format-2 marker (before the view column) as format 3 when none of its images is a DICOM by name: PNG and JPEG
    have no view, so its rows stand as they are with view ''. A unit with DICOMs is ingested again to read theirs."""
    if marker.get("format") != 2 or any(str(r["member"]).lower().endswith(DICOM_SUFFIXES) for r in marker["manifest"]):
        return marker
    return {**marker, "format": FORMAT, "manifest": [{**r, "view": ""} for r in marker["manifest"]]}


def _image_name(row):
    """The file name under images/ of a manifest row, or None when its path is not images/<file>."""
    path = str(row["path"])
    name = path[len("images/"):] if path.startswith("images/") else ""
    return name if name and "/" not in name and "\\" not in name and name not in (".", "..") else None


class Ledger:
    """Part markers and the ownership of output file names, for one run (the caller holds OUT's lock)."""

    def __init__(self, parts_dir, images_dir, settings, identities, warn, loose_folders=()):
        self.parts_dir, self.images_dir, self.settings, self.identities = parts_dir, images_dir, settings, identities
        self.loose_folders = set(loose_folders)  # folders of loose files in this run's listing
        self.done = {}     # unit name -> marker that matches this run
        self.old = {}      # unit name -> the last readable marker (done or not): its files, to clean up when redone
        self.files = {}    # unit name -> marker files on disk that describe it
        self.owner = {}    # file key -> Holder
        self.lost = {}     # file key -> names of units that lost that file name to an earlier unit
        self.redo = set()  # units whose marker this run removed: they must be ingested again
        self.retired = set()  # a loose folder's former units (see the module doc)
        self._load(warn)

    def _load(self, warn):
        for fname in sorted(os.listdir(self.parts_dir)):
            if not fname.endswith(".json"):
                continue
            path = os.path.join(self.parts_dir, fname)
            try:
                with open(path, encoding="utf-8") as f:
                    marker = json.load(f)
                _check_marker(marker)
                marker = _upgraded(marker)
            except (UnicodeDecodeError, ValueError) as e:  # json's errors are ValueErrors
                warn(f"warning: {path}: not a readable part marker ({type(e).__name__}: {e}); "
                     f"its archive counts as not done and is ingested again")
                continue
            name = marker["archive"]
            self.files.setdefault(name, []).append(path)
            if name not in self.identities and loose_folder_of(name) in self.loose_folders:
                self.retired.add(name)
            if fname != part_file_name(name):  # written by an older version
                self.old.setdefault(name, marker)
                continue
            self.old[name] = marker
            if name in self.retired:
                continue
            identity = self.identities.get(name, marker.get("identity"))  # a unit no longer listed keeps its rows
            if marker.get("format") == FORMAT and marker.get("settings") == self.settings \
                    and marker.get("identity") == identity:
                self.done[name] = marker
        holders = {}
        for name, marker in self.done.items():
            for row in marker["manifest"]:
                holders.setdefault(file_key(_image_name(row)), []).append(name)
        for key, units in sorted(holders.items()):
            if len(units) > 1 and any(name in self.done for name in units):
                # e.g. images/ and .parts/ of two shards copied together: whose pixels are in the file?
                warn(f"warning: {', '.join(sorted(set(units)))} all hold images/{key} (markers copied together?); "
                     f"they count as not done and are ingested again")
                for name in units:
                    self.done.pop(name, None)
        for name, marker in self.done.items():
            for row in marker["manifest"]:
                self.owner[file_key(_image_name(row))] = Holder(name, row["member"], row["ImageID"])
            for key in marker.get("lost", []):
                self.lost.setdefault(key, set()).add(name)

    def is_done(self, unit_name):
        return unit_name in self.done

    def holder(self, key):
        return self.owner.get(key)

    def take(self, unit_name, key, member, image_id):
        """Claim an output file name for a member of the unit being ingested; a later unit that held it is no
        longer done (its marker goes first, so a crash cannot leave it naming pixels it no longer owns)."""
        held = self.owner.get(key)
        if held is not None and held.unit != unit_name:
            self.invalidate(held.unit)
        self.owner[key] = Holder(unit_name, member, image_id)

    def release(self, unit_name, key):
        if key in self.owner and self.owner[key].unit == unit_name:
            del self.owner[key]

    def invalidate(self, unit_name):
        for path in self.files.pop(unit_name, []):
            _remove(path)
        marker = self.done.pop(unit_name, None)
        if marker is not None:
            for row in marker["manifest"]:
                key = file_key(_image_name(row))
                if key in self.owner and self.owner[key].unit == unit_name:
                    del self.owner[key]
            for key in marker.get("lost", []):
                self.lost.get(key, set()).discard(unit_name)
        self.redo.add(unit_name)

    def finish(self, unit_name, rows, errors, lost):
        """Record a finished unit: units that lost a file name it no longer has are made not done, files of its
        previous version that nobody owns now are deleted, then its marker is written (last, so that a crash before
        leaves the old marker and the unit is redone with the same clean-up)."""
        old = self.old.get(unit_name)
        new_keys = {file_key(_image_name(row)) for row in rows}
        if old is not None:
            for row in old["manifest"]:
                key = file_key(_image_name(row))
                if key not in new_keys:
                    for other in sorted(self.lost.get(key, set()) - {unit_name}):
                        self.invalidate(other)
                    if key not in self.owner:
                        _remove(os.path.join(self.images_dir, _image_name(row)))
        marker = {"format": FORMAT, "archive": unit_name, "identity": self.identities.get(unit_name),
                  "settings": self.settings, "manifest": rows, "errors": errors, "lost": sorted(set(lost))}
        path = os.path.join(self.parts_dir, part_file_name(unit_name))
        write_text_atomic(path, json.dumps(marker, sort_keys=True))
        for other in self.files.get(unit_name, []):
            if other != path:
                _remove(other)
        self.files[unit_name] = [path]
        self.done[unit_name] = self.old[unit_name] = marker
        self.redo.discard(unit_name)
        for key in marker["lost"]:
            self.lost.setdefault(key, set()).add(unit_name)

    def drop_retired(self):
        """Delete the retired units' markers, and their images that no done unit owns (call after a finished run)."""
        for name in sorted(self.retired):
            for row in self.old.get(name, {}).get("manifest", []):
                if file_key(_image_name(row)) not in self.owner:
                    _remove(os.path.join(self.images_dir, _image_name(row)))
            for path in self.files.pop(name, []):
                _remove(path)
            self.old.pop(name, None)
        self.retired.clear()

    def merged(self):
        """(manifest rows sorted by archive and member, error rows sorted) of every done unit."""
        rows = [row for marker in self.done.values() for row in marker["manifest"]]
        errors = [e for marker in self.done.values() for e in marker["errors"]]
        rows.sort(key=lambda r: (r["archive"], r["member"]))
        errors.sort(key=lambda e: (e["archive"], e["member"], e["reason"]))
        return rows, errors


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
