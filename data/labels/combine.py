"""Step 3: join the per-source labels with the image manifest and split at patient level.

The split is multilabel iterative stratification (scikit-multilearn's IterativeStratification, with the
rarest-label-first order of the original algorithm restored and constant-time bookkeeping) over patients,
not images, so no patient is in two splits. The stratified labels are each (source, class) pair and the
source, so every class keeps about the same prevalence in train, val and test within each source.
"""

import math
import os

import numpy as np
import pandas as pd
from skmultilearn.model_selection import IterativeStratification

from data.classes import CLASSES
from data.errors import InputError, LabelFileError
from data.files import check_values, read_table
from data.labels.rules import ID_COLUMNS

MANIFEST_COLUMNS = ["ImageID", "path", "width", "height"]
# view: the label file's Projection (PadChest), else the manifest's view column where step 1 wrote one, else blank.
# MethodLabel: PadChest's 'Physician' or 'RNN_model', blank for other sources.
OUT_COLUMNS = ["ImageID", "path", "Source", "PatientID", "StudyID", "Projection", "view", "MethodLabel", "width",
               "height", "split", *CLASSES]
SPLITS = ["train", "val", "test"]
LABEL_FILES = ["padchest_labels.csv", "openi_labels.csv"]


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
    """

    def _distribute_positive_evidence(self, rows_used, folds, samples_with_combination, per_row_combinations):
        # plain lists: this loop runs once per sample and label, numpy scalars would dominate it
        desired = {k: [float(x) for x in v] for k, v in self.desired_samples_per_combination_per_fold.items()}
        total = [float(x) for x in self.desired_samples_per_fold]
        n_folds = len(total)
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
                best = max(want)
                candidates = [k for k in range(n_folds) if want[k] == best]
                if len(candidates) > 1:
                    most = max(total[k] for k in candidates)
                    candidates = [k for k in candidates if total[k] == most]
                fold = candidates[0] if len(candidates) == 1 else int(np.random.choice(candidates))
                folds[fold].append(row)
                rows_used[row] = True
                for combination in per_row_combinations[row]:
                    if row in samples_with_combination[combination]:
                        samples_with_combination[combination].remove(row)
                    desired[combination][fold] -= 1
                total[fold] -= 1
        self.desired_samples_per_fold[:] = total


def stratified_folds(y, fractions, seed=1):
    """Fold index (0..len(fractions)-1) per row of the 0/1 matrix y, by iterative stratification.

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
        for k, (_, test) in enumerate(splitter.split(np.zeros((n, 1)), y[order])):
            fold[order[test]] = k
    finally:
        np.random.set_state(state)
    return fold


def read_label_csv(path):
    """A per-source label CSV (step 2) with its columns and values checked; MethodLabel blank where it has none."""
    frame = read_table(path, ID_COLUMNS + CLASSES, what="a per-source label CSV of parselabelfile.py",
                       dtype={c: str for c in [*ID_COLUMNS, "MethodLabel"]}, keep_default_na=False)
    check_values(frame, path, CLASSES, (1, 0, -1))
    frame[CLASSES] = frame[CLASSES].apply(pd.to_numeric).astype(np.int8)
    if "MethodLabel" not in frame:
        frame["MethodLabel"] = ""
    return frame


def read_labels(labels_dir):
    """All per-source label CSVs found in labels_dir, stacked."""
    paths = [os.path.join(labels_dir, f) for f in LABEL_FILES if os.path.exists(os.path.join(labels_dir, f))]
    if not paths:
        raise LabelFileError(f"{labels_dir}: none of {LABEL_FILES} found (run parselabelfile.py first)")
    return pd.concat([read_label_csv(p) for p in paths], ignore_index=True)


