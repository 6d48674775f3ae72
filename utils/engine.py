"""The training, evaluation and prediction loops (plain loops, as in torchvision's references/classification).

Batches come from data.dataset.ChestImages as uint8 squares; data.transforms flips them (training) and normalizes
them with the model's own mean and std. predict() can return the class activation maps of the same forward pass as
the probabilities, so localization renders exactly what was evaluated.
"""
import contextlib
import math
import time
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from data.dataset import ChestImages
from data.errors import InputError
from data.transforms import Normalize, RandomHorizontalFlip
from models import class_activation_maps
from utils import dist


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops and the last good checkpoint is kept."""


class Predictions(NamedTuple):
    """One row per image, ordered by row index: probabilities [N, C], labels [N, C], decoded image sizes [N, 2]
    (height, width), and with maps=True the class activation maps [N, C, h, w] (float32, feature resolution)."""
    indices: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    maps: np.ndarray = None


def make_loader(frame, image_size, classes, *, batch_size, workers, train=False, seed=0, cache=False,
                pin_memory=False):
    """A DataLoader over `frame` with a DistributedSampler (also with one process: seeded, per-epoch shuffling that a
    resumed run replays exactly). uint8 batches; pinned memory when feeding a GPU."""
    dataset = ChestImages(frame, image_size, classes, cache=cache)
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=train, seed=seed,
                                 drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=train and len(dataset) // dist.world_size() > batch_size,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=one_thread)


def one_thread(_):
    torch.set_num_threads(1)  # the workers are the parallelism; intra-op threads would fight them


def autocast(device, enabled):
    """Mixed precision: float16 AMP on CUDA, bfloat16 on CPU; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def model_input(model, device):
    """The normalization of data.transforms with the parameters that travel with `model`."""
    net = dist.unwrap(model)
    return Normalize(net.mean, net.std, device)


def decode_error(errors, paths):
    """InputError naming the first file of `errors` that did not decode (the loader's reasons, '' where an image
    decoded; `paths` the files they belong to); raised on every rank together, so that no rank waits for the others
    in a collective."""
    bad = [(p, e) for p, e in zip(paths, errors) if e]
    more = f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""
    return InputError(f"cannot decode {bad[0][0]}: {bad[0][1]}{more}; fix or remove it, or pass --skip-bad-images")


def batch_paths(loader, idx):
    return [loader.dataset.paths[i] for i in idx.tolist()]


def train_one_epoch(model, loader, optimizer, loss_fn, device, epoch, *, scaler=None, amp=True, flip_generator=None,
                    max_batches=None, desc=None, bad=None):
    """One pass over `loader`; returns (mean loss, images per second). Raises NonFiniteLoss on a NaN/inf loss,
    on every rank at once so that no rank hangs in the next all-reduce.

    An image that does not decode stops training with its name (InputError, on every rank at once); with `bad` (a
    list) it is left out of its batch instead and (path, reason) appended to `bad`. A batch left empty is skipped
    by a single process; under DDP every rank must step together, so it takes part with a loss of zero."""
    model.train()
    normalize = model_input(model, device)
    flip = RandomHorizontalFlip(flip_generator) if flip_generator is not None else None
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(total=n_batches, desc=desc or f"epoch {epoch}", disable=not dist.is_main(), leave=False,
               dynamic_ncols=True)
    for step, (images, targets, idx, _, errors) in enumerate(loader):
        if step >= n_batches:
            break
        weight = 1.0
        if bad is not None and any(errors):
            bad += [(p, e) for p, e in zip(batch_paths(loader, idx), errors) if e]
            keep = torch.tensor([not e for e in errors])
            if keep.any():
                images, targets = images[keep], targets[keep]
            elif not dist.is_dist():
                continue
            else:
                weight = 0.0
            errors = []
        x = normalize(flip(images) if flip else images)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits, targets) * weight
        # one collective per step for both checks: a file that did not decode, a loss that is not finite
        undecoded, non_finite = dist.all_reduce_sum([sum(map(bool, errors)), not torch.isfinite(loss)], device)
        if undecoded or non_finite:
            bar.close()
            if undecoded:  # every rank gathers the names, so that whichever rank torchrun hears first names the file
                named = [row for part in dist.all_gather(list(zip(batch_paths(loader, idx), errors))) for row in part]
                raise decode_error([e for _, e in named], [p for p, _ in named])
            raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch}, batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        counted = images.shape[0] if weight else 0
        total_loss += loss.item() * counted
        seen += counted
        rate = seen * dist.world_size() / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    total = dist.all_reduce_sum(total_loss, device)
    count = dist.all_reduce_sum(seen, device)
    return total / max(count, 1), count / max(elapsed, 1e-9)


