"""Radiograph views: what a DICOM header says an image is, and which views a run keeps.

CheXNet and ChestX-ray8 train and score on frontal images only, and heatmaps on a lateral are scored against nothing,
so every step keeps the frontal views by default. A view is the DICOM ViewPosition as written (PA, AP, LL, ...),
PadChest's Projection (PA, AP, AP_horizontal, L, COSTAL), or 'frontal' / 'lateral' where only the kind is known (the
view classifier's answer for an image whose header says nothing).
"""
import re

# The frontal views, as the DICOM headers and PadChest's Projection name them: what every step keeps by default.
DEFAULT_VIEWS = ("PA", "AP", "AP_horizontal")
FRONTAL = (*DEFAULT_VIEWS, "frontal")
LATERAL = ("L", "LL", "RL", "LATERAL", "LARGE LATERAL", "lateral")
_KINDS = {"frontal": FRONTAL, "lateral": LATERAL}  # the --views words that stand for a kind's views
# Words of free-text descriptions (series, protocol, processing) that name the view, checked in this order.
_TEXT_VIEWS = [(re.compile(r"(?:^|[^a-z])lat(?:eral)?(?:[^a-z]|$)|chestlat"), "lateral"),
               (re.compile(r"(?:^|[^a-z])p\.?a\.?(?:[^a-z]|$)|postero-?anterior"), "PA"),
               (re.compile(r"(?:^|[^a-z])a\.?p\.?(?:[^a-z]|$)|antero-?posterior|chestap"), "AP")]
_CODE_VIEWS = {"postero-anterior": "PA", "antero-posterior": "AP", "left lateral": "LL", "right lateral": "RL",
               "lateral": "LATERAL"}


def view_kind(view):
    """'frontal', 'lateral', 'other' (COSTAL, oblique, ...) or '' (unknown) for a view value."""
    value = "" if view is None else str(view).strip()
    if value in ("", "nan", "None"):
        return ""
    if value in FRONTAL or value.upper() in FRONTAL:
        return "frontal"
    if value in LATERAL or value.upper() in LATERAL:
        return "lateral"
    return "other"


def header_view(header):
    """The view of a DICOM image from its header (a pydicom Dataset, or any object whose attributes are DICOM
    keywords): ViewPosition when set; else the View Code Sequence's meaning; else a view named in the series or
    protocol description; '' when none says. A study-level description ('PA and lateral') is not read: it names the
    study's views, not this image's."""
    position = str(getattr(header, "ViewPosition", "") or "").strip().upper()
    if position:
        return position
    for item in getattr(header, "ViewCodeSequence", None) or []:
        meaning = str(getattr(item, "CodeMeaning", "") or "").strip().lower()
        if meaning in _CODE_VIEWS:
            return _CODE_VIEWS[meaning]
    for keyword in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"):
        text = str(getattr(header, keyword, "") or "").strip().lower()
        named = {view for pattern, view in _TEXT_VIEWS if pattern.search(text)}
        if len(named) == 1:  # 'PA and lateral' names two: it says nothing about this image
            return named.pop()
    return ""


def parse_views(text, known=None, what="a known view"):
    """A --views value -> the set of views kept, or None for 'all'. 'frontal' and 'lateral' stand for their views.

    Without `known`, any view value is taken as written. With `known` (the names a source uses, as PadChest's
    Projection values), only those, matched without regard to case and returned as `known` spells them, and
    'frontal' and 'lateral' stand for the known names of that kind; ValueError naming every other item as not
    `what`."""
    text = str(text).strip()
    if text.lower() == "all":
        return None
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise ValueError(f"--views {text!r} names no view (a comma list such as PA,AP,AP_horizontal, or 'all')")
    if known is None:
        return set().union(*(_KINDS.get(item.lower(), (item,)) for item in items))
    unknown = [item for item in items if not known_views(item, known)]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not {what}; give some of {', '.join(known)}, frontal, lateral or "
                         f"'all'")
    return set().union(*(known_views(item, known) for item in items))


def known_views(item, known):
    """The names of `known` that one --views item stands for: the one it names (in any case), or those of its kind
    for 'frontal' and 'lateral'."""
    item = item.lower()
    return {name for name in known if name.lower() == item or item in _KINDS and view_kind(name) == item}


def keeps(views, value):
    """True when a view value is kept by parse_views' result (an unknown view only with 'all')."""
    return views is None or str(value) in views or (str(value).upper() in views)


def view_mask(frame, views):
    """Boolean mask of the rows a --views setting keeps (all of them for 'all' or a frame without a view column)."""
    import numpy as np
    if views is None or "view" not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    return frame["view"].fillna("").astype(str).map(lambda v: keeps(views, v)).to_numpy(dtype=bool)
