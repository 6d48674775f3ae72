"""Evaluation of multi-label predictions with scikit-learn: AUROC with bootstrap intervals, average precision,
F1-optimal thresholds chosen on validation, and sensitivity/specificity at them.

Labels of -1 (uncertain) are left out of every metric. A class with no positives (or no negatives) in a split has
no AUROC: its row says NA instead of raising.
"""
import math
import os

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, precision_recall_curve, \
    roc_auc_score, roc_curve

from data.classes import CLASSES
from data.errors import InputError

# predictions.csv holds probabilities to this many decimals; labels, heatmap choices and box scores are computed
# from exactly those values, so that anyone recomputing a label from the files gets the same answer.
PROB_DECIMALS = 6


def known(y_true, y_prob):
    """The entries of one class whose label is 0 or 1."""
    keep = y_true >= 0
    return y_true[keep].astype(int), y_prob[keep]


def auroc(y_true, y_prob):
    """AUROC of one class, or nan when the labelled entries are all positive or all negative."""
    y, p = known(y_true, y_prob)
    if y.min(initial=1) == y.max(initial=0) or len(y) == 0:
        return math.nan
    return float(roc_auc_score(y, p))


def per_class_auroc(y_true, y_prob):
    """AUROC of every column (nan where undefined)."""
    return [auroc(y_true[:, c], y_prob[:, c]) for c in range(y_true.shape[1])]


def mean_auroc(y_true, y_prob):
    """Mean AUROC over the classes that have both positives and negatives (nan when none has)."""
    values = [a for a in per_class_auroc(y_true, y_prob) if not math.isnan(a)]
    return float(np.mean(values)) if values else math.nan


def bootstrap_auroc_interval(y_true, y_prob, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of one class's AUROC, resampling images; (nan, nan) when undefined."""
    y, p = known(y_true, y_prob)
    if len(y) == 0 or y.min() == y.max() or n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() != y[idx].max():  # a resample with one class only has no AUROC
            scores.append(roc_auc_score(y[idx], p[idx]))
    if not scores:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(scores, alpha)), float(np.quantile(scores, 1 - alpha))


def f1_optimal_threshold(y_true, y_prob):
    """The probability threshold that maximizes F1 on these labels (0.5 when the class has no positives)."""
    y, p = known(y_true, y_prob)
    if len(y) == 0 or y.max() == 0:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def choose_thresholds(y_true, y_prob):
    """One F1-optimal threshold per column, chosen on (validation) labels and probabilities."""
    return [f1_optimal_threshold(y_true[:, c], y_prob[:, c]) for c in range(y_true.shape[1])]


def counts_at(y, p, threshold):
    """(tp, fp, fn, tn) of one class's labelled entries at a threshold."""
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return int(tp), int(fp), int(fn), int(tn)


def ratio(a, b):
    return a / b if b else math.nan


def class_row(name, y_true, y_prob, threshold, n_boot, seed):
    y, p = known(y_true, y_prob)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    low, high = bootstrap_auroc_interval(y_true, y_prob, n_boot, seed)
    tp, fp, fn, tn = counts_at(y, p, threshold)
    return {
        "class": name, "positives": n_pos, "negatives": n_neg,
        "auroc": auroc(y_true, y_prob), "auroc_low": low, "auroc_high": high,
        "average_precision": float(average_precision_score(y, p)) if n_pos else math.nan,
        "threshold": threshold,
        "f1": float(f1_score(y, (p >= threshold).astype(int), zero_division=0)) if n_pos else math.nan,
        "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
    }


