"""Step 3: join the per-source labels with the image manifest and split at patient level.

The split is multilabel iterative stratification (scikit-multilearn's IterativeStratification, with the
rarest-label-first order of the original algorithm restored and constant-time bookkeeping) over patients,
not images, so no patient is in two splits. The stratified labels are each (source, class) pair and the
source, so every class keeps about the same prevalence in train, val and test within each source. Some patients
can be constrained (the patients of a box list's images to test, NIH's patients to test or not by NIH's official
test list): they are placed first and count towards their split's share and labels, so the free patients fill the
splits around them.

Class values: 1, 0, -1 (uncertain) and NaN for unknown, a class the source never annotates (a blank cell in the
per-source CSVs and in combined.csv). --uncertain acts on -1 only, so a blank is never made 0, 1 or -1; the split
counts unknown as not positive.
"""

import glob
import math
import os
import re

import numpy as np
import pandas as pd
from skmultilearn.model_selection import IterativeStratification

from data.classes import CLASSES
from data.errors import InputError, LabelFileError
from data.files import check_values, read_table
from data.formats import MANIFEST_NEEDED, SPLITS
from data.labels.nih import GOOGLE_COLUMNS, SOURCE as NIH
from data.labels.rules import ID_COLUMNS, label_frame, label_values

# view: the label file's Projection (PadChest), else the manifest's view column where step 1 wrote one, else blank.
# MethodLabel: PadChest's 'Physician' or 'RNN_model', blank for other sources.
OUT_COLUMNS = ["ImageID", "path", "Source", "PatientID", "StudyID", "Projection", "view", "MethodLabel", "width",
               "height", "split", *CLASSES]
LABEL_FILES = ["padchest_labels.csv", "openi_labels.csv", "nih_labels.csv"]
GOOGLE_FILE = "nih_google_labels.csv"


class _EvidenceList:
    """The list of samples scikit-multilearn keeps per label, with O(1) `in` and `remove`.

    IterativeStratification pops from the end, tests membership and removes; on plain lists the last two
    scan the list, which makes 70,000 patients take minutes. An insertion-ordered dict pops the same
    element a list would, so the folds are exactly scikit-multilearn's.
    """

    def __init__(self, items):
        self._d = dict.fromkeys(items)

    def pop(self):
        return self._d.popitem()[0]

    def remove(self, item):
        del self._d[item]

    def __contains__(self, item):
        return item in self._d

    def __len__(self):
        return len(self._d)


class FastBookkeeping(IterativeStratification):
    """scikit-multilearn's IterativeStratification with constant-time bookkeeping; the same folds."""

    def _prepare_stratification(self, y):
        prepared = list(super()._prepare_stratification(y))
        prepared[4] = {k: _EvidenceList(v) for k, v in prepared[4].items()}
        return tuple(prepared)


