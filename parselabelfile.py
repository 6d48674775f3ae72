r"""Step 2: PadChest label CSV + taxonomy, OpenI XML reports and NIH ChestX-ray14's Data_Entry CSV -> per-source label
CSVs for the 22 classes.

    python parselabelfile.py --padchest-csv PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz \
        --openi-reports NLMCXR_reports.tgz --nih-csv Data_Entry_2017_v2020.csv.gz --out labels/

Writes labels/padchest_labels.csv, labels/openi_labels.csv and labels/nih_labels.csv (ImageID, PatientID, StudyID,
Projection, Source, MethodLabel, then the 22 classes: 1 positive, 0 negative or not mentioned, -1 uncertain, blank
unknown: a class the source never annotates, as NIH never annotates devices, tubes, surgery and six more), and
labels/openi_reports.csv (one report per row, no header: the input of the CheXpert labeler or of
`python -m data.labels.report_labeler`). Each CSV is written whole or not at all, with its row count beside it
(NAME.rows) so that step 3 notices a file cut short.

NIH's 14 findings map onto the classes as data/labels/nih.py says (Consolidation -> infiltrates, Pleural_Thickening
and Hernia -> other findings, No Finding -> normal); NIH PatientIDs are written 'nih-<Patient ID>'. With
--nih-google-labels, labels/nih_google_labels.csv holds Google's 2019 radiologist labels of 4 findings on 4,376 NIH
images (google_fracture, google_pneumothorax, google_airspace_opacity, google_nodule_or_mass: 1 or 0), which step 3
adds to combined.csv as columns of their own.

Every source follows one rule (data/labels/rules.py): consolidation is 'infiltrates'; 'other findings' is 1 only
when something abnormal is present and none of the 20 named findings is 1 or -1; 'normal' is 1 only when no other
class is 1 or -1. Studies without a usable label (PadChest 'unchanged' or 'suboptimal study' alone, OpenI reports
the label source marks unlabeled) are dropped and counted, or kept as all -1 with --unlabeled keep-uncertain.
"""

import argparse
import logging
import os
import sys

from data.classes import CLASSES
from data.commands import Parser, run_main
from data.errors import InputError
from data.files import output_folder, write_csv
from data.labels.openi import openi_labels, report_text
from data.labels.nih import google_labels, nih_labels
from data.labels.padchest import PROJECTIONS, TAXONOMY, padchest_labels
from data.labels.rules import UNLABELED_POLICIES, finish
from data.views import DEFAULT_VIEWS, parse_views
from utils.cli import checked

PROG = "parselabelfile.py"


def padchest_views(text):
    """--views: PadChest Projection names (in any case), frontal, lateral, or 'all' (None)."""
    return parse_views(text, PROJECTIONS, "a PadChest projection")


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--padchest-csv", help="PadChest label CSV (PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv, "
                                          "plain or .gz); leave out to skip PadChest")
    p.add_argument("--openi-reports", help="OpenI reports: the ecgen-radiology folder of XML files or "
                                           "NLMCXR_reports.tgz; leave out to skip OpenI")
    p.add_argument("--nih-csv", help="NIH ChestX-ray14's Data_Entry_2017_v2020.csv (plain or .gz); leave out to skip "
                                      "NIH")
    p.add_argument("--nih-google-labels", help="Google's 2019 relabelling of NIH images "
                                               "(google2019_nih-chest-xray-labels.csv, plain or .gz): "
                                               "nih_google_labels.csv, a stricter label set for its 4 findings")
    p.add_argument("--out", required=True, help="output folder for padchest_labels.csv, openi_labels.csv, "
                                                "openi_reports.csv, nih_labels.csv (created if needed)")
    p.add_argument("--taxonomy", default=TAXONOMY, help="PadChest term hierarchy (tree_term_CUI_counts_160K.csv); "
                                                       "default: the copy shipped in data/labels/padchest_tree.csv")
    p.add_argument("--openi-labels", choices=["mesh", "text", "chexpert"], default="mesh",
                   help="OpenI label source: mesh = the MeSH <major> terms people assigned (default), "
                        "text = the built-in report labeler, chexpert = a CheXpert labeler output CSV")
    p.add_argument("--chexpert-csv", help="CheXpert labeler output for openi_reports.csv (needed with --openi-labels "
                                          "chexpert); Fracture counts as other findings, and the classes no "
                                          "observation names (Support Devices names none) are left blank = unknown")
    p.add_argument("--views", type=checked(padchest_views), default="frontal",
                   help=f"PadChest projections to keep, comma-separated, from {', '.join(PROJECTIONS)}, or frontal "
                        f"or lateral for those of the kind (default: frontal, the views {','.join(DEFAULT_VIEWS)}; "
                        f"'all' keeps every projection); the images of other projections are dropped and counted")
    p.add_argument("--unlabeled", choices=UNLABELED_POLICIES, default="drop",
                   help="studies without a usable label (PadChest 'unchanged' or 'suboptimal study' alone, OpenI "
                        "reports marked unlabeled): drop them (default; counted), or keep-uncertain: keep them with "
                        "all 22 classes -1 (then use combinelabels.py --uncertain ignore, or they become "
                        "all-negative there)")
    args = p.parse_args(argv)
    if not (args.padchest_csv or args.openi_reports or args.nih_csv or args.nih_google_labels):
        p.error("give one or more of --padchest-csv, --openi-reports, --nih-csv")
    if args.openi_labels == "chexpert" and not args.chexpert_csv:
        p.error("--openi-labels chexpert needs --chexpert-csv")
    return args


