"""Multi-label losses: CheXNet's binary cross-entropy and ChestX-ray8's weighted cross-entropy (W-CEL).

Targets are 1 (present), 0 (absent) or -1 (uncertain, kept by combinelabels --uncertain ignore): -1 entries are
masked out of both losses. Both are computed in float32 from logits (stable log-sigmoid), whatever the autocast dtype.
"""
import torch
import torch.nn.functional as F


def bce_loss(logits, targets):
    """Mean binary cross-entropy over the labelled (non -1) entries of the batch."""
    logits, targets = logits.float(), targets.float()
    known = targets >= 0
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
    return (per_entry * known).sum() / known.sum().clamp(min=1)


def wcel_loss(logits, targets):
    """Wang et al. 2017's W-CEL: beta_P * sum_{y=1} -ln f(x) + beta_N * sum_{y=0} -ln(1 - f(x)), with
    beta_P = (|P|+|N|)/|P| and beta_N = (|P|+|N|)/|N| counted over the batch's labelled entries.

    Divided by |P|+|N| so its scale does not grow with batch size; that constant does not change the optimum.
    """
    logits, targets = logits.float(), targets.float()
    pos = targets == 1
    neg = targets == 0
    n_pos, n_neg = pos.sum(), neg.sum()
    total = n_pos + n_neg
    # A batch with no positives (or no negatives) has nothing for that term to weight: its beta is unused.
    beta_p = total / n_pos.clamp(min=1)
    beta_n = total / n_neg.clamp(min=1)
    loss_pos = -F.logsigmoid(logits)[pos].sum()
    loss_neg = -F.logsigmoid(-logits)[neg].sum()
    return (beta_p * loss_pos + beta_n * loss_neg) / total.clamp(min=1)


LOSSES = {"bce": bce_loss, "wcel": wcel_loss}
