"""Compare two runs on the same test images: is B's AUROC different from A's, per class and for the headline?

    python -m utils.compare RUN_A RUN_B [--out DIR]

Reads each run's predictions.csv (its probabilities and the true labels it was scored against), checks that both hold
the same images with the same labels, and writes DIR/compare.csv: per class the two AUROCs, their difference (B - A)
with a paired patient-bootstrap 95% interval (both runs scored on the same resamples, all of a patient's images
together) and DeLong's p-value (fast DeLong of Sun and Xu 2014); then the macro AUROC over the findings, with its paired
interval. DIR defaults to RUN_B/compare/<name of RUN_A>; report.html of RUN_B shows it as a section.
"""
import math
import os
import sys

import numpy as np
import pandas as pd

from data.classes import CLASSES, FINDINGS
from data.commands import Parser, run_main
from data.errors import InputError
from data.files import atomic_path, read_table
from utils.metrics import auroc
from utils.run_folder import COMPARE_CSV, COMPARE_DIR, PREDICTIONS_CSV
from utils.stats import bootstrap_aurocs, delong_test, macro_samples, percentile_interval


def run_predictions(run):
    """(path, frame) of a run folder's predictions.csv (or of a predictions CSV given directly)."""
    path = os.path.join(run, PREDICTIONS_CSV) if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise InputError(f"{run}: no {PREDICTIONS_CSV} (a traintest.py run folder with a test split holds one)")
    frame = read_table(path, ["ImageID", *(f"prob_{c}" for c in CLASSES)], what="a predictions.csv",
                       dtype={"ImageID": str, "PatientID": str})
    if not all(f"true_{c}" in frame.columns for c in CLASSES):
        raise InputError(f"{path} has no true_<class> columns (written by an older version: rerun the run with "
                         "--test-only to rewrite it)")
    if frame["ImageID"].duplicated().any():
        raise InputError(f"{path}: ImageID {frame['ImageID'][frame['ImageID'].duplicated()].iloc[0]!r} twice")
    return path, frame


def paired_frames(run_a, run_b):
    """The two predictions frames in the same image order; InputError when their images or labels differ."""
    (path_a, a), (path_b, b) = run_predictions(run_a), run_predictions(run_b)
    only_a, only_b = set(a["ImageID"]) - set(b["ImageID"]), set(b["ImageID"]) - set(a["ImageID"])
    if only_a or only_b:
        example = sorted(only_a or only_b)[0]
        raise InputError(f"the two runs' test images differ: {len(only_a)} only in {path_a}, {len(only_b)} only in "
                         f"{path_b} (e.g. {example!r}); compare needs the same test split")
    b = b.set_index("ImageID").loc[a["ImageID"]].reset_index()
    # a class that one of them does not predict (a published model's NA: no probabilities, true labels -1) is left
    # out of the comparison, and of this check
    truth = [f"true_{c}" for c, both in zip(CLASSES, scored_by_both(a, b)) if both]
    differs = (a[truth].to_numpy() != b[truth].to_numpy()).any(axis=1)
    if differs.any():
        raise InputError(f"{int(differs.sum())} images have different true labels in {path_a} and {path_b} "
                         f"(e.g. {a['ImageID'][differs].iloc[0]!r}); were they scored against the same CSV?")
    return a, b


def scored_by_both(a, b):
    """Boolean per class: both runs predict it (some probability is there in each)."""
    return [a[f"prob_{c}"].notna().any() and b[f"prob_{c}"].notna().any() for c in CLASSES]


