"""How far the predicted probabilities can be read as probabilities, and per-class temperature scaling.

The thresholds, the heatmap choice and the boxes all read the probabilities, so a reader needs to know how well
calibrated they are: the expected calibration error (equal-width bins, Naeini et al. 2015; Guo et al. 2017) per class
and pooled, the log-loss, and a reliability diagram. Temperature scaling (Guo et al. 2017) divides each class's logit by
one positive number fitted on validation; it never reorders a class's scores, so AUROCs are unchanged and only the
thresholds move. Labels of -1 are left out everywhere, as in the metrics.
"""
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.metrics import log_loss

from utils.metrics import known, rounded_probs, save_figure

N_BINS = 15
# Stored probabilities have 6 decimals: 0 and 1 occur, and their logits must stay finite.
EPS = 1e-7


def binned(y, p, n_bins=N_BINS):
    """Per equal-width bin of predicted probability: count, mean probability and observed fraction of positives."""
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=p, minlength=n_bins) / count
        observed = np.bincount(which, weights=y, minlength=n_bins) / count
    return count, confidence, observed


def expected_calibration_error(y_true, y_prob, n_bins=N_BINS):
    """ECE of one class (or of any pooled labelled entries): sum over bins of |observed - mean probability|, weighted
    by the bin's share of the entries; nan without labelled entries."""
    y, p = known(np.asarray(y_true), np.asarray(y_prob, dtype=np.float64))
    if not len(y):
        return math.nan
    count, confidence, observed = binned(y, p, n_bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(observed[filled] - confidence[filled])) / len(y))


def binary_log_loss(y_true, y_prob):
    """Mean negative log-likelihood of the labelled entries (nan without any)."""
    y, p = known(np.asarray(y_true), np.asarray(y_prob, dtype=np.float64))
    return float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])) if len(y) else math.nan


def separable(y, p):
    """Whether every positive scores above every negative: then the log-loss falls without end as T -> 0."""
    return p[y == 1].min() > p[y == 0].max()


def fit_temperature(y_true, y_prob):
    """The temperature T > 0 that minimizes the log-loss of sigmoid(logit(p) / T) on these labels; 1.0 when there is
    nothing to fit: the class lacks positives or negatives, or validation separates them perfectly (no finite T
    minimizes the log-loss there, and a fit that runs to its bound pushes every test score to 0 or 1, where the
    stored probabilities tie and a class's AUROC falls: seen on the demo, pneumonia 0.90 -> 0.77)."""
    y, p = known(np.asarray(y_true), np.asarray(y_prob, dtype=np.float64))
    if not len(y) or y.min() == y.max() or separable(y, p):
        return 1.0
    z = logit(np.clip(p, EPS, 1 - EPS))

    def loss(log_t):
        return log_loss(y, np.clip(expit(z / math.exp(log_t)), EPS, 1 - EPS), labels=[0, 1])

    # Bounded in log space: T from 1/20 to 20 covers any network we train; the loss is convex in 1/T.
    return float(math.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded").x))


def fit_temperatures(y_true, y_prob):
    """One temperature per column, fitted on (validation) labels and probabilities."""
    return np.array([fit_temperature(y_true[:, c], y_prob[:, c]) for c in range(y_true.shape[1])])


def apply_temperatures(y_prob, temperatures):
    """The probabilities with each column's logit divided by its temperature."""
    z = logit(np.clip(np.asarray(y_prob, dtype=np.float64), EPS, 1 - EPS))
    return expit(z / np.asarray(temperatures, dtype=np.float64)[None, :])


class ReportedProbs(NamedTuple):
    """The probabilities [N, C] of one evaluated set, as the run's files hold them."""
    model: np.ndarray  # the model's own, rounded as predictions.csv stores them: calibration.csv's 'before'
    reported: np.ndarray  # what every output reads and predictions.csv holds: `model` itself without temperatures
    temperatures: Sequence[float] | None  # --calibrate's, one per class, that scaled `model` into `reported`


def reported_probs(probs, temperatures=None):
    """The ReportedProbs of the model's probabilities [N, C]: rounded, and with temperatures (from --calibrate)
    scaled from the rounded ones and rounded again. Called once per evaluated set; every output takes the result, so
    nothing downstream scales (a second scaling once reported twice-scaled probabilities)."""
    model = rounded_probs(probs)
    if temperatures is None:
        return ReportedProbs(model, model, None)
    return ReportedProbs(model, rounded_probs(apply_temperatures(model, temperatures)), temperatures)


def calibration_table(y_true, y_prob, classes, pooled_columns, calibrated=None, temperatures=None):
    """calibration.csv: per class the ECE and log-loss (and, with calibrated probabilities, the same after scaling
    and the temperature), then an 'overall' row pooling the labelled entries of pooled_columns."""
    def measures(prob, suffix):
        rows = [{f"ece{suffix}": expected_calibration_error(y_true[:, c], prob[:, c]),
                 f"log_loss{suffix}": binary_log_loss(y_true[:, c], prob[:, c])} for c in range(len(classes))]
        rows.append({f"ece{suffix}": expected_calibration_error(y_true[:, pooled_columns], prob[:, pooled_columns]),
                     f"log_loss{suffix}": binary_log_loss(y_true[:, pooled_columns], prob[:, pooled_columns])})
        return pd.DataFrame(rows)

    table = pd.DataFrame({"class": [*classes, "overall"],
                          "labelled": [int((y_true[:, c] >= 0).sum()) for c in range(len(classes))]
                          + [int((y_true[:, pooled_columns] >= 0).sum())]})
    table = pd.concat([table, measures(y_prob, "")], axis=1)
    if calibrated is not None:
        table = pd.concat([table, measures(calibrated, "_calibrated")], axis=1)
        table["temperature"] = [*temperatures, math.nan]
    return table


def plot_reliability(y_true, y_prob, columns, path, calibrated=None, title="Reliability, test split"):
    """reliability.png: observed fraction of positives against mean predicted probability per bin, pooled over the
    labelled entries of the given columns (dot size ~ entries in the bin), before and, if given, after scaling."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.6, label="perfect calibration")
    for prob, name, colour in ((y_prob, "model", "#1f4e79"), (calibrated, "temperature-scaled", "#2e8b57")):
        if prob is None:
            continue
        y, p = known(y_true[:, columns].ravel(), prob[:, columns].ravel())
        count, confidence, observed = binned(y, p)
        filled = count > 0
        ece = expected_calibration_error(y, p)
        ax.plot(confidence[filled], observed[filled], "-", color=colour, lw=1, label=f"{name} (ECE {ece:.3f})")
        ax.scatter(confidence[filled], observed[filled], s=8 + 120 * count[filled] / max(count.max(), 1),
                   color=colour)
    ax.set(xlabel="mean predicted probability", ylabel="fraction positive", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)


def fitted_thresholds(y_true, y_prob, calibrate, choose):
    """(thresholds, temperatures): the thresholds `choose` picks on validation, after temperature scaling when
    calibrate is set (the temperatures, a list of floats, then travel with them; None otherwise)."""
    if not calibrate:
        return choose(y_true, y_prob), None
    temperatures = fit_temperatures(y_true, y_prob)
    # plain floats: a checkpoint holds tensors and Python numbers only, which the weights-only loader accepts
    return choose(y_true, reported_probs(y_prob, temperatures).reported), [float(t) for t in temperatures]
