"""Step 4: train, evaluate and apply CheXNet or the Unified DCNN of ChestX-ray8 on combined.csv.

  python traintest.py --csv combined.csv --output-dir runs/chexnet                 # train, then evaluate on test
  torchrun --nproc_per_node 8 traintest.py --csv combined.csv --output-dir runs/r  # the same on 8 GPUs (DDP)
  python traintest.py --resume runs/chexnet --epochs 30                            # continue a stopped run
  python traintest.py --csv combined.csv --output-dir gs://BUCKET/runs/r           # a spot VM: synced to the bucket,
  python traintest.py --resume gs://BUCKET/runs/r                                  # and continued on the next VM
  python traintest.py --csv combined.csv --output-dir runs/eval --test-only --load-model runs/chexnet/checkpoint_best.pt
  python traintest.py --predict new_studies/ --load-model runs/chexnet/checkpoint_best.pt --output-dir predictions/
  python traintest.py --csv combined.csv --test-only --load-model xrv:densenet121-res224-all --output-dir runs/xrv
  python traintest.py --csv combined.csv --train-sources padchest --test-sources openi ...  # external validation
  python traintest.py --test-only --load-model runs/a/checkpoint_best.pt --csv other.csv --eval-split all ...
  python -m utils.compare runs/a runs/b                                            # paired comparison of two runs

Writes to the output folder: checkpoint_last.pt (for --resume), checkpoint_best.pt (best validation macro AUROC over
the 20 findings, with the F1-optimal thresholds chosen on validation, and with --calibrate the temperatures), args.json,
train.log, metrics.csv (per group: all, source, view, padchest-physician, external:<source>; patient-bootstrap
intervals), predictions.csv, thresholds.csv, calibration.csv, reliability.png, roc.png, heatmaps/, boxes.csv,
localization.csv (with --boxes-csv) and report.html; --predict adds
predict_errors.csv (path, error: the files that did not decode), --skip-bad-images skipped_images.csv.
Every flag, input file (combined.csv and its images included) and output location is checked before any work starts
and before --overwrite deletes anything; bad input is one line on stderr and exit status 2. SIGTERM (a spot VM's
preemption) or Ctrl-C while training: the current step ends, checkpoint_last.pt is written mid-epoch (and synced),
one line says how to continue (--resume), exit status 0; outside training (set-up, the cache build, the test) one
line and exit status 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
The seed's spellings (--run-dir, --out, --load_model, --save_model, --batch_size, --is_training 0) still work.
"""
import argparse
import logging
import os
import sys

import torch

from data.cache import cache_folder
from data.classes import CLASSES, NUM_CLASSES
from data.commands import Parser, StopSignals, run_main
from data.dataset import image_frame, read_combined, selected_rows, split, training_splits
from data.errors import InputError
from data.files import copy_file
from data.views import parse_views
from models import LOSSES, MIN_INPUT_SIZE, MODEL_NAMES, canonical_name
from utils import dist
from utils.calibration import fitted_thresholds, reported_probs
from utils.checkpoint import input_size, load_model, load_weights, model_input_size, read_checkpoint, training_model
from utils.cli import amp_setting, at_least, cache_dir_setting, checked, given_flags, on_off, parse_sources
from utils.engine import LOOK_EVERY, NonFiniteLoss, evaluate, make_loader, predict, train_one_epoch, validate
from utils.evaluation import TEST, evaluation_sets, judge, write_predictions
from utils.localization import localize, parse_levels, read_box_csv
from utils.metrics import choose_thresholds, headline, parse_classes, summary_line, write_thresholds
from utils.report import write_report
from utils.run_folder import (CHECKPOINT_LAST, begin, check_locations, interrupted_hint, locate, mirror, path,
                              resumed_args, stopped_line, sync, write_skipped)
from utils.runtime import amp_name, close_logging, grad_scaler, seed_everything, setup_logging, use_amp
from utils.training import TrainingRun

log = logging.getLogger("traintest")


