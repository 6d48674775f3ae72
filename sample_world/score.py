"""Score a traintest.py run on the sample world: test AUROC and localization accuracy of the findings it draws.

    python -m sample_world.score RUN_DIR

prints the table (auroc, and with RUN_DIR/localization.csv the accuracy at T(IoBB)=0.5 and its chance level) and
"mean AUROC over the N drawn findings: X".
"""

import os
import sys

import pandas as pd

from data.commands import Parser, run_main
from data.errors import InputError
from data.files import read_table
from sample_world import DRAWN_FINDINGS
from utils.metrics import group_rows
from utils.run_folder import LOCALIZATION_CSV, METRICS_CSV


def score_run(run_dir):
    """Test-split AUROC (group 'all' of metrics.csv) and localization accuracy at T(IoBB)=0.5 of a run, for the
    findings the world draws.

    The mean is taken over DRAWN_FINDINGS only: the world has no positives for the other classes, and 'normal'
    is not a finding."""
    metrics_csv = os.path.join(run_dir, METRICS_CSV)
    metrics = group_rows(read_table(metrics_csv, ["class", "auroc"], what="traintest.py's metrics.csv",
                                    error=InputError, na_values=["NA"])).set_index("class")
    missing = [f for f in DRAWN_FINDINGS if f not in metrics.index]
    if missing:
        raise InputError(f"{metrics_csv} has no row for {', '.join(missing)}; not traintest.py's metrics.csv")
    table = pd.DataFrame({"auroc": pd.to_numeric(metrics.loc[DRAWN_FINDINGS, "auroc"], errors="coerce")})
    localization_csv = os.path.join(run_dir, LOCALIZATION_CSV)
    if os.path.exists(localization_csv):
        loc = read_table(localization_csv, ["criterion", "T", "measure"], what="traintest.py's localization.csv",
                         error=InputError)
        at = loc[(loc.criterion == "IoBB") & (loc["T"].round(2) == 0.5)].set_index("measure")
        found = [f for f in DRAWN_FINDINGS if f in at.columns]
        table.loc[found, "iobb_0.5"] = at.loc["acc", found].astype(float)
        table.loc[found, "iobb_0.5_chance"] = at.loc["chance_acc", found].astype(float)
    table.loc["mean"] = table.mean()
    return table


def main(argv=None):
    parser = Parser(
        prog="python -m sample_world.score",
        description="Print a traintest.py run's test AUROC and localization accuracy for the findings the sample "
                    "world draws, and their mean.")
    parser.add_argument("run_dir", help="run folder (holds metrics.csv, and localization.csv with --boxes-csv)")
    return run_main(parser.prog, parser.parse_args, print_score, argv)


def print_score(args):
    """The score table of run folder args.run_dir, printed."""
    if not os.path.isfile(os.path.join(args.run_dir, METRICS_CSV)):
        raise InputError(f"{args.run_dir} has no metrics.csv (is it a finished traintest.py run folder?)")
    table = score_run(args.run_dir)
    print(f"test split, findings drawn by the sample world (run {args.run_dir}):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="NA"))
    print(f"mean AUROC over the {len(DRAWN_FINDINGS)} drawn findings: {table.loc['mean', 'auroc']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