class RarestFirstStratification(FastBookkeeping):
    """Iterative stratification as Sechidis et al. (2011) describe it: take the label with the fewest
    unassigned samples, give each of its samples to the fold that wants that label most (ties: the fold
    that wants the most samples, then random), repeat.

    scikit-multilearn 0.2.0 means to do this, but its label choice (`_get_most_desired_combination`)
    keeps the first label in the dict for order=1, so labels go in order of first appearance and a rare
    label's samples are mostly placed by common labels before its turn: on PadChest + OpenI that left
    val without a single OpenI catheter or aortic elongation.

    `allowed` (set before split; None: every fold for every sample) is a boolean [n_samples, n_folds]: the folds
    each sample may go to. A sample with one allowed fold is placed there first, so that the others fill the folds
    around it (a test split forced to hold some patients still ends with about its share of each label); the others
    go to the allowed fold that wants their label most.
    """

    allowed = None

    def _distribute_positive_evidence(self, rows_used, folds, samples_with_combination, per_row_combinations):
        # plain lists: this loop runs once per sample and label, numpy scalars would dominate it
        desired = {k: [float(x) for x in v] for k, v in self.desired_samples_per_combination_per_fold.items()}
        total = [float(x) for x in self.desired_samples_per_fold]
        n_folds = len(total)
        every = tuple(range(n_folds))
        options = [every] * len(rows_used) if self.allowed is None else \
            [tuple(np.flatnonzero(a).tolist()) for a in self.allowed]

        def place(row, fold):
            folds[fold].append(row)
            rows_used[row] = True
            for combination in per_row_combinations[row]:
                if row in samples_with_combination[combination]:
                    samples_with_combination[combination].remove(row)
                desired[combination][fold] -= 1
            total[fold] -= 1

        for row, allowed in enumerate(options):
            if len(allowed) == 1:
                place(row, allowed[0])
        while True:
            left = [(len(rows), label) for label, rows in samples_with_combination.items() if len(rows)]
            if not left:
                break
            label = min(left)[1]
            evidence = samples_with_combination[label]
            want = desired[label]
            while len(evidence):
                row = evidence.pop()
                if rows_used[row]:
                    continue
                allowed = options[row]
                best = max(want[k] for k in allowed)
                candidates = [k for k in allowed if want[k] == best]
                if len(candidates) > 1:
                    most = max(total[k] for k in candidates)
                    candidates = [k for k in candidates if total[k] == most]
                place(row, candidates[0] if len(candidates) == 1 else int(np.random.choice(candidates)))
        self.desired_samples_per_fold[:] = total

    def _distribute_negative_evidence(self, rows_used, folds):
        if self.allowed is None:
            return super()._distribute_negative_evidence(rows_used, folds)
        # samples without a label: a random allowed fold that still wants samples (any allowed one when none does)
        for row in [i for i, used in rows_used.items() if not used]:
            allowed = np.flatnonzero(self.allowed[row])
            wanting = allowed[self.desired_samples_per_fold[allowed] > 0]
            fold = int(np.random.choice(wanting if len(wanting) else allowed))
            self.desired_samples_per_fold[fold] -= 1
            folds[fold].append(row)
            rows_used[row] = True


def stratified_folds(y, fractions, seed=1, allowed=None):
    """Fold index (0..len(fractions)-1) per row of the 0/1 matrix y, by iterative stratification; `allowed`
    (boolean [len(y), len(fractions)], or None for no constraint) limits the folds of each row.

    Rows are shuffled with `seed` first (the algorithm assigns them in order) and numpy's global random
    state, which scikit-multilearn draws its tie-breaks from, is seeded and then restored.
    """
    n = len(y)
    fold = np.zeros(n, dtype=np.int64)
    if n == 0 or len(fractions) == 1:
        return fold
    order = np.random.RandomState(seed).permutation(n)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        splitter = RarestFirstStratification(n_splits=len(fractions), order=1,
                                               sample_distribution_per_fold=list(fractions))
        if allowed is not None:
            splitter.allowed = np.asarray(allowed, dtype=bool)[order]
        for k, (_, test) in enumerate(splitter.split(np.zeros((n, 1)), y[order])):
            fold[order[test]] = k
    finally:
        np.random.set_state(state)
    return fold


def read_label_csv(path):
    """A per-source label CSV (step 2) with its columns and values checked (1, 0, -1, or blank for unknown); the
    classes as float, NaN where unknown; MethodLabel blank where it has none."""
    frame = read_table(path, ID_COLUMNS + CLASSES, what="a per-source label CSV of parselabelfile.py",
                       dtype={c: str for c in [*ID_COLUMNS, "MethodLabel"]}, keep_default_na=False)
    check_values(frame, path, CLASSES, (1, 0, -1), blank=True)
    frame[CLASSES] = frame[CLASSES].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    if "MethodLabel" not in frame:
        frame["MethodLabel"] = ""
    return frame


def read_labels(labels_dir):
    """All per-source label CSVs found in labels_dir, stacked."""
    paths = [os.path.join(labels_dir, f) for f in LABEL_FILES if os.path.exists(os.path.join(labels_dir, f))]
    if not paths:
        raise LabelFileError(f"{labels_dir}: none of {LABEL_FILES} found (run parselabelfile.py first)")
    return pd.concat([read_label_csv(p) for p in paths], ignore_index=True)


