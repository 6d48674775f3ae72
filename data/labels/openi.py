"""OpenI (Indiana University, NLMCXR) reports: XML parsing and three label sources for the 22 classes.

- mesh: the MeSH <major> terms people assigned to each report, mapped to the classes (default)
- text: the built-in report labeler (data.labels.report_labeler) run on FINDINGS + IMPRESSION
- chexpert: an output CSV of the Stanford CheXpert labeler, its 14 observations mapped to the classes (the
  classes no observation maps to, CHEXPERT_UNKNOWN, are unknown: blank in the CSV)

A study that its source gives no label for is marked in the column `Unlabeled` (its class values mean nothing):
MeSH codes that are only 'No Indexing' or 'Technical Quality of Image Unsatisfactory'; a report without words
for the text labeler; a report the CheXpert CSV lacks, or whose 14 observations are all blank.

OpenI has no patient ids, so the report id (uId, e.g. 'CXR1000', from ecgen-radiology/1000.xml) is both
PatientID and StudyID: every image of a report lands in the same split. Projection is not in the XML and
is left empty.
"""

import logging
import os
import re
import sys
import tarfile
import time
import zlib
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.classes import CLASSES
from data.commands import Parser, run_main
from data.errors import LabelFileError
from data.files import read_table
from data.labels.report_labeler import NAMED, evaluate, format_table, has_words, label_reports

log = logging.getLogger(__name__)

# Not findings: the indexers' markers for "nothing to code" and for a poor image.
MESH_NON_FINDINGS = {"normal", "no indexing", "technical quality of image unsatisfactory"}

# MeSH heading (the part before the first '/') -> classes. Follows the PadChest taxonomy, so the classes
# mean the same on both sources: e.g. 'Opacity' is PadChest's 'increased density' (not 'infiltrates'),
# 'Pulmonary Congestion' its 'hilar congestion' (not 'pulmonary edema'), 'Lung/hyperdistention' its
# 'hyperinflated lung' (not 'copd signs'); those count as 'other findings'.
MESH_HEADINGS = {
    "pulmonary atelectasis": {"atelectasis"},
    "cardiomegaly": {"cardiomegaly"},
    "catheters, indwelling": {"catheter"},
    "pulmonary disease, chronic obstructive": {"copd signs"},
    "pleural effusion": {"pleural effusion"},
    "hemothorax": {"pleural effusion"},
    "hydropneumothorax": {"pleural effusion", "pneumothorax"},
    "hemopneumothorax": {"pleural effusion", "pneumothorax"},
    "emphysema": {"emphysema"},
    "pulmonary emphysema": {"emphysema"},
    "bullous emphysema": {"emphysema"},
    "heart failure": {"heart insufficiency"},
    "infiltrate": {"infiltrates"},
    "consolidation": {"infiltrates"},
    "airspace disease": {"infiltrates"},
    "lung diseases, interstitial": {"infiltrates"},
    "mass": {"mass"},
    "nodule": {"nodule"},
    "pneumonia": {"pneumonia"},
    "pneumothorax": {"pneumothorax"},
    "pulmonary edema": {"pulmonary edema"},
    "pulmonary fibrosis": {"pulmonary fibrosis"},
    "fibrosis": {"pulmonary fibrosis"},
    "surgical instruments": {"surgery"},
    "sutures": {"surgery"},
    "mastectomy": {"surgery"},
    "pneumonectomy": {"surgery"},
    "spinal fusion": {"surgery"},
    "breast implants": {"surgery"},
    "stents": {"surgery"},
    "scoliosis": {"thoracic cage deformation"},
    "kyphosis": {"thoracic cage deformation"},
    "funnel chest": {"thoracic cage deformation"},
    "pectus carinatum": {"thoracic cage deformation"},
    "tuberculosis": {"tuberculosis"},
    # MeSH headings not used by the OpenI indexers but used by other MeSH-coded corpora
    "pacemaker, artificial": {"electrical device"},
    "defibrillators, implantable": {"electrical device"},
    "central venous catheters": {"catheter"},
}

