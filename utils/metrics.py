"""Evaluation of multi-label predictions with scikit-learn: AUROC with patient-bootstrap intervals, average precision,
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

from data.classes import CLASSES, FINDINGS, SUMMARY_ROWS
from data.errors import InputError
from data.files import atomic_path, write_text_atomic
from utils.run_folder import THRESHOLDS_CSV
from utils.stats import bootstrap_aurocs, macro_samples, percentile_interval

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


def mean_auroc(y_true, y_prob, classes=CLASSES):
    """The headline: mean AUROC over the findings (every class but SUMMARY_ROWS) that have both positives and
    negatives; nan when none has. It also chooses the best checkpoint."""
    values = [a for a, name in zip(per_class_auroc(y_true, y_prob), classes)
              if name not in SUMMARY_ROWS and not math.isnan(a)]
    return float(np.mean(values)) if values else math.nan


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
    if not len(y):
        return 0, 0, 0, 0
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return int(tp), int(fp), int(fn), int(tn)


def ratio(a, b):
    return a / b if b else math.nan


def class_row(name, y_true, y_prob, threshold, interval):
    y, p = known(y_true, y_prob)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    tp, fp, fn, tn = counts_at(y, p, threshold)
    return {
        "class": name, "positives": n_pos, "negatives": n_neg,
        "auroc": auroc(y_true, y_prob), "auroc_low": interval[0], "auroc_high": interval[1],
        "average_precision": float(average_precision_score(y, p)) if n_pos else math.nan,
        "threshold": threshold,
        "f1": float(f1_score(y, (p >= threshold).astype(int), zero_division=0)) if n_pos else math.nan,
        "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
    }


def metrics_table(y_true, y_prob, classes, thresholds, n_boot=1000, seed=0, patients=None):
    """The metrics.csv table of one group of images: one row per class, then 'macro' (the mean over the findings,
    every class but SUMMARY_ROWS: 'normal' and 'other findings' keep their own rows but stay out of it; its AUROC interval comes from the
    same resamples as the classes') and 'micro' (all labelled entries of the findings pooled, each judged at its own
    class's threshold). Intervals are percentile bootstrap intervals that resample patients (all of a patient's
    images together) when `patients` gives each image's PatientID, images otherwise."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    boot = bootstrap_aurocs(y_true, y_prob, patients, n_boot, seed) if n_boot > 0 else np.full((0, len(classes)), np.nan)
    rows = [class_row(name, y_true[:, c], y_prob[:, c], thresholds[c], percentile_interval(boot[:, c]))
            for c, name in enumerate(classes)]
    table = pd.DataFrame(rows)
    findings = [c for c, name in enumerate(classes) if name not in SUMMARY_ROWS]
    defined = [c for c in findings if not math.isnan(table.at[c, "auroc"])]
    part = table.iloc[findings]
    macro = {"class": "macro", "positives": int(part.positives.sum()), "negatives": int(part.negatives.sum())}
    for col in ("auroc", "average_precision", "f1", "sensitivity", "specificity"):
        macro[col] = float(part[col].mean()) if part[col].notna().any() else math.nan
    macro["auroc_low"], macro["auroc_high"] = percentile_interval(macro_samples(boot, defined))
    keep = y_true[:, findings] >= 0
    y_all = y_true[:, findings][keep].astype(int)
    p_all = y_prob[:, findings][keep]
    pred_all = (y_prob[:, findings] >= np.asarray(thresholds)[findings][None, :])[keep].astype(int)
    micro = {"class": "micro", "positives": int((y_all == 1).sum()), "negatives": int((y_all == 0).sum())}
    both = len(y_all) and y_all.min() != y_all.max()
    micro["auroc"] = float(roc_auc_score(y_all, p_all)) if both else math.nan
    micro["average_precision"] = float(average_precision_score(y_all, p_all)) if both else math.nan
    tn, fp, fn, tp = confusion_matrix(y_all, pred_all, labels=[0, 1]).ravel() if len(y_all) else (0, 0, 0, 0)
    micro["f1"] = ratio(2 * tp, 2 * tp + fp + fn)
    micro["sensitivity"] = ratio(tp, tp + fn)
    micro["specificity"] = ratio(tn, tn + fp)
    return pd.concat([table, pd.DataFrame([macro, micro])], ignore_index=True)


def image_groups(frame):
    """The groups of images metrics.csv reports on, as name -> boolean mask over the frame's rows: 'all', each
    Source, each view, and 'padchest-physician' (PadChest's manually labelled images, MethodLabel 'Physician')."""
    groups = {"all": np.ones(len(frame), dtype=bool)}
    for column, prefix in (("Source", ""), ("view", "view:")):
        if column in frame.columns:
            values = frame[column].fillna("").astype(str)
            for value in sorted(set(values) - {""}):
                groups[prefix + value] = (values == value).to_numpy()
    if {"Source", "MethodLabel"} <= set(frame.columns):
        physician = (frame["Source"] == "padchest") & (frame["MethodLabel"].astype(str).str.lower() == "physician")
        if physician.any():
            groups["padchest-physician"] = physician.to_numpy()
    return groups