def get_args_parser():
    p = Parser(prog="traintest.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--csv", help="combined.csv from combinelabels.py (ImageID, path, split and the 22 class columns)")
    io.add_argument("--output-dir", "--run-dir", "--out", dest="output_dir", metavar="DIR",
                    help="folder for checkpoints, logs, metrics and heatmaps (training default: runs/run; --predict "
                         "needs one); a gs://BUCKET/runs/NAME URL: the run is written in a local work folder "
                         "($XDG_CACHE_HOME/traintest/runs/...) and copied there as --sync-to does")
    io.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint_last.pt with "
                    "the arguments it was started with; flags given with it replace them (e.g. --epochs 30, --lr), "
                    "except those that shape the model, which the checkpoint fixes. A gs:// URL (--sync-to's): the "
                    "run is fetched from the bucket first (a fresh VM), and synced there as it goes on")
    io.add_argument("--sync-to", metavar="gs://BUCKET/runs/NAME", help="copy the run folder to this bucket prefix "
                    "after each checkpoint and at the end (only files that changed), so that --resume URL continues "
                    "it on another machine (a preempted spot VM's successor); write access is tried before any work")
    io.add_argument("--load-model", "--load_model", metavar="CKPT", help="checkpoint to evaluate (--test-only), to "
                    "predict with (--predict), or to start training from; or a published model: a torchxrayvision "
                    "or CheXNet-port file, or xrv:NAME (e.g. xrv:densenet121-res224-all, from ~/.torchxrayvision)")
    io.add_argument("--save-model", "--save_model", metavar="PATH", help="also copy the best checkpoint to PATH")
    io.add_argument("--test-only", action="store_true", help="only evaluate --load-model on the test split")
    io.add_argument("--is_training", type=int, choices=[0, 1], help=argparse.SUPPRESS)  # the seed's --test-only
    io.add_argument("--predict", metavar="PATH", help="predict new studies: a PNG/JPEG/DICOM file or a folder of "
                    "them (ImageID = file stem); needs --load-model and --output-dir")
    io.add_argument("--skip-missing", action="store_true",
                    help="drop rows whose image file is missing (with a warning) instead of stopping")
    io.add_argument("--skip-bad-images", action="store_true", help="leave out images that do not decode (truncated, "
                    "not an image) instead of stopping at the first; they are counted in the log and listed in "
                    "skipped_images.csv (--predict always does this, into predict_errors.csv)")
    io.add_argument("--overwrite", action="store_true", help="train into an output folder that already holds a run: "
                    "its checkpoints and results are deleted first, so that nothing of the old run can be resumed or "
                    "mixed with the new one (without it such a folder is refused: continue it with --resume)")

    m = p.add_argument_group("model")
    m.add_argument("--model", default="chexnet", type=checked(canonical_name),
                   help=f"{', '.join(MODEL_NAMES)} (the seed's densenet, resnet, vgg are aliases)")
    m.add_argument("--pretrained", nargs="?", const=True, default=False, type=on_off, metavar="on|off",
                   help="start from torchvision's ImageNet weights: --weights FILE, or torch.hub's cache, into which "
                   "torchvision downloads them when they are absent (offline: the message names the file to put "
                   "there)")
    m.add_argument("--weights", metavar="FILE", help="ImageNet weights file of the backbone for --pretrained")
    m.add_argument("--pooling", default="lse", choices=["lse", "max", "avg"],
                   help="global pooling of the Unified DCNN (CheXNet always averages)")
    m.add_argument("--lse-r", type=at_least(0.0, float, above=True), default=10.0,
                   help="sharpness r of LSE pooling (the paper's best: 10)")
    m.add_argument("--map-size", type=at_least(1), help="resize the Unified DCNN's transition map to S x S (8, 16, 32)")
    m.add_argument("--image-size", type=at_least(1), help="input side in pixels (default 224; a checkpoint's own size "
                   "when evaluating or predicting); at least " + ", ".join(f"{v} for {k}" for k, v in
                                                                         MIN_INPUT_SIZE.items()))

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=at_least(1), default=20, help="number of epochs")
    t.add_argument("--batch-size", "--batch_size", type=at_least(1), default=16, help="images per batch per process")
    t.add_argument("--lr", type=at_least(0.0, float, above=True), default=1e-3,
                   help="Adam learning rate (CheXNet: 1e-3)")
    t.add_argument("--weight-decay", type=at_least(0.0, float), default=0.0, help="Adam weight decay")
    t.add_argument("--lr-patience", type=at_least(0), default=1,
                   help="epochs without validation-loss improvement before the learning rate is divided by 10")
    t.add_argument("--loss", default="bce", choices=sorted(LOSSES),
                   help="bce: CheXNet's binary cross-entropy; wcel: ChestX-ray8's weighted cross-entropy")
    t.add_argument("--amp", default="auto", type=amp_setting, metavar="auto|on|off",
                   help="mixed precision. CUDA (auto and on): bfloat16 autocast on GPUs that have it natively (Ampere "
                   "and later; no GradScaler), float16 with a GradScaler on older ones. CPU: bfloat16 autocast; auto "
                   "only on CPUs with native bfloat16 (AVX-512 BF16/AMX; elsewhere it is emulated and many times "
                   "slower); on CUDA auto takes fp16 instead where benchmarks.bench_gpu measured it faster for this "
                   "GPU and model and its convergence check agreed (utils.runtime.MEASURED_AMP)")
    t.add_argument("--compile", action="store_true", help="wrap the model in torch.compile: minutes of compilation "
                   "at the start, then faster steps on a GPU (CheXNet, bf16, batch 256 on an H200: about 1.2x; "
                   "benchmarks/bench_gpu.py measures it). Off by default: not worth its compilation on a CPU, and "
                   "unmeasured on most GPUs")
    t.add_argument("--workers", type=at_least(0), default=min(4, max(1, (os.cpu_count() or 2) - 1)),
                   help="DataLoader worker processes per training process")
    t.add_argument("--cache", action="store_true", help="keep decoded, resized images in shared memory so that "
                   "epochs after the first decode nothing (needs N x image_size^2 bytes of RAM); instead of the "
                   "persistent --cache-dir")
    t.add_argument("--cache-dir", type=cache_dir_setting, metavar="DIR|off", help="persistent cache of the train and "
                   "val images decoded at the training size: one memory-mapped uint8 file per image list and size, "
                   "built once with every core before the first epoch, then shared by every process on the machine "
                   "(DDP ranks) and by later runs; rebuilt when an image, the list or the size changes (default: "
                   "cache/ beside --csv; off: decode every epoch, or keep them in memory with --cache)")
    t.add_argument("--log-every", type=at_least(1), default=LOOK_EVERY, metavar="N",
                   help="steps between looks at the loss (the log's running loss, a NaN stopping the run; under DDP "
                   "also when the ranks agree on a stop signal); the steps in between never wait for the GPU")
    t.add_argument("--tensorboard", nargs="?", const=True, default=True, type=on_off, metavar="on|off",
                   help="TensorBoard scalars in RUN/tb/ when the tensorboard package is installed (off: none)")
    t.add_argument("--seed", type=int, default=0, help="random seed (shuffling, flips, initialization)")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: a killed and resumed run ends with the same metrics")
    t.add_argument("--threads", type=at_least(1), help="torch intra-op threads per process (default: torch's choice, "
                   "one per core; 1 is faster on a CPU shared with other busy processes)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    t.add_argument("--max-train-batches", type=at_least(1),
                   help="stop each epoch after this many batches (smoke tests)")
    t.add_argument("--limit", type=at_least(1), help="use only the first N rows of each split (smoke tests)")

    e = p.add_argument_group("which images, and how results are judged")
    e.add_argument("--views", default="frontal", type=checked(lambda text: parse_views(text) and text or text),
                   help="views trained and evaluated on: a comma list of view values (PA, AP, AP_horizontal, LL, "
                   "...) or 'frontal' / 'lateral' for all of a kind, or 'all' (default: frontal, as CheXNet and "
                   "ChestX-ray8; images of unknown view are counted and left out unless 'all': label them with "
                   "python -m utils.view_classifier)")
    e.add_argument("--train-sources", type=checked(parse_sources), metavar="NAMES",
                   help="train and validate only on these sources (names of the Source column, comma-separated)")
    e.add_argument("--test-sources", type=checked(parse_sources), metavar="NAMES",
                   help="held-out sources: every one of their images (all splits) is evaluated as 'external:<name>' "
                   "in metrics.csv, beside the test split of the training sources (external validation)")
    e.add_argument("--eval-split", choices=["test", "all"], default="test",
                   help="with --test-only: evaluate the test split (default), or every image of --csv (a dataset the "
                   "model never saw: external validation of a finished model)")
    e.add_argument("--calibrate", action="store_true",
                   help="fit one temperature per class on validation (log-loss) and re-choose the thresholds on the "
                   "calibrated probabilities; calibration.csv shows ECE and log-loss on test before and after (a "
                   "class without both labels in validation, or one that validation separates perfectly, keeps "
                   "temperature 1: no finite temperature fits it)")
    e.add_argument("--bootstrap", type=at_least(0), default=1000,
                   help="bootstrap resamples for the 95%% intervals (resampling patients, all their images together)")

    h = p.add_argument_group("localization")
    h.add_argument("--heatmap-classes", type=checked(parse_classes), help="comma-separated classes to map for every "
                   "image (default: the classes predicted positive at the validation thresholds)")
    h.add_argument("--box-thresholds", default="60,180", type=checked(parse_levels),
                   help="heatmap levels (0-255) at which boxes are drawn")
    h.add_argument("--boxes-csv", metavar="FILE", help="ground-truth boxes (NIH BBox_List_2017 layout) to score "
                   "localization against")
    h.add_argument("--max-heatmaps", type=at_least(0), default=50, help="at most this many images get heatmap PNGs; "
                   "boxes are found on every image (0: skip heatmaps, boxes and localization)")
    return p