# CheXpert observation -> class, decided against the PadChest taxonomy. Consolidation is 'infiltrates', as in the
# PadChest tree and MeSH. The observations outside the named classes feed 'other findings', the leftover class: it is
# set only when no named class is positive or uncertain (an opacity beside a pneumonia is the pneumonia). Fracture
# (clavicle, humerus, vertebra or rib) is PadChest's 'fracture', a term of its own beside 'thoracic cage deformation'
# (which holds scoliosis, kyphosis, pectus and cervical rib only): 'other findings'. Support Devices (the CheXpert
# labeler's phrases: lines, PICC, tubes, catheters, pacer, ICD, valve, hardware, plates, screws, drains, coils, ...)
# spans PadChest's catheter, electrical device, NSG tube and surgery and terms outside the classes (endotracheal and
# tracheostomy tubes, chest drains, artificial heart valves): no class of ours, so None.
CHEXPERT_COLUMNS = {
    "No Finding": "normal",
    "Enlarged Cardiomediastinum": "other findings",
    "Cardiomegaly": "cardiomegaly",
    "Lung Lesion": "mass",
    "Lung Opacity": "other findings",
    "Edema": "pulmonary edema",
    "Consolidation": "infiltrates",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "other findings",
    "Fracture": "other findings",
    "Support Devices": None,
}
# The classes no observation maps to are unknown for the CheXpert source (blank, as rules.py has it), not negative:
# the devices, tubes and surgery that Support Devices lumps together, and the findings CheXpert has no word for
CHEXPERT_UNKNOWN = [c for c in CLASSES if c not in CHEXPERT_COLUMNS.values()]


def mesh_term_classes(term):
    """One MeSH <major> entry ('Aorta, Thoracic/tortuous/mild') -> set of classes; {'other findings'}
    for a finding outside the 21 named classes; empty for 'normal' and the non-finding markers."""
    parts = [p.strip().lower() for p in term.split("/")]
    head, qualifiers = parts[0], set(parts[1:])
    if head in MESH_NON_FINDINGS:
        return set()
    if head in MESH_HEADINGS:
        return MESH_HEADINGS[head]
    if head == "cardiac shadow" and "enlarged" in qualifiers:
        return {"cardiomegaly"}
    if head in ("aorta", "aorta, thoracic") and qualifiers & {"tortuous", "enlarged", "prominent"}:
        return {"aortic elongation"}
    if head == "implanted medical device":
        # pacemakers and defibrillators unless the qualifier says valve or joint
        if any("valve" in q for q in qualifiers):
            return {"other findings"}  # PadChest 'artificial heart valve'
        if qualifiers & {"humerus", "shoulder", "spine", "thoracic vertebrae", "cervical vertebrae"}:
            return {"surgery"}  # PadChest 'prosthesis' / 'osteosynthesis material'
        return {"electrical device"}
    if head == "tube, inserted":
        # tracheal tubes and chest drains are their own PadChest terms; the rest are feeding tubes
        if qualifiers & {"trachea", "trachea, carina", "thorax"}:
            return {"other findings"}
        return {"nsg tube"}
    return {"other findings"}


def mesh_unlabeled(major_terms):
    """Whether the MeSH <major> entries of one report code nothing: no finding and not 'normal' ('No Indexing',
    'Technical Quality of Image Unsatisfactory', or no entry at all)."""
    return not any(t.strip().lower() == "normal" or mesh_term_classes(t) for t in major_terms)


def mesh_labels(major_terms):
    """MeSH <major> entries of one report -> int8 vector over CLASSES (1/0)."""
    row = np.zeros(len(CLASSES), dtype=np.int8)
    found = set()
    for term in major_terms:
        found |= mesh_term_classes(term)
        if term.strip().lower() == "normal":
            row[CLASSES.index("normal")] = 1
    named = found - {"other findings"}
    for c in named:
        row[CLASSES.index(c)] = 1
    # 'other findings' only for a report whose findings fall outside every other class
    if "other findings" in found and not row.any():
        row[CLASSES.index("other findings")] = 1
    return row


