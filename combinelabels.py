"""Step 3: per-source labels + image manifest -> combined.csv with a patient-level train/val/test split.

    python combinelabels.py --labels labels/ --manifest work/manifest.csv --out combined.csv

Only images in the manifest are kept (the rest are counted). Every image of a patient lands in the same
split (OpenI has no patient ids: each report is its own patient); the split stratifies the 22 classes and
the source over patients (scikit-multilearn's iterative stratification). combined.csv keeps each image's view
(PadChest's Projection; blank where unknown) and PadChest's MethodLabel (Physician or RNN_model). It is written
whole or not at all, with its row count beside it (combined.csv.rows) so that a reader notices a file cut short.
"""

import argparse
import signal
import sys
import time

from data.errors import InputError
from data.files import output_file, write_csv
from data.labels.combine import check_fractions, combine, positives_table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="folder with padchest_labels.csv and/or openi_labels.csv "
                                                   "(parselabelfile.py's --out)")
    p.add_argument("--manifest", required=True, help="manifest.csv written by download_images.py")
    p.add_argument("--out", required=True, help="combined CSV to write (its folder is created if needed)")
    p.add_argument("--uncertain", choices=["zeros", "ones", "ignore"], default="zeros",
                   help="uncertain (-1) labels become 0 (zeros, default), 1 (ones) or stay -1 (ignore: "
                        "masked out of the loss)")
    p.add_argument("--val-frac", type=float, default=0.1, help="share of patients in val (default %(default)s)")
    p.add_argument("--test-frac", type=float, default=0.1, help="share of patients in test (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the split (default %(default)s)")
    return p.parse_args(argv)


def stop_on_sigterm(*_):
    raise KeyboardInterrupt  # so the atomic write cleans up its temporary file


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        check_fractions(args.val_frac, args.test_frac)
        output_file(args.out)
        frame, stats = combine(args.labels, args.manifest, args.uncertain, args.val_frac, args.test_frac, args.seed)
        write_csv(frame, args.out, index=False)
    except InputError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} was left as it was before this run", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stats["missing_images"]:
        print(f"labeled images not in the manifest (skipped): {stats['missing_images']}")
    if stats["unlabeled_images"]:
        print(f"manifest images without labels (skipped; e.g. PadChest 'exclude' rows): {stats['unlabeled_images']}")
    if stats["all_uncertain"] and args.uncertain != "ignore":
        print(f"warning: {stats['all_uncertain']} images of studies without a usable label have every class -1; "
              f"--uncertain {args.uncertain} makes them all {0 if args.uncertain == 'zeros' else 1} "
              f"(--uncertain ignore keeps them out of the loss)")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