def compare_table(a, b, n_boot=1000, seed=0):
    """compare.csv and a note on the resampling unit. A class one of the runs does not predict has no AUROCs and stays
    out of the macro."""
    labels = a[[f"true_{c}" for c in CLASSES]].to_numpy()
    labels = np.where(scored_by_both(a, b), labels, -1)
    prob_a = a[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)
    prob_b = b[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)
    groups = a["PatientID"] if "PatientID" in a.columns and a["PatientID"].notna().all() else None
    unit = "patients" if groups is not None else "images (predictions.csv has no PatientID: intervals are too narrow " \
                                                  "where patients have several images)"
    boot_a = bootstrap_aurocs(labels, prob_a, groups, n_boot, seed)
    boot_b = bootstrap_aurocs(labels, prob_b, groups, n_boot, seed)  # the same seed: the same resamples, paired
    rows = []
    for c, name in enumerate(CLASSES):
        keep = labels[:, c] >= 0
        y = labels[keep, c]
        auc_a, auc_b, p_value = delong_test(y, prob_a[keep, c], prob_b[keep, c]) if keep.any() else (math.nan,) * 3
        low, high = percentile_interval(boot_b[:, c] - boot_a[:, c]) if not math.isnan(auc_a) else (math.nan,) * 2
        rows.append({"class": name, "positives": int((y == 1).sum()), "negatives": int((y == 0).sum()),
                     "auroc_a": auc_a, "auroc_b": auc_b, "difference": auc_b - auc_a,
                     "difference_low": low, "difference_high": high, "delong_p": p_value})
    table = pd.DataFrame(rows)
    columns = [CLASSES.index(c) for c in FINDINGS if not math.isnan(auroc(labels[:, CLASSES.index(c)],
                                                                            prob_a[:, CLASSES.index(c)]))]
    macro_a = float(np.mean([table.at[c, "auroc_a"] for c in columns])) if columns else math.nan
    macro_b = float(np.mean([table.at[c, "auroc_b"] for c in columns])) if columns else math.nan
    low, high = percentile_interval(macro_samples(boot_b, columns) - macro_samples(boot_a, columns))
    macro = {"class": "macro", "positives": int(table.positives.iloc[columns].sum()),
             "negatives": int(table.negatives.iloc[columns].sum()), "auroc_a": macro_a, "auroc_b": macro_b,
             "difference": macro_b - macro_a, "difference_low": low, "difference_high": high, "delong_p": math.nan}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True), unit, len(columns)


def summary(table, n_findings):
    macro = table.iloc[-1]
    significant = table[(table["delong_p"] < 0.05) & table["class"].isin(CLASSES)]
    names = ", ".join(f"{r['class']} {r['difference']:+.3f} (p={r['delong_p']:.3g})" for _, r in significant.iterrows())
    return (f"macro AUROC over {n_findings} findings: A {macro['auroc_a']:.4f}, B {macro['auroc_b']:.4f}, "
            f"B - A {macro['difference']:+.4f} (95% CI {macro['difference_low']:+.4f} to {macro['difference_high']:+.4f})"
            f" | DeLong p < 0.05: {names or 'none'}")


def main(argv=None):
    parser = Parser(prog="python -m utils.compare", description=__doc__.split("\n\n")[0],
                    epilog="Exit status 2 on bad input (one line on stderr).")
    parser.add_argument("run_a", help="run folder A (or its predictions.csv): the reference")
    parser.add_argument("run_b", help="run folder B (or its predictions.csv): the run compared with A")
    parser.add_argument("--out", help="folder for compare.csv (default: RUN_B/compare/<name of RUN_A>)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (default %(default)s)")
    return run_main(parser.prog, parser.parse_args, compare_runs, argv)


def compare_runs(args):
    """compare.csv of runs args.run_a and args.run_b written, and its summary printed."""
    a, b = paired_frames(args.run_a, args.run_b)
    table, unit, n_findings = compare_table(a, b, args.bootstrap, args.seed)
    default = os.path.join(args.run_b if os.path.isdir(args.run_b) else os.path.dirname(args.run_b) or ".",
                           COMPARE_DIR, os.path.basename(os.path.normpath(args.run_a)) or "a")
    out = args.out or default
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create it ({e.strerror})") from None
    with atomic_path(os.path.join(out, COMPARE_CSV)) as tmp:
        table.assign(run_a=os.path.abspath(args.run_a), run_b=os.path.abspath(args.run_b), resampled=unit) \
            .to_csv(tmp, index=False, na_rep="NA", float_format="%.6g")
    if unit != "patients":
        print(f"warning: resampling {unit}", file=sys.stderr)
    print(summary(table, n_findings))
    print(f"wrote {os.path.join(out, COMPARE_CSV)} ({len(a):,} test images, intervals by resampling {unit.split()[0]})")


if __name__ == "__main__":
    sys.exit(main())
