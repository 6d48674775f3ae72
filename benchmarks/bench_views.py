"""The view classifier, old and new, side by side on a source shifted to look like another hospital's.

    python -m benchmarks.bench_views --csv work/combined.csv --old /work/wt-base [--shifted-source openi]

combined.csv must keep every view (steps 1-3 with --views all). The shifted source's image files are copied and
shifted (sample_world.shift: window and gamma, crop, rotation; a second condition adds borders). Every held-out image
of known view, the training sources' test split and every image of the shifted source, has its view blanked in a copy
of the CSV, so that both classifiers train on the same images (the known views of the other sources' train and val
splits) and guess the same held-out ones; their guesses are scored against the blanked views: accuracy over the
guesses made, lateral recall, abstentions, per source. The old classifier is `python -m utils.view_classifier` run
from the --old checkout (its own defaults), the new one from this checkout.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from data.views import view_kind
from sample_world.shift import shift_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blinded(frame, source):
    """(copy of frame with the held-out known views blanked, their truth: True for lateral, indexed like frame)."""
    kinds = frame["view"].map(view_kind)
    held = kinds.isin(["frontal", "lateral"]) & ((frame["split"] == "test") | (frame["Source"] == source))
    blind = frame.copy()
    blind.loc[held, "view"] = ""
    return blind, kinds[held] == "lateral"


def scores(guesses, truth, frame):
    """{source: (images, accuracy over guesses, lateral recall over guessed laterals, abstained)} and 'all'."""
    view = guesses.loc[truth.index, "view"].fillna("").astype(str).map(view_kind)
    made = view.isin(["frontal", "lateral"])
    out = {}
    for source in ["all", *sorted(frame.loc[truth.index, "Source"].unique())]:
        sources = frame.loc[truth.index, "Source"].to_numpy()
        mask = np.ones(len(truth), dtype=bool) if source == "all" else sources == source
        ok = made.to_numpy() & mask
        lateral = truth.to_numpy() & ok
        out[source] = (int(mask.sum()), float(((view == "lateral").to_numpy() == truth.to_numpy())[ok].mean()),
                       float((view == "lateral").to_numpy()[lateral].mean()) if lateral.any() else float("nan"),
                       int((mask & ~made.to_numpy()).sum()))
    return out


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(checkout, csv, out, cache):
    """(wall seconds, CPU seconds, stdout) of one classifier's run."""
    start, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run([sys.executable, "-m", "utils.view_classifier", "--csv", csv, "--out", out, "--cache-dir",
                           cache], cwd=checkout, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{checkout}: view classifier failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, cpu_seconds() - cpu, proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="combinelabels.py's CSV, every view kept (absolute paths)")
    parser.add_argument("--old", required=True, help="checkout of the old view classifier (e.g. today's main)")
    parser.add_argument("--shifted-source", default="openi", help="the source shifted (default %(default)s)")
    parser.add_argument("--work", default="work/bench_views", help="folder for the copies (default %(default)s)")
    args = parser.parse_args()
    frame = pd.read_csv(args.csv, dtype={"ImageID": str, "PatientID": str, "view": str}, keep_default_na=False)
    base = os.path.dirname(os.path.abspath(args.csv))
    frame["path"] = [p if os.path.isabs(p) else os.path.join(base, p) for p in frame["path"]]
    rows = []
    for condition, border in (("none", None), ("window+crop+rotation", False), ("window+crop+rotation+border", True)):
        folder = os.path.abspath(os.path.join(args.work, condition))
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.join(folder, "images"))
        shifted = frame.copy()
        if border is not None:
            mask = shifted["Source"] == args.shifted_source
            copies = [os.path.join(folder, "images", os.path.basename(p)) for p in shifted.loc[mask, "path"]]
            for src, dst in zip(shifted.loc[mask, "path"], copies):
                shutil.copyfile(src, dst)
            shift_files(copies, seed=0, border=border)
            shifted.loc[mask, "path"] = copies
        blind, truth = blinded(shifted, args.shifted_source)
        csv = os.path.join(folder, "blind.csv")
        blind.to_csv(csv, index=False)
        for name, checkout in (("old", os.path.abspath(args.old)), ("new", ROOT)):
            seconds, cpu, printed = run(checkout, csv, os.path.join(folder, f"{name}.csv"), os.path.join(folder, name))
            guesses = pd.read_csv(os.path.join(folder, f"{name}.csv"), dtype={"view": str}, keep_default_na=False)
            for source, (n, accuracy, recall, abstained) in scores(guesses, truth, shifted).items():
                rows.append([condition, name, source, n, accuracy, recall, abstained, round(seconds), round(cpu)])
            print(printed.strip(), file=sys.stderr)
    table = pd.DataFrame(rows, columns=["shift", "classifier", "source", "images", "accuracy", "lateral_recall",
                                        "abstained", "wall_s", "cpu_s"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"(shift applied to {args.shifted_source} only; both trained on the other sources' known train/val views; "
          f"wall_s and cpu_s: the whole command's, thumbnail cache built included, on a shared machine)")


if __name__ == "__main__":
    main()
