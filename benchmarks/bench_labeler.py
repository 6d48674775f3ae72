"""Reports per second of the built-in report labeler on one core, on all 3,955 OpenI reports.

The CheXpert labeler it replaces (Java, BLLIP parser, NegBio) cannot run here (model download); its users
report about 5 reports per second, the number the ratio below is taken against. Also prints the labeler's
agreement with OpenI's MeSH codes.

    python -m benchmarks.bench_labeler [--repeats 3]

(from the repository root, so that data/ imports as the scripts import it)
"""

import argparse
import importlib.util
import os
import time

from data.labels.openi import evaluate_labeler, read_reports, report_text
from data.labels.report_labeler import format_table, label_report

CHEXPERT_REPORTS_PER_S = 5.0  # reported by users of stanfordmlgroup/chexpert-labeler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the reports; the fastest counts")
    parser.add_argument("--reports", help="OpenI reports folder or .tgz (default: torchxrayvision's copy)")
    args = parser.parse_args()
    source = args.reports or os.path.join(os.path.dirname(importlib.util.find_spec("torchxrayvision").origin),
                                          "data", "NLMCXR_reports.tgz")
    texts = report_text(read_reports(source)[0]).tolist()
    best_wall = best_cpu = float("inf")
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for t in texts:
            label_report(t)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    rate_wall, rate_cpu = len(texts) / best_wall, len(texts) / best_cpu
    print(f"{len(texts)} reports, one process: {rate_wall:,.0f} reports/s wall, {rate_cpu:,.0f} reports/s of CPU time "
          f"(target >= 1,000); CheXpert labeler ~{CHEXPERT_REPORTS_PER_S:.0f}/s reported: "
          f"{rate_wall / CHEXPERT_REPORTS_PER_S:,.0f}x")
    rows, _ = evaluate_labeler(source)
    print(format_table(rows))


if __name__ == "__main__":
    main()
