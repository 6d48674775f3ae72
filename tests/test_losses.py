import math

import torch

from models.losses import bce_loss, wcel_loss


def naive_wcel(logits, targets):
    """The paper's formula, entry by entry."""
    f = torch.sigmoid(logits.double())
    labelled = [(f[i, c], int(targets[i, c])) for i in range(targets.shape[0]) for c in range(targets.shape[1])
                if targets[i, c] >= 0]
    n_pos = sum(1 for _, y in labelled if y == 1)
    n_neg = sum(1 for _, y in labelled if y == 0)
    beta_p, beta_n = (n_pos + n_neg) / n_pos, (n_pos + n_neg) / n_neg
    total = sum(-beta_p * math.log(p) if y == 1 else -beta_n * math.log(1 - p) for p, y in labelled)
    return total / (n_pos + n_neg)


def test_wcel_matches_the_paper_and_ignores_uncertain_labels():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    targets = torch.tensor([[1, 0, 0, -1, 0], [0, 0, 0, 0, 1], [0, -1, 0, 0, 0],
                            [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, -1, 0, 0]]).float()
    assert math.isclose(float(wcel_loss(logits, targets)), naive_wcel(logits, targets), rel_tol=1e-5)
    # Changing the logit of an uncertain entry changes nothing.
    moved = logits.clone()
    moved[0, 3] += 50
    assert float(wcel_loss(moved, targets)) == float(wcel_loss(logits, targets))


def test_wcel_weights_the_rare_positives_up():
    logits = torch.zeros(4, 4)
    targets = torch.zeros(4, 4)
    targets[0, 0] = 1  # 1 positive, 15 negatives
    logits.requires_grad_(True)
    wcel_loss(logits, targets).backward()
    # Unweighted, the positive's gradient is 15x smaller in total than the negatives'; W-CEL balances them.
    g = logits.grad
    assert math.isclose(float(-g[0, 0]), float(g.sum() - g[0, 0]), rel_tol=1e-5)


def test_bce_is_the_mean_over_labelled_entries():
    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    targets = torch.tensor([[1, 0, -1], [0, 1, 0], [-1, -1, 1], [0, 0, 0]]).float()
    keep = targets >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], targets[keep])
    torch.testing.assert_close(bce_loss(logits, targets), expected)


def test_losses_are_finite_for_extreme_logits_and_a_batch_without_positives():
    logits = torch.tensor([[80.0, -80.0], [-80.0, 80.0]], dtype=torch.bfloat16)
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for loss in (bce_loss, wcel_loss):
        value = loss(logits, targets)
        assert torch.isfinite(value) and value > 50
        assert torch.isfinite(loss(torch.randn(3, 2), torch.zeros(3, 2)))
    assert float(wcel_loss(torch.randn(2, 2), torch.full((2, 2), -1.0))) == 0.0
