"""Step 3: per-source labels + image manifests -> combined.csv with a patient-level train/val/test split.

    python combinelabels.py --labels labels/ --manifest work/manifest.csv --out combined.csv
    python combinelabels.py --labels labels/ --manifest work/ --out combined.csv \\
        --test-boxes BBox_List_2017.csv.gz [--nih-test-list test_list.txt]

--manifest takes one manifest or several (repeat the flag, or a comma list), or a folder: its manifest.csv and each
shard-K/manifest.csv in it (download_images.py --shard auto writes OUT/shard-K/). Image paths are taken relative to
each manifest's own folder. An ImageID in two manifests is an error naming both: shards never overlap, so that is two
runs over the same images. Only images in the manifests are kept (the rest are counted).

Every image of a patient lands in the same split (OpenI has no patient ids: each report is its own patient; NIH's
are 'nih-<Patient ID>'); the split stratifies the 22 classes and the source over patients (scikit-multilearn's
iterative stratification). --test-boxes puts the patients of every image of a box list (NIH's BBox_List_2017) in
test, so no box image is ever trained on; --nih-test-list puts exactly the patients of the listed NIH images in test
and every other NIH patient in train or val (train:val as the fractions' train:val). Forced patients count
towards test's share and labels, so the free patients fill the splits around them.

Class values in combined.csv: 1 positive, 0 negative, -1 uncertain (only with --uncertain ignore), and a BLANK cell
for unknown: a class the image's source never annotates (NIH: aortic elongation, catheter, copd signs, electrical
device, heart insufficiency, nsg tube, surgery, thoracic cage deformation, tuberculosis). --uncertain acts on -1
only; a blank is never made 0, 1 or -1. Training and evaluation leave a blank out of every loss and metric, as they
leave out -1; the split counts it as not positive. With nih_google_labels.csv in --labels (parselabelfile.py
--nih-google-labels), combined.csv ends with google_fracture, google_pneumothorax, google_airspace_opacity and
google_nodule_or_mass: Google's radiologist labels, 1 or 0, blank for images Google did not relabel.

combined.csv also keeps each image's view (PadChest's and NIH's Projection, else step 1's view from the DICOM
header; blank where unknown) and PadChest's MethodLabel (Physician or RNN_model). It is written whole or not at all,
with its row count beside it (combined.csv.rows) so that a reader notices a file cut short.
"""

import argparse
import sys
import time

from data.commands import Parser, run_main
from data.files import output_file, write_csv
from data.labels.combine import check_fractions, combine, missing_shards, positives_table
from data.labels.nih import read_test_list

PROG = "combinelabels.py"


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="folder with padchest_labels.csv, openi_labels.csv and/or "
                                                   "nih_labels.csv (parselabelfile.py's --out)")
    p.add_argument("--manifest", required=True, action="append",
                   help="manifest.csv written by download_images.py, or a folder holding manifest.csv or "
                        "shard-K/manifest.csv; repeat the flag or give a comma list for several")
    p.add_argument("--out", required=True, help="combined CSV to write (its folder is created if needed)")
    p.add_argument("--uncertain", choices=["zeros", "ones", "ignore"], default="zeros",
                   help="uncertain (-1) labels become 0 (zeros, default), 1 (ones) or stay -1 (ignore: "
                        "masked out of the loss); unknown (blank) labels stay blank with every choice")
    p.add_argument("--test-boxes", metavar="CSV",
                   help="a box list (NIH's BBox_List_2017.csv, plain or .gz): the patients of its images (found in "
                        "the label files, so a box image missing from the manifest still sends its patient) all go "
                        "to test; box rows whose image is not in the manifest are counted")
    p.add_argument("--nih-test-list", metavar="TXT",
                   help="NIH's official test_list.txt (one image name a line): exactly the patients of these NIH "
                        "images go to test, the other NIH patients to train and val (in the ratio of the train "
                        "and val fractions); with --test-boxes too, the box images' patients join them")
    p.add_argument("--val-frac", type=float, default=0.1, help="share of patients in val (default %(default)s)")
    p.add_argument("--test-frac", type=float, default=0.1, help="share of patients in test (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the split (default %(default)s)")
    return p.parse_args(argv)


