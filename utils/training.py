"""What a training run carries from one epoch to the next and into its checkpoints.

torchvision's references/classification/train.py keeps this in its epoch loop; here a mid-epoch stop (a spot VM's
preemption) that --resume continues from its batch, the ranks of a DDP run and a bucket copy of the run folder make
it worth a home of its own, so that traintest.py's loop reads at a glance: start the epoch, train, validate, end it
(or checkpoint a stop).

Rank 0 also writes what a person watches while the run goes on: RUN/history.csv (a row per epoch, rewritten whole
at each epoch's end, so that a resumed run's continues it) and TensorBoard scalars in RUN/tb/ when the tensorboard
package is installed (--tensorboard off: none). TensorBoard's step is the optimizer step: train/loss every
--log-every steps (the mean over the images since the last look), the per-epoch scalars at the epoch's last step,
so that a resumed run hides (purge_step) what the killed one logged after its last checkpoint.
"""
import logging
import math
import time

import pandas as pd
import torch

from data.errors import InputError
from data.files import write_text_atomic
from utils import dist
from utils.calibration import fitted_thresholds
from utils.checkpoint import model_checkpoint, resume_training, save_checkpoint, training_checkpoint
from utils.engine import NonFiniteLoss, Progress
from utils.metrics import choose_thresholds, mean_auroc
from utils.run_folder import CHECKPOINT_BEST, CHECKPOINT_LAST, HISTORY_CSV, TENSORBOARD_DIR, mirror, path, sync

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auroc", "lr", "images_per_s")


def write_history(history, run_dir):
    """RUN/history.csv: TrainingRun.history, a row per epoch (NA where the validation AUROC is undefined)."""
    frame = pd.DataFrame(list(history), columns=list(HISTORY_COLUMNS))
    write_text_atomic(path(run_dir, HISTORY_CSV), frame.to_csv(index=False, na_rep="NA", float_format="%.6g"))