def parse_args(argv):
    """The command line; with --resume, the run's stored arguments are the defaults the flags given replace."""
    parser = get_args_parser()
    given = given_flags(parser, argv)
    args = resumed_args(parser, argv, given) if "resume" in given else parser.parse_args(argv)
    args.given, args.test_only = given, args.test_only or args.is_training == 0
    return args


def check_flags(args):
    """The flags that do not go together, before any work: InputError naming the first."""
    training = not (args.predict or args.test_only)
    if args.predict and not (args.load_model and args.output_dir):
        raise InputError("--predict needs --load-model CKPT and --output-dir DIR")
    if args.test_only and not args.load_model:
        raise InputError("--test-only needs --load-model CKPT")
    if training and not args.resume and args.weights and not args.pretrained:
        raise InputError(f"--weights {args.weights} is read only with --pretrained; add --pretrained or drop --weights")
    unused = [k for k in ("heatmap_classes", "box_thresholds", "boxes_csv") if k in args.given]
    if args.max_heatmaps == 0 and unused:
        raise InputError(f"--{unused[0].replace('_', '-')} does nothing with --max-heatmaps 0 (no heatmaps, boxes or "
                         f"localization)")
    if training and args.image_size:
        input_size(args.model, args.image_size)
    if args.boxes_csv and args.max_heatmaps != 0:
        read_box_csv(args.boxes_csv)  # a bad row is found now, not after training
    if training and args.cache and args.cache_dir not in (None, "off"):
        raise InputError(f"--cache keeps the images in memory, --cache-dir {args.cache_dir} on disk: give one of them")