def box_images(path):
    """The image of every row of a box list, read as step 4 reads it (so both steps accept the same files)."""
    if path is None:
        return None
    from data.labels.boxes import read_box_csv  # here: only this flag reads a box list
    return read_box_csv(path)["ImageID"].tolist()


def forced_lines(stats):
    lines = []
    if "nih_test_list" in stats:
        s = stats["nih_test_list"]
        lines.append(f"--nih-test-list: {s['names']} names; their {s['patients']} NIH patients in test ({s['images']} "
                     f"images), every other NIH patient in train or val; {s['not_in_manifest']} names not in the "
                     f"manifest, {s['not_labelled']} not in the label files" + _first(s))
    if "test_boxes" in stats:
        s = stats["test_boxes"]
        lines.append(f"--test-boxes: {s['rows']} box rows on {s['names']} images of {s['patients']} patients; all "
                     f"{s['images']} images of these patients in test; {s['rows_not_in_manifest']} box rows "
                     f"({s['not_in_manifest']} images) not in the manifest, {s['not_labelled']} images not in the "
                     f"label files" + _first(s))
    return lines


def _first(s):
    return f" (first not in the manifest: {', '.join(s['first_not_in_manifest'])})" if s["not_in_manifest"] else ""


def run(args):
    start = time.perf_counter()
    check_fractions(args.val_frac, args.test_frac)
    output_file(args.out)
    test_list = read_test_list(args.nih_test_list) if args.nih_test_list else None
    frame, stats = combine(args.labels, args.manifest, args.uncertain, args.val_frac, args.test_frac, args.seed,
                           nih_test_images=test_list, test_images=box_images(args.test_boxes))
    write_csv(frame, args.out, index=False)
    if len(stats["manifests"]) > 1:
        print(f"manifests: {len(stats['manifests'])} ({', '.join(stats['manifests'][:3])}"
              f"{', ...' if len(stats['manifests']) > 3 else ''})")
    for parent, gaps in missing_shards(stats["manifests"]).items():
        print(f"warning: {parent} has no shard-{', shard-'.join(map(str, gaps))}: were all shards run?")
    if stats["missing_images"]:
        print(f"labeled images not in the manifest (skipped): {stats['missing_images']}")
    if stats["unlabeled_images"]:
        print(f"manifest images without labels (skipped; e.g. PadChest 'exclude' rows): {stats['unlabeled_images']}")
    if stats["all_uncertain"] and args.uncertain != "ignore":
        print(f"warning: {stats['all_uncertain']} images of studies without a usable label have every class -1; "
              f"--uncertain {args.uncertain} makes them all {0 if args.uncertain == 'zeros' else 1} "
              f"(--uncertain ignore keeps them out of the loss)")
    for source, classes in stats["unknown"].items():
        print(f"{source}: {len(classes)} classes never annotated, blank (unknown) in {args.out}, left out of loss "
              f"and metrics: {', '.join(classes)}")
    for line in forced_lines(stats):
        print(line)
    if "google" in stats:
        g = stats["google"]
        print(f"Google's NIH labels: {g['images']} images given google_* columns, by split {g['splits']}; "
              f"{g['not_combined']} of its {g['rows']} images not combined")
    if len(frame):
        views = frame["view"].replace("", "unknown").value_counts().to_dict()
        print(f"views: {views}; PadChest images labelled by physicians: {(frame['MethodLabel'] == 'Physician').sum()}")
    if stats["duplicate_label_rows"]:
        print(f"duplicate ImageIDs in the label files (first kept): {stats['duplicate_label_rows']}")
    if len(frame):
        print("positives per class per source and split:")
        print(positives_table(frame).to_string())
    splits = frame["split"].value_counts().to_dict()
    print(f"done: {len(frame)} images of {stats['patients']} patients, split {splits}, "
          f"uncertain -> {args.uncertain}, in {time.perf_counter() - start:.1f} s -> {args.out}")


def main(argv=None):
    return run_main(PROG, parse_args, run, argv,
                    interrupted=lambda args: f"{args.out} was left as it was before this run")


if __name__ == "__main__":
    sys.exit(main())