def counts_line(frame):
    positives = (frame[CLASSES] == 1).sum()
    uncertain = (frame[CLASSES] == -1).sum()
    unknown = frame[CLASSES].isna().sum()

    def line(c):
        if len(frame) and unknown[c] == len(frame):
            return f"  {c:28s} {'unknown':>7s}  (never annotated: blank, left out of loss and metrics)"
        return f"  {c:28s} {positives[c]:7d}" + (f"  (+{uncertain[c]} uncertain)" if uncertain[c] else "") + \
            (f"  (+{unknown[c]} unknown)" if unknown[c] else "")
    return "\n".join(line(c) for c in CLASSES)


def rules_line(name, counts, policy):
    kept = "kept as all -1" if policy == "keep-uncertain" else "dropped"
    return (f"{name}: {counts['unlabeled']} images of studies without a usable label {kept}; rules: 'normal' set to 0 "
            f"on {counts['normal_cleared']} images with another finding, 'other findings' set to 0 on "
            f"{counts['other_cleared']} images with a named finding")


def parse_padchest(args):
    frame, stats = padchest_labels(args.padchest_csv, args.taxonomy, args.views)
    frame, counts = finish(frame, args.unlabeled)
    path = os.path.join(args.out, "padchest_labels.csv")
    write_csv(frame, path, index=False)
    if stats["encoding"] != "utf-8":
        print(f"PadChest: {args.padchest_csv} is not UTF-8; read it as {stats['encoding']}")
    views = {k[len("dropped_view_"):]: v for k, v in stats.items() if k.startswith("dropped_view_")}
    print(f"PadChest: {stats['rows']} rows, {len(frame)} images kept; dropped: {sum(views.values())} of other "
          f"views {views}, {stats.get('dropped_exclude', 0)} 'exclude', {stats.get('dropped_no_labels', 0)} without "
          f"labels" + (f", {counts['unlabeled']} unlabeled ('unchanged' or 'suboptimal study' alone)"
                       if args.unlabeled == "drop" else ""))
    print(rules_line("PadChest", counts, args.unlabeled))
    print(f"PadChest: {(frame['MethodLabel'] == 'Physician').sum()} of the images kept labelled by physicians")
    if stats["unknown_terms"]:
        n = sum(stats["unknown_terms"].values())
        print(f"PadChest: {n} labels with terms not in the taxonomy (counted as findings): {stats['unknown_terms']}")
    print("PadChest positives per class:\n" + counts_line(frame))
    return f"{len(frame)} PadChest images -> {path}" + \
        (f" ({counts['unlabeled']} unlabeled dropped)" if args.unlabeled == "drop" else "")


