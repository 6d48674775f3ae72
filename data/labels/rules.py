"""What the 22 classes mean, whatever the label source: one rule applied to every source (the PadChest tree, OpenI's
MeSH codes, the report text, a CheXpert labeler CSV) after the source has mapped its own words to the classes and
before parselabelfile.py writes the source's CSV.

- Consolidation counts as 'infiltrates'. This is a mapping each source makes (PadChest draws 'consolidation' under
  infiltrates > alveolar pattern; the MeSH heading 'Consolidation' and the text labeler's 'consolidat...' map to it;
  so must CheXpert's 'Consolidation' observation); CONSOLIDATION names the class and the tests hold each source to it.
- 'other findings' is the leftover class: 1 (or -1) only when the study shows something abnormal that none of the 20
  named findings covers and no named finding is 1 or -1 -- "abnormal, but none of the 20". A source marks 'other
  findings' for any finding outside the named classes (a PadChest term no class is an ancestor of, a MeSH heading
  not in the table, CheXpert's Lung Opacity, Enlarged Cardiomediastinum, Pleural Other or Fracture); the rule clears
  it where a named finding is set.
- 'normal' is 1 only when no other class is 1 or -1: a source's 'normal' beside a finding (PadChest ['normal',
  'cardiomegaly'], CheXpert's 'No Finding' beside 'Cardiomegaly') becomes 0. The rule never sets 'normal': a study
  is normal only when its source says so.
- A class a source never annotates (NIH has no word for devices, tubes, surgery, ...; CheXpert's Support Devices lumps
  catheters, pacemakers, feeding tubes and surgical hardware together) is unknown for that source's
  images: NaN in memory, a blank cell in the per-source CSV and in combined.csv. Unknown is neither negative nor
  uncertain: the rule never reads or writes it, --uncertain (which acts on -1 only) never touches it, the split counts
  it as not positive, and step 4 leaves it out of every loss and metric.
- A study without a usable label (PadChest 'unchanged' or 'suboptimal study' with no other term; OpenI reports the
  source marks in a boolean `Unlabeled` column) is dropped ("drop", the default) or kept with every class -1
  ("keep-uncertain": every known class -1, unknown classes stay blank), never all-negative. A frame without the
  column has no such study.
"""

import numpy as np
import pandas as pd

from data.classes import CLASSES

CONSOLIDATION = "infiltrates"
NORMAL, OTHER = CLASSES.index("normal"), CLASSES.index("other findings")
NAMED = [i for i in range(len(CLASSES)) if i not in (NORMAL, OTHER)]
NOT_NORMAL = [i for i in range(len(CLASSES)) if i != NORMAL]
UNLABELED_POLICIES = ("drop", "keep-uncertain")
# the layout of a per-source label CSV (parselabelfile.py writes it, combinelabels.py reads it)
ID_COLUMNS = ["ImageID", "PatientID", "StudyID", "Projection", "Source"]
LABEL_COLUMNS = [*ID_COLUMNS, "MethodLabel", *CLASSES]


def apply_rules(values):
    """[n, 22] values of labelled studies (1, 0, -1, NaN = unknown) -> (values after the rule, as float where a value is
    unknown and int8 otherwise, counts of the values it changed). An unknown value is never set, read as set, or
    changed."""
    values = np.array(values, dtype=np.float64, copy=True)
    unknown = np.isnan(values)
    set_ = (values != 0) & ~unknown  # 1 or -1
    other = set_[:, OTHER] & set_[:, NAMED].any(axis=1)
    values[other, OTHER] = 0
    normal = set_[:, NORMAL] & set_[:, NOT_NORMAL].any(axis=1)
    values[normal, NORMAL] = 0
    if not unknown.any():
        values = values.astype(np.int8)
    return values, {"other_cleared": int(other.sum()), "normal_cleared": int(normal.sum())}


def label_frame(values, columns=CLASSES, index=None):
    """Label values (1, 0, -1, NaN = unknown) as a DataFrame: int8 columns where every value is known, pandas' nullable
    Int8 otherwise, which to_csv writes as a blank cell (never '1.0' or 'nan')."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isnan(values).any():
        return pd.DataFrame(values.astype(np.int8), columns=columns, index=index)
    return pd.DataFrame(values, columns=columns, index=index).astype("Int8")


def label_values(frame, columns=CLASSES):
    """The label columns of a frame as a float array, NaN where unknown (the inverse of label_frame)."""
    return frame[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)


def finish(frame, unlabeled="drop"):
    """A source's labels DataFrame (ID columns, 22 classes with NaN where the source does not annotate a class,
    optionally MethodLabel and a boolean Unlabeled) -> (the per-source CSV's frame in LABEL_COLUMNS, counts: unlabeled
    studies' images and the values the rule changed)."""
    if unlabeled not in UNLABELED_POLICIES:
        raise ValueError(f"unknown unlabeled policy {unlabeled!r}")
    frame = frame.reset_index(drop=True)
    marked = frame["Unlabeled"].fillna(False).astype(bool).to_numpy() if "Unlabeled" in frame else \
        np.zeros(len(frame), dtype=bool)
    values = label_values(frame)
    ruled, counts = apply_rules(values[~marked])
    values[~marked] = ruled
    values[marked] = np.where(np.isnan(values[marked]), np.nan, -1)
    out = frame.reindex(columns=LABEL_COLUMNS, fill_value="")
    out[CLASSES] = label_frame(values, index=out.index)
    counts["unlabeled"] = int(marked.sum())
    if unlabeled == "drop":
        out = out[~marked].reset_index(drop=True)
    return out, counts
