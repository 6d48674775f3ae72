"""PadChest labels: the UMLS term hierarchy and the label CSV, mapped to the 22 classes.

Every term of an image counts for each class that is the term itself or any of its ancestors in the
PadChest taxonomy (a term can sit under several parents), so 'central venous catheter via jugular vein'
is a 'catheter' and 'sternotomy' is 'surgery'. A term under no class marks 'other findings', and 'normal'
marks 'normal'; data.labels.rules then decides what those two mean beside the named classes.
"""

import ast
import collections
import os
import re

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.classes import CLASSES
from data.errors import LabelFileError
from data.files import read_table
from data.views import DEFAULT_VIEWS

TAXONOMY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "padchest_tree.csv")
CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
# the Projection values of the PadChest CSV: frontal, lateral, costal (rib) views, and two review outcomes
PROJECTIONS = ("PA", "AP", "AP_horizontal", "L", "COSTAL", "EXCLUDE", "UNK")
REQUIRED_COLUMNS = ("ImageID", "StudyID", "PatientID", "Projection", "Labels")
OPTIONAL_COLUMNS = ("MethodLabel",)  # 'Physician' or 'RNN_model': who labelled the image
# Labels outside the tree. 'unchanged' is in the tree but says only "same as the previous study",
# so like 'suboptimal study' it is neither a finding nor normal: a study with only these has no usable label.
NON_FINDINGS = {"suboptimal study", "unchanged"}
SPECIAL = {"normal", "exclude"} | NON_FINDINGS
# 'normal' and 'other findings' are rules, not tree terms
TREE_CLASSES = [c for c in CLASSES if c not in ("normal", "other findings")]

_TREE_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)[├└]── (?P<name>.*?)\s*(?:\[.*\])?\s*\\*\s*$")