@torch.no_grad()
def predict(model, loader, device, *, amp=True, maps=False, desc="predict", max_batches=None, bad=None):
    """Predictions over the whole dataset, gathered from every rank with each image exactly once.

    maps=True also keeps the class activation maps of all classes from the same forward pass (models.cam), at the
    feature map's resolution, so probabilities and maps can never disagree. An image that does not decode raises
    InputError naming it; with `bad` (a list) its row is left out instead (Predictions.indices says which rows are
    there) and (path, reason) appended to `bad`, in row order."""
    model.eval()
    net = dist.unwrap(model)
    normalize = model_input(model, device)
    n_classes = net.classifier.out_features
    parts = {"indices": [], "probs": [], "labels": [], "sizes": [], "errors": [], "maps": []}
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    for step, (images, targets, idx, sizes, errors) in enumerate(tqdm(loader, total=n_batches, desc=desc, leave=False,
                                                                      disable=not dist.is_main(), dynamic_ncols=True)):
        if step >= n_batches:
            break
        if any(errors) and not dist.is_dist() and bad is None:
            raise decode_error(errors, batch_paths(loader, idx))
        x = normalize(images)
        with autocast(device, amp):
            if maps:
                logits, cams = class_activation_maps(net, x, size=None)
                parts["maps"].append(cams.cpu().numpy())
            else:
                logits = model(x)
        parts["probs"].append(torch.sigmoid(logits.float()).cpu().numpy())
        parts["labels"].append(targets.numpy())
        parts["sizes"].append(sizes.numpy())
        parts["errors"].append(np.asarray(errors, dtype=object))
        parts["indices"].append(idx.numpy())
    if not parts["indices"]:
        empty = np.zeros((0, n_classes), dtype=np.float32)
        return Predictions(np.zeros(0, np.int64), empty, empty, np.zeros((0, 2), np.int64),
                           np.zeros((0, n_classes, 1, 1), np.float32) if maps else None)
    local = np.concatenate(parts["indices"])
    indices, rows = dist.gather_rows(local, {k: np.concatenate(parts[k])
                                             for k in ("probs", "labels", "sizes", "errors")})
    failed = np.asarray([bool(e) for e in rows["errors"]], dtype=bool)
    if failed.any() and bad is None:  # under DDP found only now, with every rank's rows: no per-batch collective
        raise decode_error(rows["errors"], batch_paths(loader, indices))
    if bad is not None:
        bad += [(p, e) for p, e in zip(batch_paths(loader, indices[failed]), rows["errors"][failed])]
    gathered = None
    if maps:  # to rank 0 only, which localizes: every rank holding every map would multiply the memory
        _, gathered = dist.gather_rows(local, {"maps": np.concatenate(parts["maps"])}, main_only=True)
    ok = ~failed
    return Predictions(indices[ok], rows["probs"][ok], rows["labels"][ok], rows["sizes"][ok],
                       gathered["maps"][ok] if gathered else None)


def evaluate(model, loader, device, loss_fn, *, amp=True, maps=False, desc="evaluate", max_batches=None, bad=None):
    """(loss, Predictions) over a whole split; the loss is computed from the gathered probabilities so that it is
    the same whatever the number of ranks. `bad`: as predict's."""
    out = predict(model, loader, device, amp=amp, maps=maps, desc=desc, max_batches=max_batches, bad=bad)
    if len(out.probs) == 0:
        return math.nan, out
    p = torch.from_numpy(out.probs).double().clamp(1e-7, 1 - 1e-7)
    logits = torch.log(p) - torch.log1p(-p)
    return float(loss_fn(logits, torch.from_numpy(out.labels))), out
