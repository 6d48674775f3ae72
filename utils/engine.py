"""The training, evaluation and prediction loops (plain loops, as in torchvision's references/classification).

Batches come from data.dataset.ChestImages as uint8 squares; data.transforms flips them (training) and normalizes
them with the model's own mean and std. predict() can return the class activation maps of the same forward pass as
the probabilities, so localization renders exactly what was evaluated.
"""
import contextlib
import itertools
import logging
import math
import signal
import time
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from data.dataset import ChestImages, worker_process_init
from data.errors import InputError
from data.transforms import Normalize, RandomHorizontalFlip
from models import class_activation_maps, uncropped_maps
from utils import dist

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops and the last good checkpoint is kept."""


class Stopped(Exception):
    """A stop signal (data.commands.StopSignals) ended a loop that cannot be resumed in its middle (validation)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


# Steps between looks at the loss (each a host synchronization): the running loss is logged, a NaN stops the run, a
# file that did not decode is named (under DDP), and the ranks agree on a stop signal (under DDP).
LOOK_EVERY = 100


class Predictions(NamedTuple):
    """One row per image, ordered by row index: probabilities [N, C], labels [N, C], decoded image sizes [N, 2]
    (height, width), and with maps=True the class activation maps [N, C, h, w] (float32, feature resolution)."""
    indices: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    maps: np.ndarray = None


class Progress:
    """How far one epoch's training has gone: batches done (`step`), the loss summed over the images counted so far
    and their number (rank 0 holds every rank's once the epoch ends or stops; the others then hold zero), seconds
    spent, and `stopped`, the signal that ended it early (0: it ran to its end). A mid-epoch checkpoint stores
    as_dict(), and --resume continues from it; `loss` and `rate` (images/s) are the epoch's, once it has ended."""

    FIELDS = ("step", "loss_sum", "seen", "seconds")

    def __init__(self, step=0, loss_sum=0.0, seen=0, seconds=0.0):
        self.step, self.loss_sum, self.seen, self.seconds = int(step), float(loss_sum), int(seen), float(seconds)
        self.stopped, self.loss, self.rate = 0, math.nan, 0.0

    def as_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def of_rank(cls, stored):
        """A stored Progress as this rank continues it: the sums are rank 0's, the others start them at zero."""
        progress = cls(**{k: stored[k] for k in cls.FIELDS})
        if not dist.is_main():
            progress.loss_sum, progress.seen = 0.0, 0
        return progress


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start its epoch `skip` samples in: where a mid-epoch checkpoint stopped. The
    epoch's order is the same as from its start (seeded by seed and epoch), so the rest of the epoch is exactly what
    an uninterrupted run would have seen."""

    skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self):
        return super().__len__() - self.skip


def make_loader(frame, image_size, classes, *, batch_size, workers, train=False, seed=0, cache=False, cache_dir=None,
                pin_memory=False, crop=None):
    """A DataLoader over `frame` with a ResumableSampler (also with one process: seeded, per-epoch shuffling that a
    resumed run replays exactly). uint8 batches; pinned memory when feeding a GPU. cache_dir: the persistent cache
    (data.cache), built first when absent; cache: the in-memory one (data.dataset.ChestImages). crop: the model's
    (a published model's centre crop: data.transforms); the persistent cache holds whole images only, so a cropping
    model decodes every epoch instead (or keeps its crops in memory with cache=True)."""
    if crop is not None and cache_dir is not None:
        log.info("the model takes centre crops, which the persistent cache in %s does not hold: decoding every epoch "
                 "(--cache keeps them in memory)", cache_dir)
        cache_dir = None
    dataset = ChestImages(frame, image_size, classes, cache=cache, cache_dir=cache_dir, crop=crop)
    sampler = ResumableSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=train, seed=seed,
                               drop_last=False)
    # its own generator: the loader draws its workers' seeds from it, not from the global RNG a checkpoint restores
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=train and len(dataset) // dist.world_size() > batch_size,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=worker_process_init, generator=torch.Generator().manual_seed(seed))


def autocast(device, amp):
    """Mixed precision at `amp`, a dtype (utils.runtime.use_amp) or True for the device's usual one (float16 on CUDA,
    bfloat16 on CPU); a no-op context for None or False."""
    if not amp:
        return contextlib.nullcontext()
    if amp is True:
        amp = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=amp)


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


class _Watch:
    """What the training step keeps on the device so that it never waits for the GPU: the loss summed since the
    last look, whether every loss was finite, and the first one that was not (its value and batch)."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)
        self.bad_batch = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, loss, counted, batch):
        loss = loss.detach()
        ok = torch.isfinite(loss)
        first = self.finite & ~ok
        self.bad_value = torch.where(first, loss.float(), self.bad_value)
        self.bad_batch = torch.where(first, batch, self.bad_batch)
        self.finite &= ok
        self.loss += loss.double() * counted