def run_rows(args):
    """combined.csv's rows this run uses (--views, --train-sources, --test-sources), its image files checked."""
    frame = read_combined(args.csv, CLASSES, args.skip_missing)
    return selected_rows(frame, args.csv, args.views, args.train_sources, args.test_sources)


def loader(frame, args, image_size, train=False, cache_dir=None, crop=None):
    return make_loader(frame, image_size, CLASSES, batch_size=args.batch_size, workers=args.workers, train=train,
                       seed=args.seed, cache=args.cache, cache_dir=cache_dir, crop=crop,
                       pin_memory=torch.cuda.is_available() and args.device != "cpu")


def train(args, device, amp, stop):
    """Train, then test the best model; a stop signal ends it early with a checkpoint, and the one line main() prints
    is returned."""
    frame = run_rows(args)
    train_frame, val_frame = training_splits(frame, args.csv, args.test_sources, args.limit)
    sets = evaluation_sets(frame, args.test_sources, limit=args.limit, csv_path=args.csv)
    model, resumed = training_model(args, path(args.output_dir, CHECKPOINT_LAST))
    begin(args, new_run=not args.resume, card=model.card)

    image_size, crop = model.input_size, model.crop
    model = dist.wrap(model.to(device, memory_format=torch.channels_last), device)
    if args.compile:
        model = torch.compile(model)
    # fused on CUDA: one kernel for all parameters, and a GradScaler's inf check stays on the device
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay,
                                 fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=args.lr_patience)
    scaler, loss_fn = grad_scaler(amp, device), LOSSES[args.loss]
    run = TrainingRun(args, model, optimizer, scheduler, scaler, resumed)
    cache_dir = cache_folder(args.csv, args.cache_dir, in_memory=args.cache)
    train_loader = loader(train_frame, args, image_size, train=True, cache_dir=cache_dir, crop=crop)
    val_loader = loader(val_frame, args, image_size, cache_dir=cache_dir, crop=crop)
    run.log_start(device, amp_name(amp), len(train_frame), len(val_frame), cache_dir)
    n_batches = min(len(train_loader), args.max_train_batches or len(train_loader))

    with stop.deferred():  # from here a stop signal ends the run at a step's end, with a checkpoint
        for epoch in range(run.epoch, args.epochs):
            if stop.agreed(dist.summed(device)):  # it came while the last checkpoint was written, which holds the run
                return stopped_line(stop, args, f"after epoch {epoch}")
            progress, flips = run.start_epoch(epoch, train_loader)
            progress = train_one_epoch(model, train_loader, optimizer, loss_fn, device, epoch + 1, scaler=scaler,
                                       amp=amp, flip_generator=flips, max_batches=args.max_train_batches,
                                       desc=f"epoch {epoch + 1}/{args.epochs}", bad=run.bad, progress=progress,
                                       stop=stop, look_every=args.log_every, on_look=run.on_look)
            val = None if progress.stopped else validate(model, val_loader, device, loss_fn, amp=amp, bad=run.bad,
                                                         stop=stop)
            if val is None:  # a stop signal, in training or validation
                run.save_stopped(epoch, progress, flips)
                return stopped_line(stop, args, f"in epoch {epoch + 1} after batch {progress.step} of {n_batches}")
            run.end_epoch(epoch, progress, *val, n_val=len(val_frame))
        if stop.agreed(dist.summed(device)):
            return stopped_line(stop, args, f"after epoch {args.epochs}, before the test")

    # Evaluate the best model, with thresholds chosen on validation by that same model.
    best = read_checkpoint(run.best)
    load_weights(dist.unwrap(model), best["model"], run.best)
    if dist.is_main():
        write_thresholds(best["thresholds"], args.output_dir)
    if dist.is_main() and args.save_model:
        copy_file(run.best, args.save_model)
    test(model, sets, args, device, amp, best["thresholds"], best.get("temperatures"), image_size, run.bad)


