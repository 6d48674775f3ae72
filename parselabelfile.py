r"""Step 2: PadChest label CSV + taxonomy and OpenI XML reports -> per-source label CSVs for the 22 classes.

    python parselabelfile.py --padchest-csv PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz \
        --openi-reports NLMCXR_reports.tgz --out labels/

Writes labels/padchest_labels.csv and labels/openi_labels.csv (ImageID, PatientID, StudyID, Projection,
Source, then the 22 classes: 1 positive, 0 negative or not mentioned, -1 uncertain), and
labels/openi_reports.csv (one report per row, no header: the input of the CheXpert labeler or of
`python -m data.labels.report_labeler`).
"""

import argparse
import logging
import os
import sys


from data.classes import CLASSES
from data.errors import InputError
from data.labels.openi import openi_labels, report_text
from data.labels.padchest import TAXONOMY, VIEWS, padchest_labels


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--padchest-csv", help="PadChest label CSV (PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv, "
                                          "plain or .gz); leave out to skip PadChest")
    p.add_argument("--openi-reports", help="OpenI reports: the ecgen-radiology folder of XML files or "
                                           "NLMCXR_reports.tgz; leave out to skip OpenI")
    p.add_argument("--out", required=True, help="output folder for padchest_labels.csv, openi_labels.csv, "
                                                "openi_reports.csv")
    p.add_argument("--taxonomy", default=TAXONOMY, help="PadChest term hierarchy (tree_term_CUI_counts_160K.csv); "
                                                       "default: the copy shipped in data/labels/padchest_tree.csv")
    p.add_argument("--openi-labels", choices=["mesh", "text", "chexpert"], default="mesh",
                   help="OpenI label source: mesh = the MeSH <major> terms people assigned (default), "
                        "text = the built-in report labeler, chexpert = a CheXpert labeler output CSV")
    p.add_argument("--chexpert-csv", help="CheXpert labeler output for openi_reports.csv "
                                          "(needed with --openi-labels chexpert)")
    p.add_argument("--views", default=",".join(VIEWS),
                   help="PadChest projections to keep, comma-separated (default: %(default)s; "
                        "'all' keeps every projection, including COSTAL and UNK)")
    args = p.parse_args(argv)
    if not args.padchest_csv and not args.openi_reports:
        p.error("give --padchest-csv and/or --openi-reports")
    if args.openi_labels == "chexpert" and not args.chexpert_csv:
        p.error("--openi-labels chexpert needs --chexpert-csv")
    return args


def counts_line(frame):
    positives = (frame[CLASSES] == 1).sum()
    uncertain = (frame[CLASSES] == -1).sum()
    return "\n".join(f"  {c:28s} {positives[c]:7d}" + (f"  (+{uncertain[c]} uncertain)" if uncertain[c] else "")
                     for c in CLASSES)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")  # the label modules' warnings (a malformed report) on stderr
    views = None if args.views.strip().lower() == "all" else [v.strip() for v in args.views.split(",") if v.strip()]
    os.makedirs(args.out, exist_ok=True)
    summary = []
    try:
        if args.padchest_csv:
            frame, stats = padchest_labels(args.padchest_csv, args.taxonomy, views)
            path = os.path.join(args.out, "padchest_labels.csv")
            frame.to_csv(path, index=False)
            dropped = {k[len("dropped_"):]: v for k, v in stats.items() if k.startswith("dropped_")}
            print(f"PadChest: {stats['rows']} rows, {stats['kept']} images kept, dropped {dropped}")
            if stats["unknown_terms"]:
                n = sum(stats["unknown_terms"].values())
                print(f"PadChest: {n} labels with terms not in the taxonomy (counted as findings): "
                      f"{stats['unknown_terms']}")
            print("PadChest positives per class:\n" + counts_line(frame))
            summary.append(f"{len(frame)} PadChest images -> {path}")
        if args.openi_reports:
            frame, reports, stats = openi_labels(args.openi_reports, args.openi_labels, args.chexpert_csv)
            path = os.path.join(args.out, "openi_labels.csv")
            frame.to_csv(path, index=False)
            report_text(reports).to_frame().to_csv(os.path.join(args.out, "openi_reports.csv"),
                                                   index=False, header=False)
            print(f"OpenI: {stats['reports']} reports, {stats['images']} images, "
                  f"{stats['reports_without_images']} reports without images, "
                  f"{stats['malformed_xml']} malformed XML files skipped")
            if stats.get("chexpert_unmatched_reports"):
                print(f"OpenI: {stats['chexpert_unmatched_reports']} reports not found in {args.chexpert_csv} "
                      f"(left all 0)")
            print(f"OpenI positives per class ({args.openi_labels} labels):\n" + counts_line(frame))
            summary.append(f"{len(frame)} OpenI images ({args.openi_labels} labels) -> {path}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("done: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
