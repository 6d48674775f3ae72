"""--amp auto on CUDA from measurements (utils.amp_choice.choose_amp) and its convergence check (auroc_agreement), whose
code path runs here on a CPU: no test depends on what this machine would pick."""
import numpy as np
import pytest
import torch

from utils.amp_choice import auroc_agreement, choose_amp
from utils.runtime import amp_dtype


def labels(n=400, classes=3, seed=0):
    return (np.random.default_rng(seed).random((n, classes)) < 0.4).astype(int)


def learned(y, noise, seed):
    return y + np.random.default_rng(seed).normal(0, noise, y.shape)


def test_two_runs_that_learned_alike_agree_and_one_that_did_not_differs():
    y = labels()
    agree, a, b, (low, high) = auroc_agreement(y, learned(y, 0.8, 1), learned(y, 0.8, 2))
    assert agree and low <= 0 <= high and abs(a - b) < 0.03 and a > 0.75
    agree, a, b, (low, high) = auroc_agreement(y, learned(y, 0.8, 1), np.random.default_rng(3).random(y.shape))
    assert not agree and high < 0 and b < 0.6 < a


def test_the_check_leaves_out_unlabelled_entries_and_classes_without_both_labels():
    y = labels()
    y[:, 2] = 0  # no positive: no AUROC for it
    y[:50, 0] = -1
    good = learned(np.where(y < 0, 0, y), 0.8, 1)
    spoiled = good.copy()
    spoiled[:50, 0], spoiled[:, 2] = 1e6, np.random.default_rng(4).random(len(y))  # where only -1 or one label is
    assert auroc_agreement(y, good, spoiled)[:3] == (True, *auroc_agreement(y, good, good)[1:3])
    with pytest.raises(ValueError, match="no class has both labels"):
        auroc_agreement(np.zeros((10, 2), int), np.zeros((10, 2)), np.zeros((10, 2)))


@pytest.mark.parametrize("bf16, fp16, agrees, expected, checked", [
    (100.0, 122.0, True, torch.float16, True),
    (100.0, 122.0, False, torch.bfloat16, True),
    (100.0, 90.0, True, torch.bfloat16, False),  # bf16 faster: no check run, no float16 risk taken
])
def test_auto_takes_fp16_only_when_faster_and_the_check_agrees(bf16, fp16, agrees, expected, checked):
    calls = []
    dtype, why = choose_amp({torch.bfloat16: bf16, torch.float16: fp16}, lambda: calls.append(1) or agrees)
    assert dtype == expected and bool(calls) == checked
    assert ("disagrees" in why) == (checked and not agrees)


def test_a_measured_choice_steers_auto_on_cuda_only():
    assert amp_dtype("auto", "cuda", True, measured=torch.float16) == torch.float16
    assert amp_dtype("on", "cuda", True, measured=torch.float16) == torch.bfloat16
    assert amp_dtype("off", "cuda", True, measured=torch.float16) is None
    assert amp_dtype("auto", "cuda", True) == torch.bfloat16


def test_the_benchmarks_convergence_check_runs_on_a_cpu():
    """benchmarks.bench_gpu's check (the same short run in bf16 and fp16 with a GradScaler), at a tiny size."""
    from benchmarks.bench_gpu import convergence_check, learnable
    x, y = learnable(30, 20, 0)
    cell = 4  # finding c brightens cell c of the 5 x 5 grid
    assert x[y[:, 0] == 1, 0, :cell, :cell].float().mean() > x[y[:, 0] == 0, 0, :cell, :cell].float().mean() + 40
    agree, a, b, (low, high) = convergence_check("unified-alexnet", torch.device("cpu"), 32, 4, 2, 24)
    assert isinstance(agree, bool) and 0 <= a <= 1 and 0 <= b <= 1 and low <= high