def parse_openi(args):
    try:
        frame, reports, stats = openi_labels(args.openi_reports, args.openi_labels, args.chexpert_csv)
    except OSError as e:
        # a file that cannot be read; the label module names its own input errors (a damaged archive included)
        where = getattr(e, "filename", None)
        raise InputError(f"--openi-reports {args.openi_reports}: cannot read" + (f" {where}" if where else "") +
                         f": {getattr(e, 'strerror', None) or e}") from None
    frame, counts = finish(frame, args.unlabeled)
    path = os.path.join(args.out, "openi_labels.csv")
    write_csv(frame, path, index=False)
    write_csv(report_text(reports).to_frame(), os.path.join(args.out, "openi_reports.csv"), index=False, header=False)
    print(f"OpenI: {stats['reports']} reports, {stats['images']} images, "
          f"{stats['reports_without_images']} reports without images, "
          f"{stats['malformed_xml']} malformed or unreadable XML files skipped"
          + (f" ({', '.join(stats['malformed_files'][:5])}{', ...' if stats['malformed_xml'] > 5 else ''})"
             if stats["malformed_xml"] else ""))
    print(rules_line("OpenI", counts, args.unlabeled))
    if stats.get("chexpert_unmatched_reports"):
        print(f"OpenI: {stats['chexpert_unmatched_reports']} reports not found in {args.chexpert_csv} "
              f"(left all 0)")
    print(f"OpenI positives per class ({args.openi_labels} labels):\n" + counts_line(frame))
    return f"{len(frame)} OpenI images ({args.openi_labels} labels) -> {path}" + \
        (f" ({counts['unlabeled']} unlabeled dropped)" if args.unlabeled == "drop" else "")


def parse_nih(args):
    frame, stats = nih_labels(args.nih_csv)
    frame, counts = finish(frame, args.unlabeled)
    path = os.path.join(args.out, "nih_labels.csv")
    write_csv(frame, path, index=False)
    unknown = [c for c in CLASSES if frame[c].isna().all()] if len(frame) else []
    print(f"NIH: {stats['rows']} rows, {len(frame)} images of {stats['patients']} patients, views {stats['views']}; "
          f"{len(unknown)} classes NIH never annotates are blank (unknown, not negative): {', '.join(unknown)}")
    print(rules_line("NIH", counts, args.unlabeled))
    print("NIH positives per class:\n" + counts_line(frame))
    return f"{len(frame)} NIH images of {stats['patients']} patients -> {path}"


def parse_google(args):
    frame, stats = google_labels(args.nih_google_labels)
    path = os.path.join(args.out, "nih_google_labels.csv")
    write_csv(frame, path, index=False)
    positives = ", ".join(f"{c} {int(frame[c].sum())}" for c in frame.columns[1:])
    print(f"NIH Google labels: {len(frame)} images ({stats['sets']}), positives: {positives}")
    return f"{len(frame)} Google-relabelled NIH images -> {path}"


def check_inputs(args):
    """Every input named on the command line exists, before a minute is spent on the first one."""
    for flag, path in (("--padchest-csv", args.padchest_csv), ("--taxonomy", args.padchest_csv and args.taxonomy),
                       ("--openi-reports", args.openi_reports), ("--chexpert-csv", args.chexpert_csv),
                       ("--nih-csv", args.nih_csv), ("--nih-google-labels", args.nih_google_labels)):
        if path and not os.path.exists(path):
            raise InputError(f"{flag} {path}: no such file or folder")
        if path and flag != "--openi-reports" and os.path.isdir(path):
            raise InputError(f"{flag} {path}: is a folder, not a file")


def run(args):
    logging.basicConfig(format="%(message)s")  # the label modules' warnings (a malformed report) on stderr
    check_inputs(args)
    output_folder(args.out)
    summary = []
    if args.padchest_csv:
        summary.append(parse_padchest(args))
    if args.openi_reports:
        summary.append(parse_openi(args))
    if args.nih_csv:
        summary.append(parse_nih(args))
    if args.nih_google_labels:
        summary.append(parse_google(args))
    print("done: " + "; ".join(summary))


def main(argv=None):
    return run_main(PROG, parse_args, run, argv,
                    interrupted=lambda args: "the CSV being written was left as it was before this run")


if __name__ == "__main__":
    sys.exit(main())