def read_google_labels(labels_dir):
    """labels_dir/nih_google_labels.csv (parselabelfile.py --nih-google-labels) checked, or None without one."""
    path = os.path.join(labels_dir, GOOGLE_FILE)
    if not os.path.exists(path):
        return None
    columns = list(GOOGLE_COLUMNS.values())
    frame = read_table(path, ["ImageID", *columns], what="nih_google_labels.csv of parselabelfile.py",
                       dtype={"ImageID": str}, keep_default_na=False)
    check_values(frame, path, columns, (1, 0))
    return frame[["ImageID", *columns]].drop_duplicates("ImageID").astype({c: np.int8 for c in columns})


def read_manifest(path):
    """Step 1's manifest: ImageID, absolute path, width, height of every image that was written."""
    frame = read_table(path, MANIFEST_NEEDED, what="download_images.py's manifest.csv",
                       dtype={"ImageID": str, "path": str, "status": str, "view": str}, keep_default_na=False)
    if "status" in frame.columns:
        frame = frame[frame["status"].isin(["ok", ""])]
    frame = frame.drop_duplicates("ImageID")
    root = os.path.dirname(os.path.abspath(path))
    frame = frame.reindex(columns=[*MANIFEST_NEEDED, "view"], fill_value="")
    relative = ~frame["path"].str.startswith(("/", "\\")) & ~frame["path"].str.match(r"^[A-Za-z]:[\\/]")
    frame.loc[relative, "path"] = root + os.sep + frame.loc[relative, "path"].str.replace("/", os.sep)
    return frame


def _shard_number(folder):
    match = re.fullmatch(r"shard-(\d+)", os.path.basename(folder))
    return int(match.group(1)) if match else None


def manifest_paths(values):
    """--manifest values -> the manifest files, each once. A value is a comma list of manifest files and folders; a
    folder stands for its manifest.csv and the manifest.csv of each shard-K folder in it (download_images.py --shard
    auto writes OUT/shard-K/), in shard order. InputError naming the path for one that does not exist, a folder
    without any manifest, and a shard folder without its manifest.csv (that shard has not finished)."""
    values = [values] if isinstance(values, (str, os.PathLike)) else values
    found = []
    for item in (part.strip() for value in values for part in str(value).split(",")):
        if not item:
            continue
        if os.path.isfile(item):
            found.append(item)
            continue
        if not os.path.isdir(item):
            raise InputError(f"--manifest {item}: no such file or folder")
        own = [os.path.join(item, "manifest.csv")] if os.path.isfile(os.path.join(item, "manifest.csv")) else []
        shards = sorted((f for f in glob.glob(os.path.join(glob.escape(item), "shard-*"))
                         if os.path.isdir(f) and _shard_number(f) is not None), key=_shard_number)
        unfinished = [f for f in shards if not os.path.isfile(os.path.join(f, "manifest.csv"))]
        if unfinished:
            raise InputError(f"--manifest {item}: {unfinished[0]} has no manifest.csv (its download_images.py has "
                             f"not finished{f'; {len(unfinished) - 1} more shards neither' if len(unfinished) > 1 else ''}"
                             f"); wait for it, or name the finished shards' manifests one by one")
        if not own and not shards:
            raise InputError(f"--manifest {item}: a folder without manifest.csv or shard-K/manifest.csv")
        found += own + [os.path.join(f, "manifest.csv") for f in shards]
    unique = list({os.path.realpath(p): p for p in reversed(found)}.values())[::-1]
    if not unique:
        raise InputError("--manifest: no manifest given")
    return unique


