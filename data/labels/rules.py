"""What the 22 classes mean, whatever the label source: one rule applied to every source (the PadChest tree, OpenI's
MeSH codes, the report text, a CheXpert labeler CSV) after the source has mapped its own words to the classes and
before parselabelfile.py writes the source's CSV.

- Consolidation counts as 'infiltrates'. This is a mapping each source makes (PadChest draws 'consolidation' under
  infiltrates > alveolar pattern; the MeSH heading 'Consolidation' and the text labeler's 'consolidat...' map to it;
  so must CheXpert's 'Consolidation' observation); CONSOLIDATION names the class and the tests hold each source to it.
- 'other findings' is the leftover class: 1 (or -1) only when the study shows something abnormal that none of the 20
  named findings covers and no named finding is 1 or -1 -- "abnormal, but none of the 20". A source marks 'other
  findings' for any finding outside the named classes (a PadChest term no class is an ancestor of, a MeSH heading
  not in the table, CheXpert's Lung Opacity, Enlarged Cardiomediastinum or Pleural Other); the rule clears it where
  a named finding is set.
- 'normal' is 1 only when no other class is 1 or -1: a source's 'normal' beside a finding (PadChest ['normal',
  'cardiomegaly'], CheXpert's 'No Finding' beside 'Support Devices') becomes 0. The rule never sets 'normal': a study
  is normal only when its source says so.
- A study without a usable label (PadChest 'unchanged' or 'suboptimal study' with no other term; OpenI reports the
  source marks in a boolean `Unlabeled` column) is dropped ("drop", the default) or kept with every class -1
  ("keep-uncertain"), never all-negative. A frame without the column has no such study.
"""

import numpy as np

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
    """int8 [n, 22] values of labelled studies -> (values after the rule, counts of the values it changed)."""
    values = np.array(values, dtype=np.int8, copy=True)
    set_ = values != 0  # 1 or -1
    other = set_[:, OTHER] & set_[:, NAMED].any(axis=1)
    values[other, OTHER] = 0
    normal = set_[:, NORMAL] & (values[:, NOT_NORMAL] != 0).any(axis=1)
    values[normal, NORMAL] = 0
    return values, {"other_cleared": int(other.sum()), "normal_cleared": int(normal.sum())}


def finish(frame, unlabeled="drop"):
    """A source's labels DataFrame (ID columns, 22 classes, optionally MethodLabel and a boolean Unlabeled) -> (the
    per-source CSV's frame in LABEL_COLUMNS, counts: unlabeled studies' images and the values the rule changed)."""
    if unlabeled not in UNLABELED_POLICIES:
        raise ValueError(f"unknown unlabeled policy {unlabeled!r}")
    frame = frame.reset_index(drop=True)
    marked = frame["Unlabeled"].fillna(False).astype(bool).to_numpy() if "Unlabeled" in frame else \
        np.zeros(len(frame), dtype=bool)
    values, counts = apply_rules(frame[CLASSES].to_numpy()[~marked])
    out = frame.reindex(columns=LABEL_COLUMNS, fill_value="")
    out.loc[~marked, CLASSES] = values
    out.loc[marked, CLASSES] = -1
    out[CLASSES] = out[CLASSES].astype(np.int8)
    counts["unlabeled"] = int(marked.sum())
    if unlabeled == "drop":
        out = out[~marked].reset_index(drop=True)
    return out, counts
