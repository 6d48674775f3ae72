"""The training, evaluation and prediction loops (plain loops, as in torchvision's references/classification)."""
import contextlib
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from data.dataset import to_model_input
from utils import dist


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops and the last good checkpoint is kept."""


def autocast(device, enabled):
    """Mixed precision: float16 AMP on CUDA, bfloat16 on CPU; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def random_flip(x, generator):
    """Horizontal flip of a random half of the batch, CheXNet's only augmentation. Drawn in the main process from
    a generator seeded by (seed, epoch), so the flips do not depend on worker count and survive a resume."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(-1)
    return x


def train_one_epoch(model, loader, optimizer, loss_fn, device, epoch, *, scaler=None, amp=True, flip_generator=None,
                    max_batches=None, desc=None):
    """One pass over `loader`; returns (mean loss, images per second). Raises NonFiniteLoss on a NaN/inf loss,
    on every rank at once so that no rank hangs in the next all-reduce."""
    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(total=n_batches, desc=desc or f"epoch {epoch}", disable=not dist.is_main(), leave=False,
               dynamic_ncols=True)
    for step, (images, targets, _) in enumerate(loader):
        if step >= n_batches:
            break
        if flip_generator is not None:
            images = random_flip(images, flip_generator)
        x = to_model_input(images, device)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits, targets)
        if dist.all_reduce_sum(0.0 if torch.isfinite(loss) else 1.0, device) > 0:
            bar.close()
            raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch}, batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * images.shape[0]
        seen += images.shape[0]
        rate = seen * dist.world_size() / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    total = dist.all_reduce_sum(total_loss, device)
    count = dist.all_reduce_sum(seen, device)
    return total / max(count, 1), count / max(elapsed, 1e-9)


@torch.no_grad()
def predict(model, loader, device, *, amp=True, desc="predict", max_batches=None):
    """(row indices, probabilities [N, C], labels [N, C]) over the whole dataset, gathered from every rank with
    each image exactly once, ordered by row index."""
    model.eval()
    indices, probs, labels = [], [], []
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    for step, (images, targets, idx) in enumerate(tqdm(loader, total=n_batches, desc=desc, leave=False,
                                                       disable=not dist.is_main(), dynamic_ncols=True)):
        if step >= n_batches:
            break
        with autocast(device, amp):
            logits = model(to_model_input(images, device))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(targets.numpy())
        indices.append(idx.numpy())
    n_classes = model.module.classifier.out_features if hasattr(model, "module") else model.classifier.out_features
    indices = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    rows = np.concatenate([np.concatenate(probs), np.concatenate(labels)], axis=1) if probs \
        else np.zeros((0, 2 * n_classes), dtype=np.float32)
    indices, rows = dist.gather_rows(indices, rows)
    return indices, rows[:, :n_classes], rows[:, n_classes:]


def evaluate(model, loader, device, loss_fn, *, amp=True, desc="evaluate", max_batches=None):
    """(loss, probabilities, labels) over a whole split; the loss is computed from the gathered probabilities so
    that it is the same whatever the number of ranks."""
    _, probs, labels = predict(model, loader, device, amp=amp, desc=desc, max_batches=max_batches)
    if len(probs) == 0:
        return math.nan, probs, labels
    p = torch.from_numpy(probs).double().clamp(1e-7, 1 - 1e-7)
    logits = torch.log(p) - torch.log1p(-p)
    return float(loss_fn(logits, torch.from_numpy(labels))), probs, labels