def summary_writer(run_dir, purge_step):
    """A TensorBoard SummaryWriter of RUN/tb/, or None (with a log line) when the tensorboard package is missing.
    purge_step: the first step a resumed run logs (None for a new run), so that TensorBoard hides the events a killed
    run logged from there on."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # on use: tensorboard is an optional package
    except ImportError:
        log.info("no TensorBoard scalars: the tensorboard package is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(path(run_dir, TENSORBOARD_DIR), purge_step=purge_step)


class TrainingRun:
    """The state of one training run beside its model and optimizer: epochs done, the best validation macro AUROC,
    the per-epoch history, the cut epoch a mid-epoch checkpoint left (`cut`), the images --skip-bad-images left out
    (`bad`, a list, or None without the flag), and where its checkpoints go. With `resumed` (a last checkpoint's
    dict), everything is restored from it (utils.checkpoint.resume_training)."""

    def __init__(self, args, model, optimizer, scheduler, scaler, resumed=None):
        self.args, self.model, self.optimizer, self.scheduler, self.scaler = args, model, optimizer, scheduler, scaler
        self.config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
        self.last, self.best = path(args.output_dir, CHECKPOINT_LAST), path(args.output_dir, CHECKPOINT_BEST)
        self.bad = [] if args.skip_bad_images else None
        self.epoch, self.best_auroc, self.history, self.cut = 0, -math.inf, [], None
        if resumed is not None:
            self.epoch, self.best_auroc, self.history, self.cut, skipped = resume_training(
                resumed, self.last, model, optimizer, scheduler, scaler, args, dist.world_size())
            if self.bad is not None and dist.is_main():
                self.bad += skipped
        self.bucket = mirror(args)
        self.started = time.perf_counter()
        # TensorBoard (rank 0, opened at the first epoch's start): the steps of an epoch, and the sums of the last look
        self.board, self.board_open, self.n_batches, self.looked, self.epoch_index = None, False, 0, (0.0, 0), 0

    def log_start(self, device, amp_name, n_train, n_val, cache_dir):
        args, net = self.args, dist.unwrap(self.model)
        log.info("%s on %s x%d: %d train, %d val images, %d px, batch %d per process, loss %s, amp %s, %d workers%s%s",
                 net.model_args["name"], device.type, dist.world_size(), n_train, n_val, net.input_size,
                 args.batch_size, args.loss, amp_name, args.workers,
                 f", cache {cache_dir}" if cache_dir else ", cache" if args.cache else "",
                 ", compiled" if args.compile else "")
        if args.batch_size < 256:
            log.info("batch %d: CheXNet's recipe is batch 16 at lr 1e-3; a GPU trains several times faster at larger "
                     "batches, e.g. --batch-size 256 --lr %.3g (the learning rate scaled linearly with the batch)",
                     args.batch_size, args.lr * 256 / args.batch_size)

    def start_epoch(self, epoch, loader):
        """(progress, flips) for `epoch`: None or the cut epoch's progress, and the generator of its flips (seeded by
        the epoch, or where the cut epoch stopped); the loader's shuffle is the epoch's."""
        loader.sampler.set_epoch(epoch)
        flips = torch.Generator().manual_seed(self.args.seed * 100003 + epoch)
        progress = None
        if self.cut:  # the epoch a stop signal cut short: the rest of its batches, with their flips
            flips.set_state(self.cut["flips"])
            progress, self.cut = Progress.of_rank(self.cut), None
        self.n_batches = min(len(loader), self.args.max_train_batches or len(loader))
        self.looked = (progress.loss_sum, progress.seen) if progress else (0.0, 0)
        if self.args.tensorboard and dist.is_main() and not self.board_open:
            self.board_open = True
            # a resumed run logs after the step its checkpoint holds: what a killed run logged later is hidden
            done = self.global_step(epoch, progress.step if progress else 0)
            self.board = summary_writer(self.args.output_dir, done + 1 if done else None)
        self.epoch_index = epoch
        self.started = time.perf_counter()
        return progress, flips

    def global_step(self, epoch, step):
        """TensorBoard's step: optimizer steps since the run began (`step` batches into `epoch`, from 0)."""
        return epoch * self.n_batches + step

    def on_look(self, step, loss_sum, seen):
        """train_one_epoch's look at the loss after `step` batches of the epoch (this rank's loss summed over its
        `seen` images so far): train/loss in TensorBoard, the mean over the images since the previous look."""
        (before_sum, before_seen), self.looked = self.looked, (loss_sum, seen)
        if self.board is not None and seen > before_seen:
            self.board.add_scalar("train/loss", (loss_sum - before_sum) / (seen - before_seen),
                                  self.global_step(self.epoch_index, step))

    def close(self):
        """The TensorBoard file closed (written out); a later epoch does not reopen it."""
        if self.board is not None:
            self.board.close()
            self.board = None

    def save_stopped(self, epoch, progress, flips):
        """The mid-epoch checkpoint of a run a stop signal ended during `epoch` (index from 0), synced."""
        skipped = [row for part in dist.all_gather(self.bad or []) for row in part]
        if dist.is_main():
            save_checkpoint(training_checkpoint(
                self.model, self.optimizer, self.scheduler, self.scaler, config=self.config, epoch=epoch,
                best_auroc=self.best_auroc, history=self.history, skipped=skipped, progress={
                    **progress.as_dict(), "batch_size": self.args.batch_size, "world_size": dist.world_size(),
                    "flips": flips.get_state()}), self.last)
            self.close()
            sync(self.bucket, self.args.output_dir)
        dist.barrier()

    def end_epoch(self, epoch, progress, val_loss, val, n_val):
        """After `epoch`'s training (`progress`) and validation (loss, Predictions of its n_val images): the learning
        rate schedule, the history and its log line, the best checkpoint (with the thresholds, and the temperatures
        of --calibrate, fitted on this validation) when the macro AUROC improved, the last checkpoint, history.csv,
        the epoch's TensorBoard scalars (closed after the last epoch), the sync."""
        if len(val.indices) == 0:
            raise InputError(f"none of the {n_val} validation images of {self.args.csv} decoded")
        if not math.isfinite(val_loss):
            raise NonFiniteLoss(f"validation loss is {val_loss} after epoch {epoch + 1}")
        val_auroc = mean_auroc(val.labels, val.probs)
        self.scheduler.step(val_loss)
        improved = math.isnan(val_auroc) and self.best_auroc == -math.inf or val_auroc > self.best_auroc
        if improved:
            self.best_auroc = val_auroc if not math.isnan(val_auroc) else self.best_auroc
        lr = self.optimizer.param_groups[0]["lr"]
        self.history.append({"epoch": epoch + 1, "train_loss": progress.loss, "val_loss": val_loss,
                             "val_auroc": val_auroc, "lr": lr, "images_per_s": progress.rate})
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val mean AUROC %.4f%s  lr %.2g  %.1f img/s  %.0f s",
                 epoch + 1, self.args.epochs, progress.loss, val_loss, val_auroc, " (best)" if improved else "", lr,
                 progress.rate, time.perf_counter() - self.started)
        if dist.is_main():
            if improved:  # the best checkpoint is a model only, with the thresholds chosen on validation
                thresholds, temperatures = fitted_thresholds(val.labels, val.probs, self.args.calibrate,
                                                             choose_thresholds)
                save_checkpoint(model_checkpoint(self.model, config=self.config, epoch=epoch + 1,
                                                 val_auroc=val_auroc, thresholds=thresholds,
                                                 temperatures=temperatures), self.best)
            save_checkpoint(training_checkpoint(self.model, self.optimizer, self.scheduler, self.scaler,
                                                config=self.config, epoch=epoch + 1, best_auroc=self.best_auroc,
                                                history=self.history), self.last)
            write_history(self.history, self.args.output_dir)
            self.board_epoch(epoch, self.history[-1])
            sync(self.bucket, self.args.output_dir)
        dist.barrier()

    def board_epoch(self, epoch, row):
        """The epoch's scalars of `row` (a history row) at the epoch's last step; after the last epoch, closed (an
        epoch without a defined validation AUROC logs NaN there, as history.csv's NA)."""
        if self.board is None:
            return
        at = self.global_step(epoch + 1, 0)
        for tag, key in (("train/epoch_loss", "train_loss"), ("val/loss", "val_loss"),
                         ("val/macro_auroc", "val_auroc"), ("lr", "lr")):
            self.board.add_scalar(tag, row[key], at)
        self.board.flush()
        if epoch + 1 >= self.args.epochs:
            self.close()
