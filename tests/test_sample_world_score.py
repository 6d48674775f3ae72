import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT
from data.classes import CLASSES
from sample_world import DRAWN_FINDINGS
from utils.metrics import write_metrics
from sample_world.score import main, score_run


def write_run(run_dir, with_localization=True, groups=("all",)):
    """A run folder as traintest.py leaves it: metrics.csv for every class (NA where a class has no positives) in
    each group, the first group with AUROCs 0.5 ... 0.9 (mean 0.7) on the drawn findings and every later one with
    0.1, and localization.csv for the drawn findings but the last."""
    run_dir.mkdir()
    rows = []
    for g, group in enumerate(groups):
        auroc = {name: 0.5 + 0.05 * k if g == 0 else 0.1 for k, name in enumerate(DRAWN_FINDINGS)}
        rows += [{"group": group, "class": c, "positives": 3, "negatives": 9,
                  "auroc": auroc.get(c, 0.1 if c != "normal" else None)} for c in CLASSES]
        rows.append({"group": group, "class": "macro", "auroc": 0.2})
    write_metrics(pd.DataFrame(rows), run_dir / "metrics.csv")
    if with_localization:
        located = DRAWN_FINDINGS[:-1]
        loc = [{"criterion": criterion, "T": t, "measure": measure,
                **{c: (0.8 if (criterion, t, measure) == ("IoBB", 0.5, "acc") else 0.2) for c in located}}
               for criterion in ("IoU", "IoBB") for t in (0.1, 0.5) for measure in ("acc", "chance_acc", "afp")]
        pd.DataFrame(loc).to_csv(run_dir / "localization.csv", index=False, float_format="%.4f")
    return run_dir


def test_mean_is_over_the_drawn_findings_only(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    main([str(run)])
    out = capsys.readouterr().out
    assert out.startswith(f"test split, findings drawn by the sample world (run {run}):\n")
    assert out.rstrip("\n").endswith(f"mean AUROC over the {len(DRAWN_FINDINGS)} drawn findings: 0.700")
    table = score_run(str(run))
    assert list(table.index) == DRAWN_FINDINGS + ["mean"]
    assert table.loc["mean", "iobb_0.5"] == pytest.approx(0.8)
    assert table.loc["mean", "iobb_0.5_chance"] == pytest.approx(0.2)
    assert table["iobb_0.5"].isna().sum() == 1  # the finding without boxes shows NA, not 0
    assert "NA" in out


def test_only_the_all_group_is_scored(tmp_path):
    # metrics.csv holds one block per group (all, each source, each view); the sample world's score is group 'all'.
    run = write_run(tmp_path / "run", groups=("all", "padchest", "openi"))
    table = score_run(str(run))
    assert list(table.index) == DRAWN_FINDINGS + ["mean"]
    assert table.loc["mean", "auroc"] == pytest.approx(0.7)


@pytest.mark.slow
def test_without_localization_and_as_a_module(tmp_path):
    run = write_run(tmp_path / "run", with_localization=False)
    result = subprocess.run([sys.executable, "-m", "sample_world.score", str(run)], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "iobb" not in result.stdout
    assert result.stdout.rstrip("\n").endswith("drawn findings: 0.700")
    missing = subprocess.run([sys.executable, "-m", "sample_world.score", str(tmp_path / "nowhere")], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "metrics.csv" in missing.stderr


@pytest.mark.parametrize("content, words", [("", "cannot read as CSV"), ("class,auroc\nnormal,0.5\n", "has no row for"),
                                            ("name,value\n", "missing columns")])
def test_a_metrics_csv_that_is_not_one_is_a_line_naming_it(tmp_path, capsys, content, words):
    (tmp_path / "metrics.csv").write_text(content)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "metrics.csv") in err and words in err


def test_the_paper_row_and_box_counts_leave_the_score_alone(tmp_path):
    # localization.csv as localize() writes it: beside acc / chance_acc / afp, the paper's row at T(IoBB)=0.5 and the
    # box counts; the score reads our accuracy, not the paper's
    from utils.localization import localization_table
    run = write_run(tmp_path / "run", with_localization=False)
    truth = pd.DataFrame([("a", "cardiomegaly", 10, 10, 40, 40), ("b", "nodule", 10, 10, 8, 8)],
                         columns=["ImageID", "class", "x", "y", "w", "h"])
    pred = truth.assign(x=truth.x + [0, 20])  # the nodule's box is missed
    table = localization_table(pred, truth, {"a": (100, 100), "b": (100, 100)},
                               counts={"n_not_scored": {"mass": 2}, "n_clipped": {}, "n_outside": {}})
    assert "paper_acc" in set(table.measure) and "n_not_scored" in set(table.measure)
    table.to_csv(run / "localization.csv", index=False, float_format="%.4f")
    scored = score_run(str(run))
    assert scored.loc["cardiomegaly", "iobb_0.5"] == 1 and scored.loc["nodule", "iobb_0.5"] == 0
    assert scored["iobb_0.5"].notna().sum() == 3  # the two findings and the mean