def missing_shards(paths):
    """Shard numbers absent between 0 and the highest shard-K of each folder among the manifest paths: a task that
    never ran leaves a gap."""
    numbers = {}
    for p in paths:
        folder = os.path.dirname(os.path.abspath(p))
        k = _shard_number(folder)
        if k is not None:
            numbers.setdefault(os.path.dirname(folder), set()).add(k)
    return {parent: sorted(set(range(max(ks) + 1)) - ks) for parent, ks in numbers.items()
            if len(ks) != max(ks) + 1}


def read_manifests(paths):
    """The manifests at `paths` as one frame (each image path resolved against its own manifest's folder), with a
    `manifest` column naming the file. InputError naming both files when an ImageID is in two of them: shards
    partition the images, so an overlap is two runs over the same input, and neither copy is picked silently."""
    frame = pd.concat([read_manifest(p).assign(manifest=p) for p in paths], ignore_index=True)
    twice = frame["ImageID"].duplicated(keep=False)
    if twice.any():
        first = frame.loc[twice, "ImageID"].iloc[0]
        files = frame.loc[frame["ImageID"] == first, "manifest"].tolist()
        raise InputError(f"ImageID {first!r} is in {files[0]} and in {files[1]} "
                         f"({frame.loc[twice, 'ImageID'].nunique()} ImageIDs are in more than one manifest): "
                         f"shards must not overlap; give each image's manifest once")
    return frame


def apply_uncertain(values, policy):
    """-1 labels -> 0 ('zeros'), 1 ('ones'), or kept as -1 ('ignore', for a masked loss)."""
    if policy == "zeros":
        return np.where(values == -1, 0, values)
    if policy == "ones":
        return np.where(values == -1, 1, values)
    if policy == "ignore":
        return values
    raise ValueError(f"unknown uncertain policy {policy!r}")


def patient_labels(frame):
    """(patient code per row, 0/1 matrix per patient) for stratification. Columns: one per (source, class)
    and one per source; the sources differ a lot in prevalence, so a class balanced over both together
    can still be unbalanced within one of them."""
    key = frame["Source"].astype(str) + "\x00" + frame["PatientID"].astype(str)
    codes, patients = pd.factorize(key)
    images = (label_values(frame) == 1).astype(np.int8)  # unknown (NaN) is not positive
    sources, source_code = np.unique(frame["Source"].to_numpy(), return_inverse=True)
    per_source = np.zeros((len(frame), len(sources), len(CLASSES) + 1), dtype=np.int8)
    per_source[np.arange(len(frame)), source_code] = np.concatenate(
        [images, np.ones((len(frame), 1), dtype=np.int8)], axis=1)
    y = np.zeros((len(patients), per_source.shape[1] * per_source.shape[2]), dtype=np.int8)
    np.maximum.at(y, codes, per_source.reshape(len(frame), -1))
    return codes, y


def check_fractions(val_frac, test_frac):
    """InputError unless both are numbers >= 0 with a sum below 1 (NaN and infinity are not)."""
    if not all(math.isfinite(f) and f >= 0 for f in (val_frac, test_frac)) or val_frac + test_frac >= 1:
        raise InputError(f"need 0 <= --val-frac, --test-frac and --val-frac + --test-frac < 1, got --val-frac "
                         f"{val_frac} and --test-frac {test_frac}")


def patient_split(frame, val_frac=0.1, test_frac=0.1, seed=1, test_rows=None, no_test_rows=None):
    """'train'/'val'/'test' per row, the same for every image of a patient (Source + PatientID).

    test_rows (boolean per row, or None): the patients of these rows go to test, whatever the fractions.
    no_test_rows (boolean per row, or None): the patients of these rows (unless also in test_rows) go to train or val
    only. Constrained patients count towards their split's share and labels, so the free ones fill around them."""
    check_fractions(val_frac, test_frac)
    codes, y = patient_labels(frame)
    fractions = [1 - val_frac - test_frac, val_frac, test_frac]
    if test_rows is None and no_test_rows is None:
        keep = [k for k, f in enumerate(fractions) if f > 0]
        fold = stratified_folds(y, [fractions[k] for k in keep], seed)
        return np.array(SPLITS)[keep][fold][codes]
    pinned = np.zeros(len(y), dtype=bool)
    barred = np.zeros(len(y), dtype=bool)
    if test_rows is not None:
        pinned[codes[np.asarray(test_rows, dtype=bool)]] = True
    if no_test_rows is not None:
        barred[codes[np.asarray(no_test_rows, dtype=bool)]] = True
    allowed = np.tile(np.array(fractions) > 0, (len(y), 1))  # a free patient never goes to a split of share 0
    allowed[barred, SPLITS.index("test")] = False
    allowed[pinned] = [s == "test" for s in SPLITS]
    keep = [k for k in range(len(SPLITS)) if allowed[:, k].any()]
    fold = stratified_folds(y, [fractions[k] for k in keep], seed, allowed[:, keep])
    return np.array(SPLITS)[keep][fold][codes]


