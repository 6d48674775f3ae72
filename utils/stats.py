"""Uncertainty of AUROCs: patient-cluster bootstrap and DeLong's test.

A chest X-ray test split is clustered: a PadChest patient has several studies, an OpenI report covers its frontal and
lateral images. Resampling images treats those as independent and gives intervals that are too narrow, so the
bootstrap here resamples clusters (patients) and takes all their images together. Each resample is a vector of
per-image weights (how often its cluster was drawn), and the AUROC of a weighted sample is computed from one sort per
class: a thousand resamples of a 20,000-image split cost a few seconds, not a thousand roc_auc_score calls per class.

DeLong's test compares two correlated AUROCs measured on the same images, with the fast algorithm of Sun and Xu
(2014, IEEE Signal Processing Letters 21(11)): midranks instead of the n_pos x n_neg comparison matrix.
"""
import math

import numpy as np
from scipy.stats import norm, rankdata

# Rows of the weight matrix handled at once: bounds memory to CHUNK x n_images float64.
CHUNK = 200


def cluster_ids(groups):
    """Integer cluster of each image from any labels (PatientIDs); each image its own cluster when groups is None."""
    if groups is None:
        return None
    _, ids = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    return ids


def bootstrap_weights(n, clusters, n_boot, seed):
    """[n_boot, n] float64: how many times each image is drawn in each resample. clusters (from cluster_ids) makes
    the unit of resampling the cluster; None resamples images."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        clusters = np.arange(n)
    n_clusters = int(clusters.max()) + 1 if n else 0
    for start in range(0, n_boot, CHUNK):
        rows = min(CHUNK, n_boot - start)
        drawn = rng.integers(0, n_clusters, size=(rows, n_clusters)) + n_clusters * np.arange(rows)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=rows * n_clusters).reshape(rows, n_clusters)
        yield counts[:, clusters].astype(np.float64)


def weighted_auroc(y, p, weights):
    """AUROC of one class under each row of weights ([B, n]); ties count one half, as in roc_auc_score.
    nan where a row has no weight on positives or on negatives. y must be 0/1 (unlabelled entries removed)."""
    if not len(y):
        return np.full(len(weights), np.nan)
    order = np.argsort(p, kind="mergesort")
    p, y, w = p[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])  # first index of each block of tied scores
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_aurocs(y_true, y_prob, groups=None, n_boot=1000, seed=0):
    """[n_boot, C] AUROCs of every class under the same resamples (nan where a resample leaves a class with one
    label only). y_true -1 entries are left out of their class. groups: the cluster of each image (PatientID)."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    n, n_classes = y_true.shape
    clusters = cluster_ids(groups)
    out = np.empty((n_boot, n_classes))
    row = 0
    for weights in bootstrap_weights(n, clusters, n_boot, seed):
        for c in range(n_classes):
            keep = y_true[:, c] >= 0
            out[row:row + len(weights), c] = weighted_auroc(y_true[keep, c].astype(int), y_prob[keep, c],
                                                            weights[:, keep])
        row += len(weights)
    return out


def percentile_interval(samples, level=0.95):
    """(low, high) percentile interval of the finite samples; (nan, nan) when there are none."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def macro_samples(aurocs, columns):
    """The macro AUROC (mean over the given class columns) of each resample; a resample where one of those classes
    has no AUROC is nan, so every macro value averages the same classes."""
    return aurocs[:, columns].mean(axis=1) if len(columns) else np.full(len(aurocs), np.nan)


def structural_components(x, y):
    """Sun and Xu's fast DeLong components for k predictors. x: [k, m] scores of the positives, y: [k, n] of the
    negatives. Returns the AUROCs [k], v10 [k, m] and v01 [k, n]."""
    m, n = x.shape[1], y.shape[1]
    tx = np.apply_along_axis(rankdata, 1, x)
    ty = np.apply_along_axis(rankdata, 1, y)
    tz = np.apply_along_axis(rankdata, 1, np.concatenate([x, y], axis=1))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(v10, v01):
    """The covariance matrix of k AUROCs from their structural components."""
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(v10), len(v10)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(v01), len(v01)))
    return s10 / m + s01 / n


def delong_test(y, p_a, p_b):
    """Two-sided DeLong test of AUROC(p_a) == AUROC(p_b) on the same labelled images.
    Returns (auroc_a, auroc_b, p_value); p is nan where a class has one label only or the difference has no variance
    and the AUROCs differ, 1.0 where both are identical."""
    y = np.asarray(y).astype(int)
    scores = np.vstack([p_a, p_b]).astype(np.float64)
    if y.min(initial=1) == y.max(initial=0):
        return math.nan, math.nan, math.nan
    aucs, v10, v01 = structural_components(scores[:, y == 1], scores[:, y == 0])
    cov = delong_covariance(v10, v01)
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    difference = aucs[0] - aucs[1]
    if variance <= 1e-15:
        return float(aucs[0]), float(aucs[1]), 1.0 if abs(difference) < 1e-12 else math.nan
    return float(aucs[0]), float(aucs[1]), float(2 * norm.sf(abs(difference) / math.sqrt(variance)))