def metrics_table(y_true, y_prob, classes, thresholds, n_boot=1000, seed=0):
    """The metrics.csv table: one row per class, then 'macro' (mean of the defined per-class values) and
    'micro' (all labelled entries pooled, each judged at its own class's threshold)."""
    rows = [class_row(name, y_true[:, c], y_prob[:, c], thresholds[c], n_boot, seed)
            for c, name in enumerate(classes)]
    table = pd.DataFrame(rows)
    macro = {"class": "macro", "positives": int(table.positives.sum()), "negatives": int(table.negatives.sum())}
    for col in ("auroc", "average_precision", "f1", "sensitivity", "specificity"):
        macro[col] = float(table[col].mean()) if table[col].notna().any() else math.nan
    keep = y_true >= 0
    y_all = y_true[keep].astype(int)
    p_all = y_prob[keep]
    pred_all = (y_prob >= np.asarray(thresholds)[None, :])[keep].astype(int)
    micro = {"class": "micro", "positives": int((y_all == 1).sum()), "negatives": int((y_all == 0).sum())}
    defined = len(y_all) and y_all.min() != y_all.max()
    micro["auroc"] = float(roc_auc_score(y_all, p_all)) if defined else math.nan
    micro["average_precision"] = float(average_precision_score(y_all, p_all)) if defined else math.nan
    tn, fp, fn, tp = confusion_matrix(y_all, pred_all, labels=[0, 1]).ravel() if len(y_all) else (0, 0, 0, 0)
    micro["f1"] = ratio(2 * tp, 2 * tp + fp + fn)
    micro["sensitivity"] = ratio(tp, tp + fn)
    micro["specificity"] = ratio(tn, tn + fp)
    return pd.concat([table, pd.DataFrame([macro, micro])], ignore_index=True)


def write_metrics(table, path):
    """metrics.csv with NA for undefined values (a class without positives in the split)."""
    table.to_csv(path, index=False, na_rep="NA", float_format="%.6g")


def plot_roc(y_true, y_prob, classes, path):
    """roc.png: the ROC curve of every class that has positives and negatives, AUROC in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8))
    for c, name in enumerate(classes):
        y, p = known(y_true[:, c], y_prob[:, c])
        if len(y) and y.min() != y.max():
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1, label=f"{name} ({roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.5)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1), title="ROC, test split")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rounded_probs(probs):
    """Probabilities as predictions.csv writes them."""
    return np.round(np.asarray(probs, dtype=np.float64), PROB_DECIMALS)


def parse_classes(text):
    """Comma-separated class names -> list; InputError naming the unknown ones."""
    classes = [c.strip() for c in str(text).split(",") if c.strip()]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise InputError(f"unknown classes {unknown}; choose from: {', '.join(CLASSES)}")
    return classes


def classes_to_map(probs, thresholds=None, classes=None):
    """Boolean [N, C]: the classes each image gets boxes and heatmaps for.

    classes (names) maps those for every image; otherwise a class is mapped where prob >= its threshold (0.5 if none).
    """
    if classes:
        chosen = np.zeros(probs.shape, dtype=bool)
        chosen[:, [CLASSES.index(c) for c in parse_classes(",".join(classes))]] = True
        return chosen
    thresholds = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return probs >= thresholds[None, :]


def write_thresholds(thresholds, out_dir):
    """out_dir/thresholds.csv: class, threshold (full precision, so labels recomputed from the files agree)."""
    pd.DataFrame({"class": CLASSES, "threshold": thresholds}).to_csv(os.path.join(out_dir, "thresholds.csv"),
                                                                     index=False)


def predictions_frame(image_ids, probs, thresholds):
    """predictions.csv: ImageID, the probabilities (prob_<class>, PROB_DECIMALS decimals), and the labels those
    written probabilities get at the validation thresholds (label_<class>)."""
    probs = rounded_probs(probs)
    return pd.concat([pd.DataFrame({"ImageID": list(image_ids)}),
                      pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES]),
                      pd.DataFrame(classes_to_map(probs, thresholds).astype(int),
                                   columns=[f"label_{c}" for c in CLASSES])], axis=1)


def summary_line(table):
    """One line: the mean AUROC over the classes with positives, and each of them."""
    per_class = table[table["class"].isin(CLASSES)]
    defined = per_class[per_class["auroc"].notna()]
    mean = defined["auroc"].mean() if len(defined) else math.nan
    parts = ", ".join(f"{r['class']} {r['auroc']:.3f}" for _, r in defined.iterrows())
    return f"test mean AUROC {mean:.4f} over {len(defined)} classes with positives | {parts}"
