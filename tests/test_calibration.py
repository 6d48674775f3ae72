import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from utils.calibration import (apply_temperatures, calibration_table, expected_calibration_error, fit_temperature,
                               fit_temperatures, plot_reliability)


def test_ece_by_hand():
    # bins of width 1/15: 0.1 and 0.12 share bin 1, 0.9 is in bin 13
    y = np.array([0, 1, 1, 1, -1])
    p = np.array([0.1, 0.12, 0.9, 0.9, 0.5])
    # bin 1: mean prob 0.11, observed 0.5 -> |0.39| * 2/4 ; bin 13: mean 0.9, observed 1 -> 0.1 * 2/4
    assert expected_calibration_error(y, p) == pytest.approx(0.39 * 0.5 + 0.1 * 0.5)


def overconfident(n=20000, temperature=2.5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, n)
    y = (rng.random(n) < expit(z / temperature)).astype(int)
    return y, expit(z)  # the model's logit is temperature times too large


def test_temperature_recovers_the_true_one_and_lowers_ece():
    y, p = overconfident()
    t = fit_temperature(y, p)
    assert t == pytest.approx(2.5, rel=0.1)
    scaled = apply_temperatures(p[:, None], [t])[:, 0]
    assert expected_calibration_error(y, scaled) < 0.02 < expected_calibration_error(y, p)
    assert roc_auc_score(y, scaled) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_temperature_is_one_without_both_labels():
    assert fit_temperature(np.ones(10), np.linspace(0.1, 0.9, 10)) == 1.0
    assert fit_temperature(-np.ones(10), np.linspace(0.1, 0.9, 10)) == 1.0


def test_temperature_is_one_where_validation_separates_the_class():
    # Every positive above every negative: the log-loss falls without end as T -> 0, so there is no temperature to
    # fit; a fit that runs to its bound would push test scores to 0 and 1, where stored probabilities tie.
    y = np.r_[np.zeros(100), np.ones(8)]
    p = np.r_[np.linspace(0.01, 0.6, 100), np.linspace(0.7, 0.99, 8)]
    assert fit_temperature(y, p) == 1.0
    p[-1] = 0.3  # one positive among the negatives: a finite temperature minimizes the log-loss
    assert 0.05 < fit_temperature(y, p) != 1.0


def test_table_and_plot(tmp_path):
    y1, p1 = overconfident(4000, 2.0, 1)
    y2, p2 = overconfident(4000, 0.5, 2)
    y = np.stack([y1, y2], 1)
    p = np.stack([p1, p2], 1)
    y[:100, 1] = -1
    temperatures = fit_temperatures(y, p)
    assert temperatures[0] > 1.5 and temperatures[1] < 0.7
    after = apply_temperatures(p, temperatures)
    table = calibration_table(y, p, ["a", "b"], [0, 1], after, temperatures)
    assert list(table["class"]) == ["a", "b", "overall"]
    assert list(table["labelled"]) == [4000, 3900, 7900]
    assert (table["ece_calibrated"] < table["ece"]).all()
    assert (table["log_loss_calibrated"] < table["log_loss"]).all()
    pooled = expected_calibration_error(np.r_[y[:, 0], y[:, 1]], np.r_[p[:, 0], p[:, 1]])
    assert table["ece"].iloc[2] == pytest.approx(pooled)
    plot_reliability(y, p, [0, 1], tmp_path / "reliability.png", calibrated=after)
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
