"""Time step 2 and step 3 at full size on the real label files shipped with torchxrayvision.

- parse: the full PadChest CSV (160,861 rows; the default frontal views) and the OpenI reports (3,955), each through
  the label rule (data.labels.rules.finish) as parselabelfile.py runs it
- write, old vs new: the PadChest labels with a plain DataFrame.to_csv in place vs data.files.write_csv (a temporary
  file renamed into place, and the row count beside it)
- parse NIH: Data_Entry_2017_v2020 (112,120 rows) through the rule
- combine: labels + a fake manifest of every PadChest and OpenI ImageID (160,861 + 7,470), patient split
- combine with NIH, free vs constrained: the three sources' labels (NIH's 112,120 images added) split freely, then
  with the 880 box images' patients forced into test (the real BBox_List_2017) as --test-boxes does
- split, old vs new, on the same patients: scikit-multilearn's IterativeStratification as shipped vs
  data.labels.combine.RarestFirstStratification (rarest label first, constant-time bookkeeping): seconds and the
  worst relative gap between a class's prevalence in val/test and in train (classes with >= 100
  positive patients). The old one is quadratic, so it runs on --old-patients patients only.

    python -m benchmarks.bench_labels [--old-patients 30000]

(from the repository root, so that data/ imports as the scripts import it)
"""

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

from skmultilearn.model_selection import IterativeStratification

from data.files import write_csv
from data.labels.combine import RarestFirstStratification, combine, patient_labels
from data.labels.nih import nih_labels
from data.labels.openi import openi_labels
from data.labels.padchest import CSV_NAME, padchest_labels
from data.labels.rules import finish


def txrv_data():
    import torchxrayvision
    return os.path.join(os.path.dirname(torchxrayvision.__file__), "data")


class timer:
    """Wall and CPU seconds of a block (CPU too, because the machine may be shared)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU"


def folds(cls, y, seed=1):
    np.random.seed(seed)
    splitter = cls(n_splits=3, order=1, sample_distribution_per_fold=[0.8, 0.1, 0.1])
    return [test for _, test in splitter.split(np.zeros((len(y), 1)), y)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-patients", type=int, default=30000,
                        help="patients for the old-vs-new split comparison (the old split is quadratic)")
    args = parser.parse_args()
    data = txrv_data()
    padchest_csv = os.path.join(data, CSV_NAME + ".gz")
    reports = os.path.join(data, "NLMCXR_reports.tgz")

    raw = pd.read_csv(padchest_csv, usecols=["ImageID"], dtype=str)
    with timer() as t:
        padchest, _ = finish(padchest_labels(padchest_csv)[0])
    print(f"parse PadChest ({len(raw)} rows -> {len(padchest)} frontal images): {t}")
    with timer() as t:
        openi, _ = finish(openi_labels(reports)[0])
    print(f"parse OpenI (3,955 reports -> {len(openi)} images, MeSH labels): {t}")

    with tempfile.TemporaryDirectory() as tmp:
        old, new = os.path.join(tmp, "old.csv"), os.path.join(tmp, "padchest_labels.csv")
        with timer() as t_old:
            padchest.to_csv(old, index=False)
        with timer() as t_new:
            write_csv(padchest, new, index=False)
        print(f"write PadChest labels: to_csv in place {t_old}, write_csv (atomic, counted) {t_new}: "
              f"{t_new.wall / t_old.wall:.2f}x the time")
        write_csv(openi, os.path.join(tmp, "openi_labels.csv"), index=False)
        ids = pd.concat([raw["ImageID"], openi["ImageID"]], ignore_index=True)
        png = "images/" + ids.str.replace(r"\.png$", "", regex=True) + ".png"
        manifest = pd.DataFrame({"ImageID": ids, "path": png,
                                 "archive": "", "member": ids, "width": 2048, "height": 2048, "bits": 16,
                                 "photometric": "MONOCHROME2", "status": "ok"})
        manifest.to_csv(os.path.join(tmp, "manifest.csv"), index=False)
        with timer() as t:
            frame, stats = combine(tmp, os.path.join(tmp, "manifest.csv"))
            write_csv(frame, os.path.join(tmp, "combined.csv"), index=False)
    print(f"combine + write ({len(manifest)} manifest rows -> {len(frame)} images of {stats['patients']} patients): "
          f"{t} (target <= 10 s)")

    with timer() as t:
        nih, _ = finish(nih_labels(os.path.join(data, "Data_Entry_2017_v2020.csv.gz"))[0])
    print(f"parse NIH ({len(nih)} images): {t}")
    boxes = pd.read_csv(os.path.join(data, "BBox_List_2017.csv.gz"), usecols=[0]).iloc[:, 0].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in (("padchest", padchest), ("openi", openi), ("nih", nih)):
            write_csv(part, os.path.join(tmp, f"{name}_labels.csv"), index=False)
        ids = pd.concat([manifest["ImageID"], nih["ImageID"]], ignore_index=True)
        pd.DataFrame({"ImageID": ids, "path": "images/" + ids, "width": 1024, "height": 1024, "status": "ok"}).to_csv(
            os.path.join(tmp, "manifest.csv"), index=False)
        with timer() as t_free:
            free, _ = combine(tmp, os.path.join(tmp, "manifest.csv"))
        with timer() as t_boxed:
            boxed, stats = combine(tmp, os.path.join(tmp, "manifest.csv"), test_images=boxes)
    shares = {name: part.groupby(["Source", "PatientID"])["split"].first().value_counts(normalize=True)["test"]
              for name, part in (("free", free), ("boxed", boxed))}
    print(f"combine three sources ({len(free)} images of {stats['patients']} patients): free split {t_free}; with "
          f"{stats['test_boxes']['patients']} box patients forced into test {t_boxed}: "
          f"{t_boxed.wall / t_free.wall:.2f}x the time; patients in test {shares['free']:.1%} -> {shares['boxed']:.1%}")

    # old vs new split on the same patients
    _, y = patient_labels(frame)
    y = y[np.random.RandomState(0).permutation(len(y))[:args.old_patients]]
    results = {}
    for name, cls in (("scikit-multilearn", IterativeStratification), ("rarest-first", RarestFirstStratification)):
        t = time.perf_counter()
        parts = folds(cls, y)
        results[name] = (time.perf_counter() - t, worst_gap(y, parts))
    (t_old, gap_old), (t_new, gap_new) = results.values()
    print(f"split {len(y)} patients: scikit-multilearn {t_old:.2f} s (worst prevalence gap {gap_old:.0%}), "
          f"rarest-first {t_new:.2f} s (worst gap {gap_new:.0%}): {t_old / t_new:.1f}x faster")


def worst_gap(y, parts):
    """Largest |prevalence in val or test - prevalence in train| / prevalence in train."""
    common = y.sum(0) >= 100
    train = y[parts[0]].mean(0)[common]
    return max((np.abs(y[p].mean(0)[common] - train) / train).max() for p in parts[1:])


if __name__ == "__main__":
    main()