def read_taxonomy(path=TAXONOMY):
    """term -> set of its parents, from the tree drawn with ├── / └── (4 characters per level)."""
    parents = collections.defaultdict(set)
    stack = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise LabelFileError(f"{path}: cannot read the PadChest taxonomy ({reason})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _TREE_LINE.match(line.rstrip("\n"))
        if m is None:
            raise LabelFileError(f"{path}, line {lineno}: not a tree line: {line.strip()[:80]!r}")
        depth = len(m["indent"]) // 4
        name = m["name"].strip().lower()
        if depth > len(stack):
            raise LabelFileError(f"{path}, line {lineno}: indented deeper than its parent")
        del stack[depth:]
        parents[name]  # every term is a key, roots included
        if stack:
            parents[name].add(stack[-1])
        stack.append(name)
    return dict(parents)


def term_ancestors(parents):
    """term -> set of all its ancestors; a term drawn under several parents gets all their lines."""
    ancestors = {}

    def visit(term, seen=()):
        if term in ancestors:
            return ancestors[term]
        if term in seen:
            raise LabelFileError(f"taxonomy has a cycle through {term!r}")
        result = set()
        for p in parents.get(term, ()):
            result |= {p} | visit(p, seen + (term,))
        ancestors[term] = result
        return result

    for term in parents:
        visit(term)
    return ancestors


def term_classes(path=TAXONOMY):
    """term -> set of class names it counts for (itself or an ancestor). Raises if a class is missing."""
    parents = read_taxonomy(path)
    missing = [c for c in TREE_CLASSES if c not in parents]
    if missing:
        raise LabelFileError(f"{path}: classes not found in the taxonomy: {missing}")
    ancestors = term_ancestors(parents)
    wanted = set(TREE_CLASSES)
    return {t: ({t} | a) & wanted for t, a in ancestors.items()}


def parse_labels_cell(cell, where):
    """The Labels cell ("['a', ' b']", NaN, "['']") -> list of lower-case terms, blanks dropped."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    try:
        value = ast.literal_eval(cell) if isinstance(cell, str) else cell
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        raise LabelFileError(f"{where}: Labels is not a list: {str(cell)[:80]!r}") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise LabelFileError(f"{where}: Labels is not a list of terms: {str(cell)[:80]!r}")
    return [t.strip().lower() for t in value if t.strip()]


def read_padchest_csv(path):
    """The PadChest label CSV (plain or .gz), only the columns the labels need, as strings; MethodLabel blank where
    the CSV has none. Text that is not UTF-8 is read as latin-1 (frame.attrs["encoding"] says so)."""
    wanted = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    frame = read_table(path, REQUIRED_COLUMNS, what="the PadChest label CSV", fallback_encoding="latin-1",
                       usecols=lambda c: c in wanted, dtype=str)
    for c in OPTIONAL_COLUMNS:
        if c not in frame:
            frame[c] = ""
    return frame


def padchest_labels(path, taxonomy=TAXONOMY, views=DEFAULT_VIEWS):
    """PadChest label CSV -> (labels DataFrame in the per-source layout with a boolean Unlabeled column, stats).

    Drops and counts, in this order: projections not in `views` (None keeps every one), images labeled 'exclude',
    images with no labels (NaN or only empty strings). Images whose only terms are 'unchanged' or 'suboptimal study'
    are kept with Unlabeled = True and all classes 0 (data.labels.rules drops them or makes them uncertain). Unknown
    terms are counted in stats['unknown_terms'] and count as findings outside the named classes.
    """
    classes_of = term_classes(taxonomy)
    frame = read_padchest_csv(path)
    views = set(views) if views else None
    if views is not None and not frame["Projection"].isin(views).any():
        found = ", ".join(map(str, frame["Projection"].value_counts(dropna=False).index))
        raise LabelFileError(f"{path}: no image has a Projection in --views {','.join(sorted(views))} "
                             f"(its projections: {found or 'none'})")
    col = {c: i for i, c in enumerate(CLASSES)}
    normal, other = col["normal"], col["other findings"]
    values = np.zeros((len(frame), len(CLASSES)), dtype=np.int8)
    keep = np.zeros(len(frame), dtype=bool)
    unlabeled = np.zeros(len(frame), dtype=bool)
    stats = collections.Counter()
    unknown = collections.Counter()
    cache = {}
    rows = zip(frame["Labels"].to_numpy(), frame["Projection"].to_numpy())
    for i, (cell, view) in enumerate(tqdm(rows, total=len(frame), desc="PadChest labels", unit="row",
                                          disable=None, mininterval=0.5)):
        if views is not None and view not in views:
            stats[f"dropped_view_{view}"] += 1
            continue
        key = cell if isinstance(cell, str) else None
        if key not in cache:
            # CSV row numbers count the header as row 1
            cache[key] = parse_labels_cell(cell, f"{path}, row {i + 2}")
        terms = cache[key]
        if "exclude" in terms:
            stats["dropped_exclude"] += 1
            continue
        if not terms:
            stats["dropped_no_labels"] += 1
            continue
        keep[i] = True
        row = values[i]
        usable = False
        for t in terms:
            if t in NON_FINDINGS:
                continue
            usable = True
            if t == "normal":
                row[normal] = 1
            elif classes_of.get(t):
                for c in classes_of[t]:
                    row[col[c]] = 1
            else:
                # a finding under no named class (or not in the taxonomy at all)
                row[other] = 1
                if t not in classes_of:
                    unknown[t] += 1
        unlabeled[i] = not usable
    out = frame.loc[keep, ["ImageID", "PatientID", "StudyID", "Projection", "MethodLabel"]].reset_index(drop=True)
    out.insert(4, "Source", "padchest")
    out["Unlabeled"] = unlabeled[keep]
    out = pd.concat([out, pd.DataFrame(values[keep], columns=CLASSES)], axis=1)
    stats["rows"] = len(frame)
    stats["kept"] = int(keep.sum())
    stats = dict(stats)
    stats["unknown_terms"] = dict(unknown.most_common())
    stats["encoding"] = frame.attrs.get("encoding", "utf-8")
    return out, stats