def grouped_metrics(frame, y_true, y_prob, thresholds, n_boot=1000, seed=0, groups=None):
    """metrics.csv: metrics_table for every group of image_groups(frame) (or the given groups), a `group` column
    first. Patients are resampled when the frame has PatientID. Outside 'all', a class with no labelled image in the
    group (a class its source never annotates) has no row."""
    patients = frame["PatientID"].astype(str).to_numpy() if "PatientID" in frame.columns else None
    tables = []
    for name, mask in (groups or image_groups(frame)).items():
        table = metrics_table(y_true[mask], y_prob[mask], CLASSES, thresholds, n_boot, seed,
                              None if patients is None else patients[mask])
        if name != "all":
            table = table[(table.positives + table.negatives > 0) | ~table["class"].isin(CLASSES)]
        tables.append(table.assign(group=name, images=int(mask.sum())))
    table = pd.concat(tables, ignore_index=True)
    return table[["group", "images", *[c for c in table.columns if c not in ("group", "images")]]]


def write_metrics(table, path):
    """metrics.csv with NA for undefined values (a class without positives in the split)."""
    write_text_atomic(path, table.to_csv(index=False, na_rep="NA", float_format="%.6g"))


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
    save_figure(fig, path)


def save_figure(fig, path):
    """A matplotlib figure as the PNG at `path` (written atomically, so a reader never finds half a picture), then
    closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
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
    write_text_atomic(os.path.join(out_dir, THRESHOLDS_CSV),
                      pd.DataFrame({"class": CLASSES, "threshold": thresholds}).to_csv(index=False))


def predictions_frame(frame, probs, thresholds, labels=None):
    """predictions.csv: ImageID (with PatientID, Source and view where the frame has them), the probabilities
    (prob_<class>: `probs`, the reported ones of utils.calibration.reported_probs, as given), the labels they get at
    the validation thresholds (label_<class>) and, given the true labels, true_<class> (1, 0, -1 = left out of the
    metrics), so that any metric or a comparison of two runs (utils.compare) can be recomputed from this file alone.
    A class the model does not predict (a published model's NA) has empty probability and label cells."""
    ids = frame[[c for c in ("ImageID", "PatientID", "Source", "view") if c in frame.columns]].reset_index(drop=True)
    # a class the model does not predict (a published model's NA: probability NaN) has no label either, never 0
    labelled = pd.DataFrame(classes_to_map(probs, thresholds).astype(int), columns=[f"label_{c}" for c in CLASSES])
    labelled = labelled.astype("Int64").mask(np.isnan(np.asarray(probs, dtype=np.float64)))
    parts = [ids, pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES]), labelled]
    if labels is not None:
        parts.append(pd.DataFrame(np.asarray(labels).astype(int), columns=[f"true_{c}" for c in CLASSES]))
    return pd.concat(parts, axis=1)


def group_rows(table, group="all"):
    """The rows of one group of a metrics table; a table without a group column (written before groups existed) is
    all one group."""
    return table[table["group"] == group] if "group" in table.columns else table


def headline(table, group="all"):
    """'macro AUROC 0.912 (95% CI 0.894-0.928)' of one group of a metrics table, or None when it has no such group."""
    rows = group_rows(table, group)
    macro = rows[rows["class"] == "macro"]
    if not len(macro) or pd.isna(macro["auroc"].iloc[0]):
        return None
    m = macro.iloc[0]
    interval = f" (95% CI {m['auroc_low']:.3f}-{m['auroc_high']:.3f})" if pd.notna(m["auroc_low"]) else ""
    return f"{m['auroc']:.4f}{interval}"


def summary_line(table):
    """One line: the macro AUROC over the findings with its interval, each source's, 'normal' and 'other findings'
    on their own, then every finding with an AUROC."""
    rows = group_rows(table)
    per_class = rows[rows["class"].isin(FINDINGS) & rows["auroc"].notna()]
    line = f"test macro AUROC {headline(table) or 'NA'} over {len(per_class)} findings with positives"
    if "group" in table.columns:
        sources = [g for g in table["group"].unique() if g != "all" and ":" not in g and g != "padchest-physician"]
        by_source = [f"{g} {headline(table, g)}" for g in sources if headline(table, g)]
        if len(by_source) > 1 or (by_source and "padchest-physician" in set(table["group"])):
            if headline(table, "padchest-physician"):
                by_source.append(f"padchest-physician {headline(table, 'padchest-physician')}")
            line += " | by source: " + ", ".join(by_source)
    apart = rows[rows["class"].isin(["normal", "other findings"]) & rows["auroc"].notna()]
    if len(apart):
        line += " | outside the mean: " + ", ".join(f"{r['class']} {r['auroc']:.3f}" for _, r in apart.iterrows())
    return line + " | " + ", ".join(f"{r['class']} {r['auroc']:.3f}" for _, r in per_class.iterrows())
