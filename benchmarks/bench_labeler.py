"""The built-in report labeler, old vs new side by side in one run, on one core:

- speed on all 3,955 OpenI reports (reports per second; target >= 1,000)
- speed on pathological reports: one long clause full of mentions, negations or hedges, long runs of punctuation,
  real reports joined without sentence ends (target: at most ~10 ms per 10 KB; a 360 KB repetitive report under a
  second). The old labeler is quadratic in the mentions of a clause, so it runs only on the reports up to
  --old-max-kb (the issue measured 2.0 s for 31 KB, 31 s for 124 KB, 121 s for 360 KB).
- agreement with OpenI's MeSH codes: precision, recall and F1 per class, old and new on the same reports, with
  'uncertain' counted as negative and as positive ('lower' marks a class whose F1 fell), and the reports
  without text.

The old labeler is data/labels/report_labeler.py as of --old-rev, read with `git show`. The CheXpert labeler it
replaces (Java, BLLIP parser, NegBio) cannot run here (model download); its users report about 5 reports per
second.

    python -m benchmarks.bench_labeler [--repeats 3] [--old-max-kb 40] [--old-rev b53c22b]

(from the repository root, so that data/ imports as the scripts import it)
"""

import argparse
import importlib.util
import os
import subprocess
import time
import types

from data.labels.openi import evaluate_labeler, read_reports, report_text, without_text_summary
from data.labels.report_labeler import label_report

CHEXPERT_REPORTS_PER_S = 5.0  # reported by users of stanfordmlgroup/chexpert-labeler
OLD_REV = "b53c22b"  # the labeler before linear time, the hedge rules and normal-structure statements


def old_labeler(rev):
    """The report labeler module as of git revision `rev`, or None (with the reason) where git cannot give it."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:data/labels/report_labeler.py"], capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return None, str(e)
    module = types.ModuleType("report_labeler_old")
    exec(compile(source, f"{rev}:data/labels/report_labeler.py", "exec"), module.__dict__)
    return module, None


def pathological(texts):
    """(name, report) pairs that stress the look-back over a clause."""
    joined = " ".join(texts)
    flat = joined.replace(".", " ").replace(";", " ").replace(":", " ")
    return [
        ("4 mentions x 1,000, one clause", "pneumonia effusion nodule mass " * 1000),
        ("4 mentions x 4,000, one clause", "pneumonia effusion nodule mass " * 4000),
        ("'heart is enlarged ' x 20,000", "heart is enlarged " * 20000),
        ("'no pneumonia ' x 20,000", "no pneumonia " * 20000),
        ("'no change in effusion ' x 15,000", "no change in effusion " * 15000),
        ("'cannot exclude pneumonia ' x 12,000", "cannot exclude pneumonia " * 12000),
        ("'heart size is normal ' x 17,000", "heart size is normal " * 17000),
        ("2 mentions around 360,000 commas", "pneumonia ," + "," * 360000 + " effusion"),
        ("one 360,000-letter word", "x" * 360000),
        ("real reports joined, 360 KB", joined[:360000]),
        ("real reports without sentence ends, 360 KB", flat[:360000]),
    ]


def seconds(label, texts, repeats):
    """Fastest wall and CPU seconds of labeling every text once."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for t in texts:
            label(t)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the reports; the fastest counts")
    parser.add_argument("--reports", help="OpenI reports folder or .tgz (default: torchxrayvision's copy)")
    parser.add_argument("--old-rev", default=OLD_REV, help="git revision of the old labeler (default %(default)s)")
    parser.add_argument("--old-max-kb", type=float, default=40,
                        help="run the old labeler on pathological reports up to this size only (default %(default)s)")
    args = parser.parse_args()
    source = args.reports or os.path.join(os.path.dirname(importlib.util.find_spec("torchxrayvision").origin),
                                          "data", "NLMCXR_reports.tgz")
    texts = report_text(read_reports(source)[0]).tolist()
    old, why = old_labeler(args.old_rev)
    if old is None:
        print(f"old labeler ({args.old_rev}) not available: {why}; new only")

    print(f"{len(texts)} OpenI reports, one process (target >= 1,000 reports/s); "
          f"CheXpert labeler ~{CHEXPERT_REPORTS_PER_S:.0f}/s reported")
    rate = {}
    for name, module in (("old", old), ("new", None)):
        if name == "old" and old is None:
            continue
        wall, cpu = seconds(module.label_report if module else label_report, texts, args.repeats)
        rate[name] = len(texts) / wall
        print(f"  {name}: {rate[name]:8,.0f} reports/s wall, {len(texts) / cpu:8,.0f} reports/s of CPU time")
    if "old" in rate:
        print(f"  ratio new / old = {rate['new'] / rate['old']:.2f}x")

    print("\npathological reports (target <= ~10 ms per 10 KB), best of "
          f"{args.repeats}; old only up to {args.old_max_kb:g} KB")
    print(f"  {'report':44s} {'KB':>5s} {'new ms':>8s} {'ms/10KB':>8s} {'old ms':>9s} {'old/new':>8s}")
    for name, text in pathological(texts):
        kb = len(text) / 1000
        new, _ = seconds(label_report, [text], args.repeats)
        line = f"  {name:44s} {kb:5.0f} {new * 1e3:8.1f} {new * 1e3 / (kb / 10):8.2f}"
        if old is not None and kb <= args.old_max_kb:
            before, _ = seconds(old.label_report, [text], 1)
            line += f" {before * 1e3:9.1f} {before / new:7.0f}x"
        else:
            line += f" {'skipped':>9s}"
        print(line)

    scores = {"old": evaluate_labeler(source, old.label_reports)} if old is not None else {}
    scores["new"] = evaluate_labeler(source)
    for mode in ("negative", "positive"):
        print(f"\nagreement with OpenI's MeSH codes (uncertain counts as {mode}), on the same reports")
        print(f"  {'class':34s}" + "".join(f" {n + ' ' + m:>8s}" for n in scores for m in ("P", "R", "F1"))
              + f" {'support':>8s}")
        for i, r in enumerate(scores["new"][mode]):
            line = "".join(f" {scores[n][mode][i][m]:8.3f}" for n in scores for m in ("precision", "recall", "f1"))
            lower = " lower" if "old" in scores and r["f1"] < scores["old"][mode][i]["f1"] - 1e-9 else ""
            print(f"  {r['class']:34s}{line} {r['support']:8d}{lower}")
    print("\n" + without_text_summary(scores["new"]))

if __name__ == "__main__":
    main()