def evaluate_only(args, device, amp):
    """--test-only: the checkpoint on the test split of --csv, or on every row of a CSV it was not trained on."""
    model, ckpt = load_model(args.load_model)
    image_size = model_input_size(args, model)
    frame = run_rows(args)
    sets = evaluation_sets(frame, args.test_sources, args.eval_split == "all", args.limit, args.csv)
    thresholds, temperatures = ckpt.get("thresholds"), ckpt.get("temperatures")
    val = split(frame, "val", args.limit) if thresholds is None or (args.calibrate and temperatures is None) else None
    if val is not None and len(val) == 0:
        raise InputError(f"{args.load_model} stores no {'temperatures' if thresholds else 'thresholds'} and "
                         f"{args.csv} has no val rows to fit them on")
    begin(args, card=model.card)
    trained_on = (ckpt.get("config") or {}).get("csv")
    if trained_on and os.path.abspath(trained_on) != os.path.abspath(args.csv) and args.eval_split == "test":
        log.info("%s was trained on %s; evaluating the test split of %s (--eval-split all: every image of it)",
                 args.load_model, trained_on, args.csv)
    model.to(device, memory_format=torch.channels_last)
    bad = [] if args.skip_bad_images else None
    if val is not None:
        _, out = evaluate(model, loader(val, args, image_size, crop=model.crop), device, LOSSES[args.loss], amp=amp,
                          desc="validation", bad=bad)
        thresholds, temperatures = fitted_thresholds(out.labels, out.probs, args.calibrate, choose_thresholds)
    if dist.is_main():
        write_thresholds(thresholds, args.output_dir)
    test(model, sets, args, device, amp, thresholds, temperatures, image_size, bad)


