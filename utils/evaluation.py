"""The judgement of a model on held-out images: the files a reviewer reads.

Given the images of each evaluation set (the test split of the training sources, and each held-out source in full)
and the model's predictions on them, writes to the run folder:
- metrics.csv: per set and group of images (all, each source, each view, PadChest's physician-labelled images; an
  external source as 'external:<source>'), one row per class, 'macro' (the headline, over the 20 findings) and
  'micro', with patient-bootstrap 95% intervals;
- predictions.csv: ImageID, PatientID, Source, view, set, probabilities, labels at the validation thresholds and the
  true labels, and the model (model_card.json's name; metrics.csv has it too);
- calibration.csv and reliability.png: expected calibration error and log-loss on the test split, per class and
  pooled over the findings, before and (with --calibrate) after temperature scaling;
- roc.png of the test split.
"""
import logging
import os

import pandas as pd

from data.classes import CLASSES, FINDINGS
from data.dataset import split
from data.errors import InputError
from data.files import write_text_atomic
from utils.calibration import calibration_table, plot_reliability
from utils.metrics import grouped_metrics, image_groups, plot_roc, predictions_frame, write_metrics
from utils import dist
from utils.run_folder import (CALIBRATION_CSV, METRICS_CSV, PREDICT_ERRORS_CSV, PREDICTIONS_CSV, RELIABILITY_PNG,
                              ROC_PNG, model_name, write_file_errors)

log = logging.getLogger(__name__)

TEST = "test"
EXTERNAL = "external"


def evaluation_sets(frame, test_sources=None, whole=False, limit=None, csv_path="the CSV"):
    """{set name: rows} of the CSV to evaluate on: 'test' (the test split, at most `limit` rows, or every row with
    whole=True, for a CSV the model never saw) and 'external:<source>' (every row of each held-out source);
    InputError naming `csv_path` when there is nothing to evaluate."""
    sets = {}
    held_out = frame["Source"].isin(test_sources) if test_sources else pd.Series(False, index=frame.index)
    rest = frame[~held_out].reset_index(drop=True)
    if whole:
        sets[TEST] = rest
    elif len(rest):
        sets[TEST] = split(rest, TEST, limit)
    for source in test_sources or []:
        sets[f"{EXTERNAL}:{source}"] = frame[frame["Source"] == source].reset_index(drop=True)
    sets = {name: rows for name, rows in sets.items() if len(rows)}
    if not sets:
        raise InputError(f"{csv_path} has no test rows (split == 'test') to evaluate on (--eval-split all evaluates "
                         f"every image of a CSV the model never saw)")
    return sets


def write_predictions(run_dir, frame, predictions, thresholds, bad, source):
    """--predict's files: predictions.csv of the images of `frame` that decoded (no truth to judge them by: the
    probabilities and the labels at the thresholds) and predict_errors.csv of the files in `bad` that did not, written
    even when empty so that an old list never stays behind (rank 0); InputError when nothing from `source` decoded."""
    errors_csv = os.path.join(run_dir, PREDICT_ERRORS_CSV)
    if dist.is_main():
        write_file_errors(bad, errors_csv)
        write_text_atomic(os.path.join(run_dir, PREDICTIONS_CSV), predictions_frame(
            frame.iloc[predictions.indices], predictions.probs, thresholds).assign(model=model_name(run_dir))
            .to_csv(index=False))
    if len(predictions.indices) == 0:
        raise InputError(f"none of the {len(frame)} files at {source} decoded (see {errors_csv})")
    if bad:
        log.warning("%d of %d files did not decode (listed in %s; first: %s: %s)", len(bad), len(frame), errors_csv,
                    *bad[0])
    log.info("predicted %d images -> %s", len(predictions.indices), os.path.join(run_dir, PREDICTIONS_CSV))


def set_groups(name, rows):
    """The groups of one evaluation set, named so that metrics.csv tells the sets apart."""
    groups = image_groups(rows)
    if name == TEST:
        return groups
    return {name if group == "all" else f"{name}:{group}": mask for group, mask in groups.items()
            if group != rows["Source"].iloc[0]}  # an external set is one source: its source group repeats 'all'


def judge(run_dir, results, thresholds, n_boot=1000, seed=0):
    """Write metrics.csv, predictions.csv, calibration.csv, reliability.png and roc.png for the evaluated sets.

    results: {set name: (rows, probs, labels [N, C])} in the rows' order, probs a utils.calibration.ReportedProbs:
    its reported probabilities are the ones written and thresholded (and every metric is computed from them, so that
    a reader, or utils.compare, recomputing one from predictions.csv gets metrics.csv's value); calibration.csv shows
    the model's own beside them when they were calibrated. Returns the metrics table."""
    tables, predictions = [], []
    for name, (rows, probs, labels) in results.items():
        tables.append(grouped_metrics(rows, labels, probs.reported, thresholds, n_boot, seed, set_groups(name, rows)))
        predictions.append(predictions_frame(rows, probs.reported, thresholds, labels).assign(set=name))
        if name == TEST:
            plot_roc(labels, probs.reported, CLASSES, os.path.join(run_dir, ROC_PNG))
    # which model produced them: the name in model_card.json (utils.run_folder.begin wrote it)
    table = pd.concat(tables, ignore_index=True).assign(model=model_name(run_dir))
    write_metrics(table, os.path.join(run_dir, METRICS_CSV))
    frame = pd.concat(predictions, ignore_index=True).assign(model=model_name(run_dir))
    columns = [c for c in ("ImageID", "PatientID", "Source", "view", "set") if c in frame.columns]
    write_text_atomic(os.path.join(run_dir, PREDICTIONS_CSV),
                      frame[[*columns, *[c for c in frame.columns if c not in columns]]].to_csv(index=False))
    # Calibration is judged where the thresholds are applied in earnest: the test split (else the first set).
    name = TEST if TEST in results else next(iter(results))
    _, probs, labels = results[name]
    findings = [CLASSES.index(c) for c in FINDINGS]
    calibrated = probs.reported if probs.temperatures is not None else None
    write_text_atomic(os.path.join(run_dir, CALIBRATION_CSV),
                      calibration_table(labels, probs.model, CLASSES, findings, calibrated, probs.temperatures)
                      .to_csv(index=False, na_rep="NA", float_format="%.6g"))
    plot_reliability(labels, probs.model, findings, os.path.join(run_dir, RELIABILITY_PNG), calibrated=calibrated,
                     title=f"Reliability over the findings, {name} images")
    return table