def iter_report_files(source):
    """(name, bytes) of every .xml report in a folder (recursively) or a .tgz/.tar archive; (name, OSError) for a
    file in a folder that cannot be read."""
    if os.path.isdir(source):
        for root, _, files in os.walk(source):
            for f in sorted(files):
                if f.lower().endswith(".xml"):
                    path = os.path.join(root, f)
                    try:
                        with open(path, "rb") as fh:
                            data = fh.read()
                    except OSError as e:  # one unreadable file is skipped and named, not the end of the folder
                        data = e
                    yield path, data
    elif os.path.isfile(source):
        try:
            with tarfile.open(source) as tar:
                for member in tar:
                    if member.isfile() and member.name.lower().endswith(".xml"):
                        yield f"{source}:{member.name}", tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise LabelFileError(f"{source}: not a readable tar archive (cut short or damaged?): {reason}") from None
    else:
        raise LabelFileError(f"{source}: no such folder or archive")


_EXTRA_PART = re.compile(r"^(CXR\d+)_\d+_(IM-.*)$")


def image_id(parent_image):
    """The manifest's ImageID for a parentImage id. Report 1 names its images CXR1_1_IM-0001-3001 while
    the DICOMs (and their metadata) are 1_IM-0001-3001.dcm, so the extra part is dropped."""
    return _EXTRA_PART.sub(r"\1_\2", parent_image)


def parse_report(data, name):
    """One report's XML -> dict(ReportID, findings, impression, major, images). Raises ET.ParseError."""
    root = ET.fromstring(data)
    uid = root.find("uId")
    report_id = uid.get("id") if uid is not None and uid.get("id") else None
    if not report_id:
        # fall back to the file number, the same id the uId carries
        report_id = "CXR" + re.sub(r"\.xml$", "", os.path.basename(name.split(":")[-1]), flags=re.I)
    sections = {}
    for node in root.iter("AbstractText"):
        sections[(node.get("Label") or "").upper()] = " ".join((node.text or "").split())
    mesh = root.find("MeSH")
    major = [" ".join((m.text or "").split()) for m in mesh.iter("major")] if mesh is not None else []
    images = [image_id(p.get("id")) for p in root.iter("parentImage") if p.get("id")]
    return {
        "ReportID": report_id,
        "findings": sections.get("FINDINGS", ""),
        "impression": sections.get("IMPRESSION", ""),
        "major": major,
        "images": images,
    }


def read_reports(source):
    """All reports, in file order -> (DataFrame one row per report, stats). Malformed XML is
    counted, named on stderr and skipped."""
    rows, malformed = [], []
    for name, data in tqdm(iter_report_files(source), desc="OpenI reports", unit="report", disable=None,
                           mininterval=0.5):
        if isinstance(data, OSError):
            malformed.append(name)
            log.warning("warning: %s: cannot read (%s), skipped", name, data.strerror or data)
            continue
        try:
            rows.append(parse_report(data, name))
        except ET.ParseError as e:
            malformed.append(name)
            log.warning("warning: %s: malformed XML, skipped (%s)", name, e)
    if not rows and not malformed:
        raise LabelFileError(f"{source}: no .xml reports found")
    reports = pd.DataFrame(rows, columns=["ReportID", "findings", "impression", "major", "images"])
    stats = {
        "reports": len(reports),
        "images": int(reports["images"].map(len).sum()) if len(reports) else 0,
        "reports_without_images": int((reports["images"].map(len) == 0).sum()) if len(reports) else 0,
        "malformed_xml": len(malformed),
        "malformed_files": malformed,
    }
    return reports, stats


def report_text(reports):
    """FINDINGS then IMPRESSION, the text a labeler reads, one string per report."""
    return (reports["findings"].fillna("") + " " + reports["impression"].fillna("")).str.strip()