def optimizer_step(loss, optimizer, scaler=None):
    """Backward and step, through `scaler` (utils.runtime.grad_scaler: float16's) when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(model, loader, optimizer, loss_fn, device, epoch, *, scaler=None, amp=True, flip_generator=None,
                    max_batches=None, desc=None, bad=None, progress=None, stop=None, look_every=LOOK_EVERY,
                    on_look=None):
    """One pass over `loader`, or its rest from `progress` (a mid-epoch checkpoint's); returns the Progress, with
    the epoch's mean loss and images per second once it has ended.

    The step never waits for the device: the loss and its finiteness stay there, and are looked at every
    `look_every` steps and at the end (one all-reduce then under DDP). A NaN/inf loss raises NonFiniteLoss (on every
    rank at once, so that no rank hangs in a collective), at the look after it: the steps in between are lost, and
    so is nothing else, since only an epoch's end or a stop writes a checkpoint, and both look first.

    `on_look(step, loss_sum, seen)`, when given, is called at every look with the batches done and this rank's loss
    summed over the epoch's images so far and their number (utils.training.TrainingRun.on_look: TensorBoard).

    `stop` (data.commands.StopSignals): after the step in which a stop signal arrived (under DDP: at the next look,
    when every rank has heard of it), the epoch ends early with Progress.stopped set; the caller writes the
    mid-epoch checkpoint.

    An image that does not decode stops training with its name (InputError; under DDP at the next look, on every
    rank at once); with `bad` (a list) it is left out of its batch instead and (path, reason) appended to `bad`. A
    batch left empty is skipped by a single process; under DDP every rank must step together, so it takes part with
    a loss of zero."""
    model.train()
    progress = progress or Progress()
    normalize = model_input(model, device)
    flip = RandomHorizontalFlip(flip_generator) if flip_generator is not None else None
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    watch, undecoded, seen = _Watch(device), [], 0
    start = time.perf_counter()
    bar = tqdm(total=n_batches, initial=progress.step, desc=desc or f"epoch {epoch}", disable=not dist.is_main(),
               leave=False, dynamic_ncols=True)

    def look(done):
        """The one host synchronization: the flags (summed over ranks), the loss for the log."""
        flags = torch.stack([(~watch.finite).double(), torch.tensor(float(len(undecoded)), device=device),
                             torch.tensor(float(stop.requested if stop else 0), device=device)])
        non_finite, n_undecoded, signalled = dist.all_reduce_tensor(flags).tolist()
        if n_undecoded:  # every rank gathers the names, so that whichever rank torchrun hears first names the file
            named = [row for part in dist.all_gather(undecoded) for row in part]
            raise decode_error([e for _, e in named], [p for p, _ in named])
        if non_finite:
            where = f"batch {watch.bad_batch.item()}" if not watch.finite.item() else f"a batch up to {done}"
            value = watch.bad_value.item() if not watch.finite.item() else "not finite"
            raise NonFiniteLoss(f"loss is {value} at epoch {epoch}, {where}")
        loss_sum, counted = progress.loss_sum + watch.loss.item(), progress.seen + seen
        mean = loss_sum / max(counted, 1)
        rate = seen * dist.world_size() / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.1f}")
        log.info("epoch %d batch %d/%d  running loss %.4f  %.1f img/s", epoch, done, n_batches, mean, rate)
        if on_look is not None:
            on_look(done, loss_sum, counted)
        return int(signalled and (stop.requested or signal.SIGTERM))

    loader.sampler.skip = progress.step * loader.batch_size  # where a mid-epoch checkpoint stopped
    try:
        batches = iter(loader) if progress.step < n_batches else iter(())
        for step in range(progress.step, n_batches):
            images, targets, idx, _, errors = next(batches)
            weight = 1.0
            if any(errors):
                named = [(p, e) for p, e in zip(batch_paths(loader, idx), errors) if e]
                if bad is not None:
                    bad += named
                    keep = torch.tensor([not e for e in errors])
                    images, targets = (images[keep], targets[keep]) if keep.any() else (images, targets)
                    weight = 1.0 if keep.any() else 0.0
                elif dist.is_dist():
                    undecoded += named  # the other ranks hear of it at the next look, and all stop together
                else:
                    raise decode_error(errors, batch_paths(loader, idx))
            if weight or dist.is_dist():
                x = normalize(flip(images) if flip else images)
                targets = targets.to(device, non_blocking=True)
                with autocast(device, amp):
                    logits = model(x)
                loss = loss_fn(logits, targets) * weight
                optimizer_step(loss, optimizer, scaler)
                counted = images.shape[0] if weight else 0
                watch.add(loss, counted, step + 1)
                seen += counted
            bar.update()
            done = step + 1
            signalled = stop is not None and stop.requested and not dist.is_dist()
            if done == n_batches or done % look_every == 0 or signalled:
                progress.stopped = look(done)
                if progress.stopped and done < n_batches:
                    progress.step = done
                    break
            progress.step = done
    finally:
        bar.close()
        loader.sampler.skip = 0
    # rank 0 holds the sums of every rank from here on: what a checkpoint stores, and the epoch's mean
    total, count = dist.all_reduce_sum([progress.loss_sum + watch.loss.item(), progress.seen + seen], device)
    progress.loss_sum, progress.seen = (total, int(count)) if dist.is_main() else (0.0, 0)
    progress.seconds += time.perf_counter() - start
    if progress.step == n_batches:
        progress.loss, progress.rate = total / max(count, 1), count / max(progress.seconds, 1e-9)
    return progress


@torch.no_grad()
def predict(model, loader, device, *, amp=True, maps=False, desc="predict", max_batches=None, bad=None, stop=None,
            look_every=LOOK_EVERY):
    """Predictions over the whole dataset, gathered from every rank with each image exactly once.

    maps=True also keeps the class activation maps of all classes from the same forward pass (models.cam), at the
    feature map's resolution, so probabilities and maps can never disagree. An image that does not decode raises
    InputError naming it; with `bad` (a list) its row is left out instead (Predictions.indices says which rows are
    there) and (path, reason) appended to `bad`, in row order. `stop` (data.commands.StopSignals): a stop signal
    raises Stopped after the batch it arrived in (under DDP at the next of every `look_every` batches, on every
    rank together)."""
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
                parts["maps"].append(uncropped_maps(cams, sizes, getattr(net, "crop", None)).cpu().numpy())
            else:
                logits = model(x)
        parts["probs"].append(torch.sigmoid(logits.float()).cpu().numpy())
        parts["labels"].append(targets.numpy())
        parts["sizes"].append(sizes.numpy())
        parts["errors"].append(np.asarray(errors, dtype=object))
        parts["indices"].append(idx.numpy())
        if stop is not None and (not dist.is_dist() or (step + 1) % look_every == 0) and \
                stop.agreed(dist.summed(device)):
            raise Stopped(stop.requested or signal.SIGTERM)
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
    unpredicted = ~predicted_classes(net, n_classes)
    if unpredicted.any():  # a published model's NA classes: left out of every loss and metric, as unknown labels are
        rows["labels"][:, unpredicted] = -1
    return Predictions(indices[ok], rows["probs"][ok], rows["labels"][ok], rows["sizes"][ok],
                       gathered["maps"][ok] if gathered else None)


def predicted_classes(net, n_classes):
    """Boolean [C]: the classes the model predicts (all but a published model's NA classes, models.published)."""
    predicted = getattr(net.classifier, "predicted", None)
    return np.ones(n_classes, dtype=bool) if predicted is None else predicted.cpu().numpy().astype(bool)


def evaluate(model, loader, device, loss_fn, *, amp=True, maps=False, desc="evaluate", max_batches=None, bad=None,
             stop=None):
    """(loss, Predictions) over a whole split; the loss is computed from the gathered probabilities so that it is
    the same whatever the number of ranks. `bad`, `stop`: as predict's."""
    out = predict(model, loader, device, amp=amp, maps=maps, desc=desc, max_batches=max_batches, bad=bad, stop=stop)
    if len(out.probs) == 0:
        return math.nan, out
    # NaN: a class the model does not predict, whose labels predict() made -1, which the loss leaves out
    p = torch.from_numpy(out.probs).double().nan_to_num(0.5).clamp(1e-7, 1 - 1e-7)
    logits = torch.log(p) - torch.log1p(-p)
    return float(loss_fn(logits, torch.from_numpy(out.labels))), out


def validate(model, loader, device, loss_fn, *, amp=True, bad=None, stop=None):
    """evaluate() of the validation split; None when a stop signal cut it short (the caller checkpoints the run)."""
    try:
        return evaluate(model, loader, device, loss_fn, amp=amp, desc="validation", bad=bad, stop=stop)
    except Stopped:
        return None