def forced_test(frame, labels, images, nih_test_images=None, test_images=None):
    """(test_rows, no_test_rows, stats) for patient_split: the patients of NIH's official test list go to test and
    every other NIH patient to train or val; the patients of `test_images` (a box list's images, one entry per box
    row) go to test. A name's patient is looked up in `labels` (every label row, combined or not), so the patient of a
    box image that is missing from the manifest still goes to test with the rest of its images. `images`: the
    manifests' frame, for counting names not in it. InputError for a test list that names no NIH image."""
    key = lambda f: f["Source"].astype(str) + "\x00" + f["PatientID"].astype(str)
    patients = key(frame)
    test_rows = np.zeros(len(frame), dtype=bool)
    no_test_rows = np.zeros(len(frame), dtype=bool)
    stats = {}
    in_manifest = set(images["ImageID"])
    if nih_test_images is not None:
        names = pd.Series(list(nih_test_images), dtype=str).drop_duplicates()
        nih = labels[labels["Source"] == NIH]
        listed = nih[nih["ImageID"].isin(set(names))]
        if listed.empty:
            raise InputError(f"--nih-test-list: none of its {len(names)} image names ({', '.join(names.head(3))}, "
                             f"...) is an NIH image of the label files ({len(nih)} NIH images)")
        chosen = set(key(listed))
        hit = patients.isin(chosen).to_numpy()
        test_rows |= hit
        no_test_rows |= (frame["Source"] == NIH).to_numpy() & ~hit
        stats["nih_test_list"] = {"names": len(names), "patients": len(chosen), "images": int(hit.sum()),
                                  **_not_found(names, set(nih["ImageID"]), in_manifest)}
    if test_images is not None:
        rows = pd.Series(list(test_images), dtype=str)
        listed = labels[labels["ImageID"].isin(set(rows))]
        chosen = set(key(listed))
        hit = patients.isin(chosen).to_numpy()
        test_rows |= hit
        stats["test_boxes"] = {"rows": len(rows), "names": rows.nunique(), "patients": len(chosen),
                               "images": int(hit.sum()), "rows_not_in_manifest": int((~rows.isin(in_manifest)).sum()),
                               **_not_found(rows, set(labels["ImageID"]), in_manifest)}
    return test_rows, no_test_rows, stats


def _not_found(names, labelled, in_manifest):
    """Counts of the distinct `names` not in the manifests and not among the `labelled` images, and the first few."""
    names = names.drop_duplicates()
    missing = names[~names.isin(in_manifest)]
    return {"not_in_manifest": len(missing), "not_labelled": int((~names.isin(labelled)).sum()),
            "first_not_in_manifest": missing.head(3).tolist()}