def read_chexpert_csv(path, texts):
    """CheXpert-labeler output (Reports + 14 observations) -> (float array [len(texts), 22] of 1, 0, -1 and NaN for the
    classes CHEXPERT_UNKNOWN (and 'other findings' where a device is the only finding), aligned to texts by report text
    (rows are matched on whitespace-normalized text), bool array: no row or a row with all 14 blank, the number of
    texts without a row)."""
    frame = read_table(path, ["Reports", *CHEXPERT_COLUMNS], what="a CheXpert labeler output", dtype={"Reports": str})
    by_text = {}
    other, normal = CLASSES.index("other findings"), CLASSES.index("normal")
    unknown = [CLASSES.index(c) for c in CHEXPERT_UNKNOWN]
    for i in range(len(frame)):
        values = np.zeros(len(CLASSES))
        values[unknown] = np.nan
        blank, device = True, 0
        for obs, cls in CHEXPERT_COLUMNS.items():
            v = frame.at[i, obs]
            if pd.isna(v) or v == "":
                continue
            blank = False
            try:
                v = int(float(v))
            except ValueError:
                raise LabelFileError(f"{path}, row {i + 2}: {obs} is {v!r}, expected 1, 0, -1 or blank") from None
            if v not in (1, 0, -1):
                raise LabelFileError(f"{path}, row {i + 2}: {obs} is {v!r}, expected 1, 0, -1 or blank")
            if cls is None:
                device = v
                continue
            j = CLASSES.index(cls)
            # several observations feed 'other findings': positive beats uncertain beats negative
            if v == 1 or (v == -1 and values[j] != 1):
                values[j] = v
        if np.isin(values[NAMED], (1, -1)).any():
            values[other] = 0
        elif device and values[other] == 0:
            values[other] = np.nan  # the device may be one outside the classes (a tracheal tube, a drain, a valve)
        if device:
            values[normal] = 0  # CheXpert's No Finding ignores devices; every device is a finding of ours
        text = " ".join(str(frame.at[i, "Reports"]).split()) if not pd.isna(frame.at[i, "Reports"]) else ""
        by_text[text] = values, blank
    out = np.zeros((len(texts), len(CLASSES)))
    unlabeled = np.ones(len(texts), dtype=bool)
    unmatched = 0
    for i, t in enumerate(texts):
        found = by_text.get(" ".join(t.split()))
        if found is None:
            unmatched += 1
        else:
            out[i], unlabeled[i] = found
    return out, unlabeled, unmatched


def report_labels(reports, source="mesh", chexpert_csv=None):
    """Per-report labels from one label source: (array [n_reports, 22]: int8, or float with NaN for the classes the
    CheXpert source does not annotate, bool array [n_reports]: the source gives this report no label, stats)."""
    stats = {}
    if source == "mesh":
        values = np.stack([mesh_labels(m) for m in reports["major"]]) if len(reports) else \
            np.zeros((0, len(CLASSES)), np.int8)
        unlabeled = np.array([mesh_unlabeled(m) for m in reports["major"]], dtype=bool)
    elif source == "text":
        texts = report_text(reports)
        values = label_reports(texts.tolist())
        unlabeled = ~texts.map(has_words).to_numpy(dtype=bool)
    elif source == "chexpert":
        if not chexpert_csv:
            raise LabelFileError("--openi-labels chexpert needs --chexpert-csv")
        values, unlabeled, stats["chexpert_unmatched_reports"] = read_chexpert_csv(
            chexpert_csv, report_text(reports).tolist())
    else:
        raise ValueError(f"unknown OpenI label source {source!r}")
    stats["unlabeled_reports"] = int(unlabeled.sum())
    return values, unlabeled, stats


def openi_labels(reports_source, source="mesh", chexpert_csv=None):
    """OpenI reports (folder or .tgz) -> (labels DataFrame, one row per parentImage, reports, stats). The frame's last
    column, Unlabeled, is True where the source gives the study no label (stats["unlabeled_reports"] counts the
    reports); parselabelfile.py decides what becomes of them."""
    reports, stats = read_reports(reports_source)
    values, unlabeled, more = report_labels(reports, source, chexpert_csv)
    stats.update(more)
    index = np.repeat(np.arange(len(reports)), reports["images"].map(len).to_numpy())
    ids = reports["ReportID"].to_numpy()[index]
    out = pd.DataFrame({
        "ImageID": [i for imgs in reports["images"] for i in imgs],
        "PatientID": ids,
        "StudyID": ids,
        "Projection": "",
        "Source": "openi",
    })
    dup = out["ImageID"].duplicated()
    stats["duplicate_images"] = int(dup.sum())
    labels = pd.DataFrame(values[index], columns=CLASSES)
    labels["Unlabeled"] = unlabeled[index]
    out = pd.concat([out, labels], axis=1)[~dup.to_numpy()].reset_index(drop=True)
    return out, reports, stats