def predict_new(args, device, amp):
    """--predict PATH: probabilities and labels for new studies, then heatmaps, boxes and the report. A file that does
    not decode is a row of predict_errors.csv (path, error), and the others are predicted."""
    frame = image_frame(args.predict)
    model, ckpt = load_model(args.load_model)
    thresholds = ckpt.get("thresholds") or [0.5] * NUM_CLASSES
    image_size = model_input_size(args, model)
    begin(args, card=model.card)
    model.to(device, memory_format=torch.channels_last)
    bad = []
    out = predict(model, loader(frame, args, image_size, crop=model.crop), device, amp=amp,
                  maps=args.max_heatmaps != 0, bad=bad)
    # a calibrated model's thresholds apply to its calibrated probabilities
    out = out._replace(probs=reported_probs(out.probs, ckpt.get("temperatures")).reported)
    write_predictions(args.output_dir, frame, out, thresholds, bad, args.predict)
    if dist.is_main():
        report_results(frame, out, args, thresholds, image_size)


def test(model, sets, args, device, amp, thresholds, temperatures, image_size, bad):
    """Evaluate each set (one pass each); metrics.csv, predictions.csv, calibration.csv, roc.png, and step 5 from the
    test split's pass (rank 0)."""
    results, mapped = {}, None
    for name, rows in sets.items():
        maps = args.max_heatmaps != 0 and mapped is None
        rows_loader = loader(rows, args, image_size, crop=dist.unwrap(model).crop)
        loss, out = evaluate(model, rows_loader, device, LOSSES[args.loss], amp=amp, maps=maps, desc=name, bad=bad)
        if len(out.indices) == 0:
            raise InputError(f"none of the {len(rows)} {name} images of {args.csv} decoded")
        # the set's probabilities, once: judge() gets the model's and the reported ones (calibration.csv shows both),
        # step 5 the reported (calibrated, rounded) ones
        probs = reported_probs(out.probs, temperatures)
        results[name] = (rows.iloc[out.indices].reset_index(drop=True), probs, out.labels)
        out = out._replace(probs=probs.reported)
        mapped = mapped or (rows, out)
        log.info("%s loss %.4f (%d images)", name, loss, len(out.indices))
    write_skipped(bad, args.output_dir)
    if dist.is_main():
        table = judge(args.output_dir, results, thresholds, n_boot=args.bootstrap, seed=args.seed)
        log.info(summary_line(table))
        for name in results:
            if name != TEST:
                log.info("%s: macro AUROC %s", name, headline(table, name) or "NA")
        report_results(*mapped, args, thresholds, image_size)


def report_results(frame, predictions, args, thresholds, image_size):
    """Step 5 from the forward pass that predicted `frame` (heatmaps, boxes, localization), then report.html."""
    if args.max_heatmaps != 0:
        localize(frame, predictions, args.output_dir, input_size=image_size, thresholds=thresholds,
                 classes=args.heatmap_classes, box_thresholds=args.box_thresholds, boxes_csv=args.boxes_csv,
                 max_images=args.max_heatmaps)
    log.info("report: %s", write_report(args.output_dir))


def run(args):
    """The run the command line asks for; the line to print when a stop signal ended it early (None otherwise)."""
    with StopSignals() as stop:
        device = dist.init_distributed(args.device)
        amp = use_amp(args.amp, device, args.model)
        if args.threads:
            torch.set_num_threads(args.threads)
        setup_logging()
        check_flags(locate(args))
        check_locations(args, training=not (args.predict or args.test_only))
        seed_everything(args.seed + dist.rank(), args.deterministic)
        if args.predict:
            stopped = predict_new(args, device, amp)
        elif args.test_only:
            stopped = evaluate_only(args, device, amp)
        else:
            stopped = train(args, device, amp, stop)
        sync(mirror(args), args.output_dir)
        return stopped


def main(argv=None):
    def flow(args):
        stopped = run(args)
        if stopped and dist.is_main():
            print(stopped, file=sys.stderr)
    return run_main("traintest.py", parse_args, flow, argv, interrupted=interrupted_hint,
                    cleanup=(close_logging, dist.cleanup), errors={NonFiniteLoss: "; stopped, the last good checkpoint "
                                                                   "is kept (try a lower --lr or --amp off)"})


if __name__ == "__main__":
    sys.exit(main())