def combine(labels_dir, manifests, uncertain="zeros", val_frac=0.1, test_frac=0.1, seed=1, nih_test_images=None,
            test_images=None):
    """Labels + manifests (a path or a list, see manifest_paths) -> (combined DataFrame in the combined.csv layout,
    stats). nih_test_images and test_images: see forced_test. InputError when no labelled image is in the
    manifests."""
    check_fractions(val_frac, test_frac)
    labels = read_labels(labels_dir)
    paths = manifest_paths(manifests)
    images = read_manifests(paths)
    where = paths[0] if len(paths) == 1 else f"the {len(paths)} manifests ({paths[0]}, ...)"
    stats = {"labeled": len(labels), "manifests": paths}
    dup = labels["ImageID"].duplicated()
    stats["duplicate_label_rows"] = int(dup.sum())
    labels = labels[~dup.to_numpy()]
    found = labels["ImageID"].isin(images["ImageID"])
    stats["missing_images"] = labels.loc[~found.to_numpy(), "Source"].value_counts().to_dict()
    stats["unlabeled_images"] = int((~images["ImageID"].isin(labels["ImageID"])).sum())
    if not found.any():
        raise InputError(f"none of the {len(labels)} labelled images in {labels_dir} is among the {len(images)} "
                         f"images of {where} (labels: {', '.join(labels['ImageID'].head(3))}, ...; manifest: "
                         f"{', '.join(images['ImageID'].head(3)) or 'no image'}): are they from the same dataset?")
    frame = labels[found.to_numpy()].merge(images, on="ImageID", how="left").reset_index(drop=True)
    # the label file knows PadChest's and NIH's view; step 1 may know the others' (from the DICOM header)
    frame["view"] = frame["Projection"].where(frame["Projection"] != "", frame["view"])
    values = label_values(frame)
    known = ~np.isnan(values)
    # parselabelfile.py --unlabeled keep-uncertain: only --uncertain ignore keeps these from becoming all-negative
    stats["all_uncertain"] = int((((values == -1) | ~known).all(axis=1) & known.any(axis=1)).sum())
    stats["unknown"] = {source: [c for c in CLASSES if part[c].isna().all()]
                        for source, part in frame.groupby("Source") if part[CLASSES].isna().any().any()}
    frame[CLASSES] = label_frame(apply_uncertain(values, uncertain), index=frame.index)  # blank stays blank
    test_rows, no_test_rows, forced = forced_test(frame, labels, images, nih_test_images, test_images) \
        if nih_test_images is not None or test_images is not None else (None, None, {})
    stats.update(forced)
    frame["split"] = patient_split(frame, val_frac, test_frac, seed, test_rows, no_test_rows) if len(frame) else []
    columns = list(OUT_COLUMNS)
    google = read_google_labels(labels_dir)
    if google is not None:
        frame, stats["google"] = _add_google(frame, google)
        columns += list(GOOGLE_COLUMNS.values())
    stats["images"] = len(frame)
    stats["patients"] = int(frame.groupby(["Source", "PatientID"]).ngroups) if len(frame) else 0
    return frame[columns].reset_index(drop=True), stats


def _add_google(frame, google):
    """frame with Google's columns (1, 0, or blank where Google did not relabel the image) and their counts."""
    columns = list(GOOGLE_COLUMNS.values())
    merged = frame.merge(google, on="ImageID", how="left")
    merged[columns] = merged[columns].astype("Int8")
    has = merged[columns[0]].notna()
    return merged, {"rows": len(google), "images": int(has.sum()), "not_combined": len(google) - int(has.sum()),
                    "splits": merged.loc[has, "split"].value_counts().to_dict()}


def positives_table(frame):
    """Positives per class (rows) per source and split (columns), and the images of each; 'unknown' where a source
    never annotates the class."""
    values = pd.DataFrame(label_values(frame), columns=CLASSES, index=frame.index)
    groups = [frame["Source"], frame["split"]]
    counts = (values == 1).groupby(groups).sum().T.astype(object)
    counts = counts.where(~values.isna().groupby(groups).all().T, "unknown")
    counts = counts.reindex(columns=[(s, p) for s in sorted(frame["Source"].unique()) for p in SPLITS
                                     if (s, p) in counts.columns])
    images = frame.groupby(["Source", "split"]).size()
    counts.loc["images"] = [images[c] for c in counts.columns]
    counts.columns = [f"{s} {p}" for s, p in counts.columns]
    return counts