def evaluate_labeler(reports_source, labeler=label_reports):
    """A report labeler's text labels (by default the built-in one; `labeler` maps a list of texts to an array
    [n, 22] of 1, 0, -1) against the MeSH <major> labels people assigned -> dict:

    - "negative", "positive": rows of report_labeler.evaluate() with 'uncertain' counted as negative / as positive, on
      the reports that have both MeSH codes and words
    - "with_blank": the rows (uncertain as negative) with the reports that have codes but no words counted too, as a
      labeler reads them: all blank, so each code they carry is a false negative
    - "counts": reports, not_indexed (codes only 'No Indexing': no reference), scored, without_text (codes, no
      words) and without_text_codes ({class: reports} of their codes)
    - "rate": reports per second of the labeler on the scored reports"""
    reports, _ = read_reports(reports_source)
    texts = report_text(reports)
    # 'No Indexing' alone means the indexers coded nothing: no reference for those reports; a report without
    # words (28, all MeSH 'normal') gives a labeler nothing to read, so it is scored apart
    indexed = reports["major"].map(lambda m: any(t.strip().lower() != "no indexing" for t in m)).to_numpy(dtype=bool)
    words = texts.map(has_words).to_numpy(dtype=bool)
    reference, _, _ = report_labels(reports, "mesh")
    scored, blank = indexed & words, indexed & ~words
    t = time.perf_counter()
    predicted = np.asarray(labeler(texts[scored].tolist()))
    rate = int(scored.sum()) / (time.perf_counter() - t)
    with_blank = np.concatenate([predicted, np.zeros((int(blank.sum()), len(CLASSES)), predicted.dtype)])
    counts = {"reports": len(reports), "not_indexed": int((~indexed).sum()), "scored": int(scored.sum()),
              "without_text": int(blank.sum()),
              "without_text_codes": {c: int(n) for c, n in zip(CLASSES, reference[blank].sum(axis=0)) if n}}
    return {"negative": evaluate(predicted, reference[scored]),
            "positive": evaluate(predicted, reference[scored], uncertain_positive=True),
            "with_blank": evaluate(with_blank, np.concatenate([reference[scored], reference[blank]])),
            "counts": counts, "rate": rate}


def main(argv=None):
    parser = Parser(prog="python -m data.labels.openi",
                    description="Score the built-in report labeler (data/labels/report_labeler.py) against OpenI's "
                                "MeSH <major> codes: precision, recall and F1 per class, with 'uncertain' counted as "
                                "negative and as positive, and what the reports without text would cost.")
    parser.add_argument("--evaluate-labeler", metavar="DIR_OR_TGZ", required=True,
                        help="OpenI reports: the ecgen-radiology folder or NLMCXR_reports.tgz")
    return run_main(parser.prog, parser.parse_args, print_labeler_scores, argv)


def without_text_summary(scores):
    """One paragraph: how many reports were scored, how many have no text and what counting them would change."""
    c = scores["counts"]
    codes = ", ".join(f"{c_} {n:,}" for c_, n in c["without_text_codes"].items()) or "none"
    normal = CLASSES.index("normal")
    overall = len(CLASSES)  # the row after the classes: micro over the 22
    neg, blank = scores["negative"], scores["with_blank"]
    return (f"{c['reports']:,} reports: {c['not_indexed']:,} coded only 'No Indexing' (no reference) are left out; "
            f"{c['scored']:,} with codes and text are scored above; {c['without_text']:,} have codes but no FINDINGS "
            f"or IMPRESSION text (their codes: {codes}) and are left out of the tables, since a labeler reads nothing "
            f"there (all blank).\nCounted as blank (uncertain as negative): normal recall "
            f"{neg[normal]['recall']:.3f} -> {blank[normal]['recall']:.3f}, F1 {neg[normal]['f1']:.3f} -> "
            f"{blank[normal]['f1']:.3f}; overall F1 {neg[overall]['f1']:.3f} -> {blank[overall]['f1']:.3f}.")


def print_labeler_scores(args):
    """The built-in labeler's scores on --evaluate-labeler's reports, printed."""
    scores = evaluate_labeler(args.evaluate_labeler)
    for mode in ("negative", "positive"):
        print(f"uncertain counted as {mode}\n{format_table(scores[mode])}\n")
    print(without_text_summary(scores))
    print(f"labeled at {scores['rate']:,.0f} reports/s")


if __name__ == "__main__":
    sys.exit(main())
