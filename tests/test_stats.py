import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from utils.stats import (bootstrap_aurocs, bootstrap_weights, cluster_ids, delong_covariance, delong_test,
                         percentile_interval, structural_components, weighted_auroc)


def test_weighted_auroc_equals_sklearn_on_the_repeated_sample():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)  # many ties
    weights = rng.integers(0, 4, size=(5, 60)).astype(float)
    got = weighted_auroc(y, p, weights)
    for row, w in enumerate(weights.astype(int)):
        expected = roc_auc_score(np.repeat(y, w), np.repeat(p, w))
        assert got[row] == pytest.approx(expected, abs=1e-12)


def test_weighted_auroc_is_nan_without_both_labels():
    assert math.isnan(weighted_auroc(np.array([1, 1, 0]), np.array([.1, .2, .3]), np.array([[1., 1., 0.]]))[0])


def test_cluster_weights_draw_whole_clusters():
    clusters = cluster_ids(["a", "a", "a", "b", "c", "c"])
    for weights in bootstrap_weights(6, clusters, 50, seed=0):
        assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
        assert (weights[:, 4] == weights[:, 5]).all()
        assert np.allclose(weights[:, [0, 3, 4]].sum(axis=1), 3)  # three clusters drawn three times
        assert len(np.unique(weights[:, 0])) > 1


def test_cluster_interval_is_wider_when_patients_repeat():
    # 40 patients with 8 images each; a patient's images share label and (nearly) score, so the effective sample is
    # 40, not 320: resampling images must understate the spread.
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 8)
    label = rng.integers(0, 2, 40)
    score = label * 0.6 + rng.normal(0, 0.5, 40)
    y = label[patients][:, None]
    p = (score[patients] + rng.normal(0, 0.01, 320))[:, None]
    by_image = percentile_interval(bootstrap_aurocs(y, p, None, 500, seed=1)[:, 0])
    by_patient = percentile_interval(bootstrap_aurocs(y, p, patients, 500, seed=1)[:, 0])
    assert by_patient[1] - by_patient[0] > 1.8 * (by_image[1] - by_image[0])
    assert by_patient[0] < roc_auc_score(y[:, 0], p[:, 0]) < by_patient[1]


def test_bootstrap_leaves_uncertain_labels_out():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (50, 2))
    p = rng.random((50, 2))
    y_uncertain = y.copy()
    y_uncertain[:10, 1] = -1
    keep = np.arange(10, 50)
    a = bootstrap_aurocs(y_uncertain, p, None, 20, seed=3)
    # with weights for the dropped rows, class 1 must equal the AUROC of the kept rows under the same weights
    weights = next(bootstrap_weights(50, None, 20, seed=3))
    assert np.allclose(a[:, 1], weighted_auroc(y[keep, 1], p[keep, 1], weights[:, keep]), equal_nan=True)


def slow_delong(y, p_a, p_b):
    """DeLong, DeLong and Clarke-Pearson (1988) as written: the m x n comparison kernel."""
    x = np.vstack([p_a, p_b])[:, y == 1]
    z = np.vstack([p_a, p_b])[:, y == 0]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])
    aucs = psi.mean(axis=(1, 2))
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    m, n = x.shape[1], z.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    from scipy.stats import norm
    return aucs, cov, 2 * norm.sf(abs(aucs[0] - aucs[1]) / math.sqrt(var))


@pytest.mark.parametrize("seed", range(5))
def test_fast_delong_matches_the_slow_reference(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 37)
    p_a = np.round(y * 0.4 + rng.random(37), 1)  # ties within and across classes
    p_b = np.round(y * 0.2 + rng.random(37), 2)
    aucs, cov, p_value = slow_delong(y, p_a, p_b)
    fast_aucs, v10, v01 = structural_components(np.vstack([p_a, p_b])[:, y == 1], np.vstack([p_a, p_b])[:, y == 0])
    assert np.allclose(fast_aucs, aucs) and np.allclose(fast_aucs, [roc_auc_score(y, p_a), roc_auc_score(y, p_b)])
    assert np.allclose(delong_covariance(v10, v01), cov)
    assert delong_test(y, p_a, p_b)[2] == pytest.approx(p_value, rel=1e-9)


def test_delong_edge_cases():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([.1, .8, .3, .7, .2])
    assert delong_test(y, p, p)[2] == 1.0
    assert all(math.isnan(v) for v in delong_test(np.ones(5), p, p[::-1]))
    # a clearly better model on 200 images: small p
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    assert delong_test(y, y + rng.normal(0, .3, 200), y + rng.normal(0, 3, 200))[2] < 1e-4