def read_manifest(path):
    """Step 1's manifest: ImageID, absolute path, width, height of every image that was written."""
    frame = read_table(path, MANIFEST_COLUMNS, what="download_images.py's manifest.csv",
                       dtype={"ImageID": str, "path": str, "status": str, "view": str}, keep_default_na=False)
    if "status" in frame.columns:
        frame = frame[frame["status"].isin(["ok", ""])]
    frame = frame.drop_duplicates("ImageID")
    root = os.path.dirname(os.path.abspath(path))
    frame = frame.reindex(columns=[*MANIFEST_COLUMNS, "view"], fill_value="")
    relative = ~frame["path"].str.startswith(("/", "\\")) & ~frame["path"].str.match(r"^[A-Za-z]:[\\/]")
    frame.loc[relative, "path"] = root + os.sep + frame.loc[relative, "path"].str.replace("/", os.sep)
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
    images = (frame[CLASSES].to_numpy() == 1).astype(np.int8)
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


def patient_split(frame, val_frac=0.1, test_frac=0.1, seed=1):
    """'train'/'val'/'test' per row, the same for every image of a patient (Source + PatientID)."""
    check_fractions(val_frac, test_frac)
    codes, y = patient_labels(frame)
    fractions = [1 - val_frac - test_frac, val_frac, test_frac]
    keep = [k for k, f in enumerate(fractions) if f > 0]
    fold = stratified_folds(y, [fractions[k] for k in keep], seed)
    names = np.array(SPLITS)[keep]
    return names[fold][codes]


def combine(labels_dir, manifest, uncertain="zeros", val_frac=0.1, test_frac=0.1, seed=1):
    """Labels + manifest -> (combined DataFrame in the combined.csv layout, stats). InputError when no labelled image
    is in the manifest."""
    check_fractions(val_frac, test_frac)
    labels = read_labels(labels_dir)
    images = read_manifest(manifest)
    stats = {"labeled": len(labels)}
    dup = labels["ImageID"].duplicated()
    stats["duplicate_label_rows"] = int(dup.sum())
    labels = labels[~dup.to_numpy()]
    found = labels["ImageID"].isin(images["ImageID"])
    stats["missing_images"] = labels.loc[~found.to_numpy(), "Source"].value_counts().to_dict()
    stats["unlabeled_images"] = int((~images["ImageID"].isin(labels["ImageID"])).sum())
    if not found.any():
        raise InputError(f"none of the {len(labels)} labelled images in {labels_dir} is among the {len(images)} "
                         f"images of {manifest} (labels: {', '.join(labels['ImageID'].head(3))}, ...; manifest: "
                         f"{', '.join(images['ImageID'].head(3)) or 'no image'}): are they from the same dataset?")
    frame = labels[found.to_numpy()].merge(images, on="ImageID", how="left")
    # the label file knows PadChest's view; step 1 may know the others' (from the DICOM header)
    frame["view"] = frame["Projection"].where(frame["Projection"] != "", frame["view"])
    # parselabelfile.py --unlabeled keep-uncertain: only --uncertain ignore keeps these from becoming all-negative
    stats["all_uncertain"] = int((frame[CLASSES].to_numpy() == -1).all(axis=1).sum())
    frame[CLASSES] = apply_uncertain(frame[CLASSES].to_numpy(), uncertain)
    frame["split"] = patient_split(frame, val_frac, test_frac, seed) if len(frame) else []
    stats["images"] = len(frame)
    stats["patients"] = int(frame.groupby(["Source", "PatientID"]).ngroups) if len(frame) else 0
    return frame[OUT_COLUMNS].reset_index(drop=True), stats


def positives_table(frame):
    """Positives per class (rows) per source and split (columns), with each split's share in %."""
    counts = (frame[CLASSES] == 1).groupby([frame["Source"], frame["split"]]).sum().T
    counts = counts.reindex(columns=[(s, p) for s in sorted(frame["Source"].unique()) for p in SPLITS
                                     if (s, p) in counts.columns])
    images = frame.groupby(["Source", "split"]).size()
    counts.loc["images"] = [images[c] for c in counts.columns]
    counts.columns = [f"{s} {p}" for s, p in counts.columns]
    return counts
