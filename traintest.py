"""Step 4: train, evaluate and apply CheXNet or the Unified DCNN of ChestX-ray8 on combined.csv.

  python traintest.py --csv combined.csv --output-dir runs/chexnet                 # train, then evaluate on test
  torchrun --nproc_per_node 8 traintest.py --csv combined.csv --output-dir runs/r  # the same on 8 GPUs (DDP)
  python traintest.py --resume runs/chexnet --epochs 30                            # continue a stopped run
  python traintest.py --csv combined.csv --output-dir gs://BUCKET/runs/r           # a spot VM: synced to the bucket,
  python traintest.py --resume gs://BUCKET/runs/r                                  # and continued on the next VM
  python traintest.py --csv combined.csv --output-dir runs/eval --test-only --load-model runs/chexnet/checkpoint_best.pt
  python traintest.py --predict new_studies/ --load-model runs/chexnet/checkpoint_best.pt --output-dir predictions/
  python traintest.py --csv combined.csv --train-sources padchest --test-sources openi ...  # external validation
  python traintest.py --test-only --load-model runs/a/checkpoint_best.pt --csv other.csv --eval-split all ...
  python -m utils.compare runs/a runs/b                                            # paired comparison of two runs

Writes to the output folder: checkpoint_last.pt (for --resume), checkpoint_best.pt (best validation macro AUROC over
the 20 findings, with the F1-optimal thresholds chosen on validation, and with --calibrate the temperatures), args.json,
train.log, metrics.csv (per group: all, source, view, padchest-physician, external:<source>; patient-bootstrap
intervals), predictions.csv, thresholds.csv, calibration.csv, reliability.png, roc.png, heatmaps/, boxes.csv,
localization.csv (with --boxes-csv) and report.html; --predict adds
predict_errors.csv (path, error: the files that did not decode), --skip-bad-images skipped_images.csv.
Every flag and output location is checked before any work starts; bad input is one line on stderr and exit status
2. SIGTERM (a spot VM's preemption) or Ctrl-C while training: the current step ends, checkpoint_last.pt is written
mid-epoch (and synced), one line says how to continue (--resume), exit status 0; outside training (set-up, the
cache build, the test) one line and exit status 128 + the signal's number (130 for Ctrl-C).
The seed's spellings (--run-dir, --out, --load_model, --save_model, --batch_size, --is_training 0) still work.
"""
import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import time

import pandas as pd
import torch

from data.classes import CLASSES, NUM_CLASSES
from data.dataset import image_frame, read_combined, split
from data.views import parse_views, view_mask
from data.errors import InputError
from data.files import atomic_path, output_file, output_folder, write_text_atomic
from data.gcs import BucketFolder, is_gcs_url
from models import LOSSES, MIN_INPUT_SIZE, MODEL_NAMES, build_model, canonical_name, model_options
from utils import dist
from utils.checkpoint import (checkpoint_model, load_checkpoint, load_weights, model_checkpoint, pretrained_model,
                              read_checkpoint, restore_training, save_checkpoint, training_checkpoint, training_state)
from utils.engine import LOOK_EVERY, NonFiniteLoss, Progress, Stopped, evaluate, make_loader, predict, train_one_epoch
from utils.calibration import fitted_thresholds, reported_probs
from utils.evaluation import TEST, evaluation_sets, judge
from utils.localization import localize, parse_levels, read_box_csv
from utils.metrics import (choose_thresholds, headline, mean_auroc, parse_classes, predictions_frame, summary_line,
                           write_thresholds)
from utils.report import write_report
from utils.cli import Parser, amp_setting, at_least, cache_dir_setting, checked, given_flags, on_off, stored_args
from utils.run_sync import pull_run, work_folder
from utils.runtime import (StopSignals, amp_name, close_logging, grad_scaler, seed_everything, setup_logging,
                           use_amp)

log = logging.getLogger("traintest")


def parse_sources(text):
    """A comma list of Source names."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ValueError(f"{text!r} names no source")
    return names


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
                    "predict with (--predict), or to start training from")
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
    m.add_argument("--model", default="chexnet", type=checked(canonical_name), help=f"{', '.join(MODEL_NAMES)} (the seed's "
                   "densenet, resnet, vgg are aliases)")
    m.add_argument("--pretrained", nargs="?", const=True, default=False, type=on_off, metavar="on|off",
                   help="start from torchvision's ImageNet weights: --weights FILE, or torch.hub's cache, into which "
                   "torchvision downloads them when they are absent (offline: the message names the file to put "
                   "there)")
    m.add_argument("--weights", metavar="FILE", help="ImageNet weights file of the backbone for --pretrained")
    m.add_argument("--pooling", default="lse", choices=["lse", "max", "avg"],
                   help="global pooling of the Unified DCNN (CheXNet always averages)")
    m.add_argument("--lse-r", type=at_least(0.0, float, above=True), default=10.0, help="sharpness r of LSE pooling (the paper's best: 10)")
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
                   "slower)")
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
    t.add_argument("--seed", type=int, default=0, help="random seed (shuffling, flips, initialization)")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: a killed and resumed run ends with the same metrics")
    t.add_argument("--threads", type=at_least(1), help="torch intra-op threads per process (default: torch's choice, one "
                   "per core; 1 is faster on a CPU shared with other busy processes)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    t.add_argument("--max-train-batches", type=at_least(1), help="stop each epoch after this many batches (smoke tests)")
    t.add_argument("--limit", type=at_least(1), help="use only the first N rows of each split (smoke tests)")

    e = p.add_argument_group("which images, and how results are judged")
    e.add_argument("--views", default="frontal", type=checked(lambda text: parse_views(text) and text or text),
                   help="views trained and evaluated on: a comma list of view values (PA, AP, AP_horizontal, LL, ...) "
                   "or 'frontal' / 'lateral' for all of a kind, or 'all' (default: frontal, as CheXNet and ChestX-ray8; "
                   "images of unknown view are counted and left out unless 'all': label them with python -m "
                   "utils.view_classifier)")
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
    h.add_argument("--heatmap-classes", type=checked(parse_classes), help="comma-separated classes to map for every image "
                   "(default: the classes predicted positive at the validation thresholds)")
    h.add_argument("--box-thresholds", default="60,180", type=checked(parse_levels),
                   help="heatmap levels (0-255) at which boxes are drawn")
    h.add_argument("--boxes-csv", metavar="FILE", help="ground-truth boxes (NIH BBox_List_2017 layout) to score "
                   "localization against")
    h.add_argument("--max-heatmaps", type=at_least(0), default=50, help="at most this many images get heatmap PNGs; boxes "
                   "are found on every image (0: skip heatmaps, boxes and localization)")
    return p


# What a resumed run's checkpoint fixes: its model (with its input) and where it starts from.
MODEL_FLAGS = ("model", "pretrained", "weights", "pooling", "lse_r", "map_size", "image_size", "load_model")


def parse_args(argv):
    """The command line; with --resume, the run's stored arguments are the defaults it replaces (a gs:// run is
    fetched into its local work folder first)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    if args.resume:
        refused = [k for k in given if k in MODEL_FLAGS]
        if refused:
            raise InputError(f"--resume continues {args.resume}'s own model; it cannot change "
                             f"{', '.join('--' + k.replace('_', '-') for k in refused)} (start a new run with "
                             f"--load-model {args.resume}/checkpoint_best.pt to fine-tune)")
        url = args.resume if is_gcs_url(args.resume) else None
        folder = work_folder(url) if url else args.resume
        if url:
            pull_run(url, folder)
        known = vars(parser.parse_args([]))
        parser.set_defaults(**{k: v for k, v in stored_args(folder).items()
                               if k in known and k not in ("resume", "overwrite")})
        args = parser.parse_args(argv)
        args.resume = args.output_dir = folder
        args.sync_to = url or args.sync_to
    args.given, args.test_only = given, args.test_only or args.is_training == 0
    return args


def loader(frame, args, image_size, train=False, cache_dir=None):
    return make_loader(frame, image_size, CLASSES, batch_size=args.batch_size, workers=args.workers, train=train,
                       seed=args.seed, cache=args.cache, cache_dir=cache_dir,
                       pin_memory=torch.cuda.is_available() and args.device != "cpu")


def new_model(args):
    options = {"pooling": args.pooling, "lse_r": args.lse_r, "map_size": args.map_size,
               "input_size": args.image_size or 224}
    options = {k: v for k, v in options.items() if k in model_options(args.model)}
    if args.pretrained:
        with dist.local_main_first():  # one download per machine, into the cache its processes share
            return pretrained_model(args.model, NUM_CLASSES, args.weights, progress=dist.is_local_main(), **options)
    return build_model(args.model, NUM_CLASSES, **options)


def report_results(frame, predictions, out_dir, args, thresholds, image_size):
    """Step 5 from the forward pass that predicted `frame` (heatmaps, boxes, localization), then report.html."""
    if args.max_heatmaps != 0:
        localize(frame, predictions, out_dir, input_size=image_size, thresholds=thresholds,
                 classes=args.heatmap_classes, box_thresholds=args.box_thresholds, boxes_csv=args.boxes_csv,
                 max_images=args.max_heatmaps)
    log.info("report: %s", write_report(out_dir))


def run_rows(args):
    """combined.csv's rows this run uses: those of --views, of --train-sources and --test-sources (checked against the
    Source column); InputError naming what matches nothing."""
    frame = read_combined(args.csv, CLASSES, args.skip_missing)
    named = [*(args.train_sources or []), *(args.test_sources or [])]
    if named:
        if "Source" not in frame.columns:
            raise InputError(f"--train-sources and --test-sources need a Source column in {args.csv}")
        present = sorted(frame["Source"].astype(str).unique())
        for flag in ("train_sources", "test_sources"):
            unknown = [n for n in getattr(args, flag) or [] if n not in present]
            if unknown:
                raise InputError(f"--{flag.replace('_', '-')}: {', '.join(unknown)} not in {args.csv}'s Source column "
                                 f"(it has {', '.join(present)})")
        both = set(args.train_sources or []) & set(args.test_sources or [])
        if both:
            raise InputError(f"{', '.join(sorted(both))} is both a training and a held-out source")
        if args.train_sources:
            frame = frame[frame["Source"].isin(named)].reset_index(drop=True)
    keep = view_mask(frame, parse_views(args.views))
    if not keep.all():
        left_out = frame.loc[~keep, "view"].fillna("").astype(str).replace("", "unknown").value_counts()
        log.info("--views %s: %d of %d images kept; left out by view: %s", args.views,
                 int(keep.sum()), len(frame), ", ".join(f"{v} {n}" for v, n in left_out.items()))
        frame = frame[keep].reset_index(drop=True)
    if not len(frame):
        raise InputError(f"no image of {args.csv} has a view in --views (use --views all, or label unknown views "
                         f"with python -m utils.view_classifier)")
    return frame


def evaluation_rows(frame, args, whole=False):
    """{set: rows} to evaluate on (the test split, held-out sources, or the whole CSV); InputError when empty."""
    sets = evaluation_sets(frame, args.test_sources, whole, lambda f, name: split(f, name, args.limit))
    if not sets:
        raise InputError(f"{args.csv} has no test rows (split == 'test') to evaluate on (--eval-split all evaluates "
                         f"every image of a CSV the model never saw)")
    return sets


def test(model, sets, args, device, amp, thresholds, temperatures, image_size, bad):
    """Evaluate each set (one pass each); metrics.csv, predictions.csv, calibration.csv, roc.png, and step 5 from the
    test split's pass (rank 0)."""
    results, mapped = {}, None
    for name, rows in sets.items():
        maps = args.max_heatmaps != 0 and mapped is None
        loss, out = evaluate(model, loader(rows, args, image_size), device, LOSSES[args.loss], amp=amp, maps=maps,
                             desc=name, bad=bad)
        if len(out.indices) == 0:
            raise InputError(f"none of the {len(rows)} {name} images of {args.csv} decoded")
        # judge() gets the model's own probabilities (it shows calibration before and after); step 5 gets the
        # reported (calibrated, rounded) ones
        results[name] = (rows.iloc[out.indices].reset_index(drop=True), out.probs, out.labels)
        out = out._replace(probs=reported_probs(out.probs, temperatures))
        mapped = mapped or (rows, out)
        log.info("%s loss %.4f (%d images)", name, loss, len(out.indices))
    write_skipped(bad, args.output_dir)
    if dist.is_main():
        table = judge(args.output_dir, results, thresholds, temperatures, n_boot=args.bootstrap, seed=args.seed)
        log.info(summary_line(table))
        for name in results:
            if name != TEST:
                log.info("%s: macro AUROC %s", name, headline(table, name) or "NA")
        report_results(*mapped, args.output_dir, args, thresholds, image_size)


def write_skipped(bad, out_dir):
    """skipped_images.csv (path, error) of the images --skip-bad-images left out so far, from every rank, and a log
    line counting them; nothing without --skip-bad-images."""
    if bad is None:
        return
    rows = dict(sorted(row for part in dist.all_gather(bad) for row in part))
    if dist.is_main():
        with atomic_path(os.path.join(out_dir, "skipped_images.csv")) as tmp:
            pd.DataFrame(list(rows.items()), columns=["path", "error"]).to_csv(tmp, index=False)
        if rows:
            path, reason = next(iter(rows.items()))
            log.warning("skipped %d image%s that did not decode (listed in %s; first: %s: %s)", len(rows),
                        "s" if len(rows) > 1 else "", os.path.join(out_dir, "skipped_images.csv"), path, reason)


def train(args, device, amp, stop):
    """Train, then test the best model; a stop signal ends it early with a checkpoint, and the one line main() prints
    is returned."""
    frame = run_rows(args)
    pool = frame[~frame["Source"].isin(args.test_sources)] if args.test_sources else frame  # held out in full
    train_frame, val_frame = split(pool, "train", args.limit), split(pool, "val", args.limit)
    if len(train_frame) == 0 or len(val_frame) == 0:
        raise InputError(f"{args.csv} needs train and val rows (split column); it has {len(train_frame)} train and "
                         f"{len(val_frame)} val rows")
    sets = evaluation_rows(frame, args)
    ckpt_last, ckpt_best = (os.path.join(args.output_dir, f"checkpoint_{k}.pt") for k in ("last", "best"))
    resumed = training_state(read_checkpoint(ckpt_last), ckpt_last) if args.resume else None
    if resumed and resumed["epoch"] > args.epochs:
        raise InputError(f"--epochs {args.epochs}: {args.output_dir} has already trained {resumed['epoch']} epochs; "
                         f"give more to continue it")
    model = checkpoint_model(resumed, ckpt_last) if resumed else new_model(args)  # a resumed run is the same model
    if args.load_model and not args.resume:
        init = read_checkpoint(args.load_model)
        if init["model_args"]["name"] != args.model:
            raise InputError(f"{args.load_model} holds a {init['model_args']['name']} model, not {args.model}")
        load_weights(model, init["model"], args.load_model)
    image_size = model.input_size
    model.to(device, memory_format=torch.channels_last)
    if dist.is_dist():
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if args.compile:
        model = torch.compile(model)
    # fused on CUDA: one kernel for all parameters, and a GradScaler's inf check stays on the device
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay,
                                 fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=args.lr_patience)
    scaler = grad_scaler(amp, device)
    loss_fn = LOSSES[args.loss]
    config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    bad = [] if args.skip_bad_images else None

    start_epoch, best_auroc, history, cut = 0, -math.inf, [], None
    if resumed:
        restore_training(resumed, ckpt_last, model, optimizer, scheduler, scaler)
        for group in optimizer.param_groups:  # given with --resume: they replace the restored optimizer's own
            group.update({k: getattr(args, k) for k in ("lr", "weight_decay") if k in args.given})
        if "lr_patience" in args.given:
            scheduler.patience = args.lr_patience
        start_epoch, best_auroc, history = resumed["epoch"], resumed["best_auroc"], list(resumed.get("history", []))
        cut = resumed.get("progress")
        if cut and (cut["batch_size"], cut["world_size"]) != (args.batch_size, dist.world_size()):
            log.warning("epoch %d stopped after batch %d of batch size %d on %d processes; with batch size %d on %d "
                        "it starts again from its first batch", start_epoch + 1, cut["step"], cut["batch_size"],
                        cut["world_size"], args.batch_size, dist.world_size())
            cut = None
        if cut and bad is not None and dist.is_main():
            bad += [tuple(row) for row in resumed.get("skipped") or []]
        log.info("resuming %s after epoch %d%s (best validation mean AUROC %.4f)", args.output_dir, start_epoch,
                 f", batch {cut['step']} of epoch {start_epoch + 1}" if cut else "", best_auroc)

    cache_dir = cache_folder(args)
    train_loader = loader(train_frame, args, image_size, train=True, cache_dir=cache_dir)
    val_loader = loader(val_frame, args, image_size, cache_dir=cache_dir)
    log.info("%s on %s x%d: %d train, %d val images, %d px, batch %d per process, loss %s, amp %s, %d workers%s%s",
             dist.unwrap(model).model_args["name"],
             device.type, dist.world_size(), len(train_frame), len(val_frame), image_size, args.batch_size, args.loss,
             amp_name(amp), args.workers, f", cache {cache_dir}" if cache_dir else ", cache" if args.cache else "",
             ", compiled" if args.compile else "")
    if args.batch_size < 256:
        log.info("batch %d: CheXNet's recipe is batch 16 at lr 1e-3; a GPU trains several times faster at larger "
                 "batches, e.g. --batch-size 256 --lr %.3g (the learning rate scaled linearly with the batch)",
                 args.batch_size, args.lr * 256 / args.batch_size)
    mirror = BucketFolder(args.sync_to) if args.sync_to and dist.is_main() else None
    n_batches = len(train_loader) if args.max_train_batches is None else min(len(train_loader),
                                                                              args.max_train_batches)
    with stop.deferred():  # from here a stop signal ends the run at a step's end, with a checkpoint
        for epoch in range(start_epoch, args.epochs):
            if agreed(stop, device):  # it came while the last checkpoint was written: that one holds the run
                return stopped_line(stop, args, f"after epoch {epoch}")
            train_loader.sampler.set_epoch(epoch)
            flips = torch.Generator().manual_seed(args.seed * 100003 + epoch)
            progress = None
            if cut:  # the epoch a stop signal cut short: the rest of its batches, with their flips
                flips.set_state(cut["flips"])
                progress, cut = Progress.of_rank(cut), None
            t0 = time.perf_counter()
            progress = train_one_epoch(model, train_loader, optimizer, loss_fn, device, epoch + 1, scaler=scaler,
                                       amp=amp, flip_generator=flips, max_batches=args.max_train_batches,
                                       desc=f"epoch {epoch + 1}/{args.epochs}", bad=bad, progress=progress,
                                       stop=stop, look_every=args.log_every)
            try:
                if progress.stopped:
                    raise Stopped(progress.stopped)
                val_loss, val = evaluate(model, val_loader, device, loss_fn, amp=amp, desc="validation", bad=bad,
                                         stop=stop)
            except Stopped:
                skipped = [row for part in dist.all_gather(bad or []) for row in part]
                if dist.is_main():
                    save_checkpoint(training_checkpoint(
                        model, optimizer, scheduler, scaler, config=config, epoch=epoch, best_auroc=best_auroc,
                        history=history, skipped=skipped, progress={
                            **progress.as_dict(), "batch_size": args.batch_size, "world_size": dist.world_size(),
                            "flips": flips.get_state()}), ckpt_last)
                    sync(mirror, args.output_dir)
                dist.barrier()
                return stopped_line(stop, args, f"in epoch {epoch + 1} after batch {progress.step} of {n_batches}")
            if len(val.indices) == 0:
                raise InputError(f"none of the {len(val_frame)} validation images of {args.csv} decoded")
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(f"validation loss is {val_loss} after epoch {epoch + 1}")
            val_auroc = mean_auroc(val.labels, val.probs)
            scheduler.step(val_loss)
            improved = math.isnan(val_auroc) and best_auroc == -math.inf or val_auroc > best_auroc
            if improved:
                best_auroc = val_auroc if not math.isnan(val_auroc) else best_auroc
            lr = optimizer.param_groups[0]["lr"]
            history.append({"epoch": epoch + 1, "train_loss": progress.loss, "val_loss": val_loss,
                            "val_auroc": val_auroc, "lr": lr, "images_per_s": progress.rate})
            log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val mean AUROC %.4f%s  lr %.2g  %.1f img/s  %.0f s",
                     epoch + 1, args.epochs, progress.loss, val_loss, val_auroc, " (best)" if improved else "", lr,
                     progress.rate, time.perf_counter() - t0)
            if dist.is_main():
                if improved:  # the best checkpoint is a model only, with the thresholds chosen on validation
                    thresholds, temperatures = fitted_thresholds(val.labels, val.probs, args.calibrate,
                                                                 choose_thresholds)
                    save_checkpoint(model_checkpoint(model, config=config, epoch=epoch + 1, val_auroc=val_auroc,
                                                     thresholds=thresholds, temperatures=temperatures), ckpt_best)
                save_checkpoint(training_checkpoint(model, optimizer, scheduler, scaler, config=config,
                                                    epoch=epoch + 1, best_auroc=best_auroc, history=history),
                                ckpt_last)
                sync(mirror, args.output_dir)
            dist.barrier()
        if agreed(stop, device):
            return stopped_line(stop, args, f"after epoch {args.epochs}, before the test")

    # Evaluate the best model, with thresholds chosen on validation by that same model.
    best = read_checkpoint(ckpt_best)
    load_weights(dist.unwrap(model), best["model"], ckpt_best)
    if dist.is_main():
        write_thresholds(best["thresholds"], args.output_dir)
    if dist.is_main() and args.save_model:
        with atomic_path(args.save_model) as tmp:
            shutil.copyfile(ckpt_best, tmp)
    test(model, sets, args, device, amp, best["thresholds"], best.get("temperatures"), image_size, bad)


def cache_folder(args):
    """The persistent cache's folder (--cache-dir; by default cache/ beside --csv), or None: off, or --cache."""
    if args.cache_dir == "off" or args.cache_dir is None and args.cache:
        return None
    return args.cache_dir or os.path.join(os.path.dirname(args.csv), "cache")


def agreed(stop, device):
    """Whether a stop signal has come, to any rank (one collective under DDP)."""
    return bool(dist.all_reduce_sum(stop.requested, device))


def sync(mirror, run_dir):
    """Copy what changed in the run folder to --sync-to's bucket (rank 0; nothing without --sync-to)."""
    if mirror is not None:
        log.info("synced %d files to %s", mirror.push(run_dir), mirror.url)


def stopped_line(stop, args, where):
    """The one line of a run a stop signal ended, saying how to go on."""
    return (f"traintest.py: stopped by {stop.name or 'a stop signal'} {where}; checkpoint_last.pt holds the run: "
            f"continue with python traintest.py --resume {args.sync_to or args.output_dir}")


def checked_image_size(args, model):
    """--image-size, or the model's own; InputError when it is below what the network accepts."""
    size = args.image_size or model.input_size
    name = model.model_args["name"]
    if size < MIN_INPUT_SIZE[name]:
        raise InputError(f"--image-size {size} is below {name}'s minimum input of {MIN_INPUT_SIZE[name]} pixels")
    return size


def evaluate_only(args, device, amp):
    """--test-only: the checkpoint on the test split of --csv, or on every row of a CSV it was not trained on."""
    model, ckpt = load_checkpoint(args.load_model)
    image_size = checked_image_size(args, model)
    frame = run_rows(args)
    sets = evaluation_rows(frame, args, whole=args.eval_split == "all")
    trained_on = (ckpt.get("config") or {}).get("csv")
    if trained_on and os.path.abspath(trained_on) != os.path.abspath(args.csv) and args.eval_split == "test":
        log.info("%s was trained on %s; evaluating the test split of %s (--eval-split all: every image of it)",
                 args.load_model, trained_on, args.csv)
    model.to(device, memory_format=torch.channels_last)
    thresholds, temperatures = ckpt.get("thresholds"), ckpt.get("temperatures")
    bad = [] if args.skip_bad_images else None
    if thresholds is None or (args.calibrate and temperatures is None):
        val = split(frame, "val", args.limit)
        if len(val) == 0:
            raise InputError(f"{args.load_model} stores no {'temperatures' if thresholds else 'thresholds'} and "
                             f"{args.csv} has no val rows to fit them on")
        _, out = evaluate(model, loader(val, args, image_size), device, LOSSES[args.loss], amp=amp, desc="validation",
                          bad=bad)
        thresholds, temperatures = fitted_thresholds(out.labels, out.probs, args.calibrate, choose_thresholds)
    if dist.is_main():
        write_thresholds(thresholds, args.output_dir)
    test(model, sets, args, device, amp, thresholds, temperatures, image_size, bad)


def predict_new(args, device, amp):
    """--predict PATH: probabilities and labels for new studies, then heatmaps, boxes and the report. A file that does
    not decode is a row of predict_errors.csv (path, error), and the others are predicted."""
    frame = image_frame(args.predict)
    model, ckpt = load_checkpoint(args.load_model)
    thresholds = ckpt.get("thresholds") or [0.5] * NUM_CLASSES
    image_size = checked_image_size(args, model)
    model.to(device, memory_format=torch.channels_last)
    bad = []
    out = predict(model, loader(frame, args, image_size), device, amp=amp, maps=args.max_heatmaps != 0, bad=bad)
    # a calibrated model's thresholds apply to its calibrated probabilities
    out = out._replace(probs=reported_probs(out.probs, ckpt.get("temperatures")))
    errors_csv = os.path.join(args.output_dir, "predict_errors.csv")
    if dist.is_main():
        with atomic_path(errors_csv) as tmp:  # written even when empty: an old run's list must not stay behind
            pd.DataFrame(bad, columns=["path", "error"]).to_csv(tmp, index=False)
    if dist.is_main():
        predictions_frame(frame.iloc[out.indices], out.probs, thresholds).to_csv(
            os.path.join(args.output_dir, "predictions.csv"), index=False)
    if len(out.indices) == 0:
        raise InputError(f"none of the {len(frame)} files at {args.predict} decoded (see {errors_csv})")
    if bad:
        log.warning("%d of %d files did not decode (listed in %s; first: %s: %s)", len(bad), len(frame), errors_csv,
                    *bad[0])
    if dist.is_main():
        log.info("predicted %d images -> %s", len(out.indices), os.path.join(args.output_dir, "predictions.csv"))
        report_results(frame, out, args.output_dir, args, thresholds, image_size)


# What a training run writes into its folder besides args.json and train.log: --overwrite deletes them first.
RUN_OUTPUTS = ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv", "predictions.csv", "thresholds.csv",
               "roc.png", "calibration.csv", "reliability.png", "boxes.csv", "localization.csv", "report.html", "skipped_images.csv", "predict_errors.csv",
               "heatmaps")


def check_args(args):
    """Every flag and output location, before any work starts: InputError naming the first that is wrong."""
    training = not (args.predict or args.test_only)
    if args.predict and not (args.load_model and args.output_dir):
        raise InputError("--predict needs --load-model CKPT and --output-dir DIR")
    if args.test_only and not args.load_model:
        raise InputError("--test-only needs --load-model CKPT")
    if training and not args.resume and args.weights and not args.pretrained:
        raise InputError(f"--weights {args.weights} is read only with --pretrained; add --pretrained or drop --weights")
    if args.max_heatmaps == 0:
        unused = [k for k in ("heatmap_classes", "box_thresholds", "boxes_csv") if k in args.given]
        if unused:
            raise InputError(f"--{unused[0].replace('_', '-')} does nothing with --max-heatmaps 0 (no heatmaps, boxes "
                             f"or localization)")
    if training and args.image_size and args.image_size < MIN_INPUT_SIZE[args.model]:
        raise InputError(f"--image-size {args.image_size} is below {args.model}'s minimum input of "
                         f"{MIN_INPUT_SIZE[args.model]} pixels")
    if args.boxes_csv and args.max_heatmaps != 0:
        read_box_csv(args.boxes_csv)  # a bad row is found now, not after training
    if training and args.cache and args.cache_dir not in (None, "off"):
        raise InputError(f"--cache keeps the images in memory, --cache-dir {args.cache_dir} on disk: give one of them")
    if args.sync_to and not is_gcs_url(args.sync_to):
        raise InputError(f"--sync-to {args.sync_to}: expected a gs://BUCKET/runs/NAME URL")
    if args.sync_to:
        work_folder(args.sync_to)  # a URL that names a run folder
    output_folder(args.output_dir, "--output-dir")
    if training and args.save_model:
        output_file(args.save_model, "--save-model")
    last = os.path.join(args.output_dir, "checkpoint_last.pt")
    if training and args.resume and not os.path.isfile(last):
        raise InputError(f"cannot resume: {args.output_dir} has no checkpoint_last.pt (the run stopped before its "
                         f"first epoch ended)")
    if training and not args.resume and not args.overwrite and os.path.exists(last):
        raise InputError(f"{args.output_dir} already holds a run (checkpoint_last.pt): continue it with --resume "
                         f"{args.sync_to or args.output_dir}, or pass --overwrite to start over and replace it")
    if args.sync_to and dist.is_main():
        BucketFolder(args.sync_to).check_writable()  # a missing role is found now, not after the first epoch


def start_run(args):
    """args.json of a new run; with --overwrite the old run's checkpoints and results are deleted first, so that an
    interrupted new run can never be resumed from the old run's weights."""
    if args.overwrite:
        for name in RUN_OUTPUTS:
            path = os.path.join(args.output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
    write_text_atomic(os.path.join(args.output_dir, "args.json"),
                      json.dumps({k: v for k, v in vars(args).items() if k != "given"}, indent=1))


def run(args):
    """The run main() asked for; the line to print when a stop signal ended it early (None otherwise)."""
    with StopSignals() as stop:
        device = dist.init_distributed(args.device)
        amp = use_amp(args.amp, device)
        if args.threads:
            torch.set_num_threads(args.threads)
        if not args.predict:
            args.output_dir = args.output_dir or "runs/run"
        if is_gcs_url(args.output_dir):  # a local work folder, mirrored to the bucket
            if args.sync_to and args.sync_to.rstrip("/") != args.output_dir.rstrip("/"):
                raise InputError(f"--output-dir {args.output_dir} and --sync-to {args.sync_to}: give one of them")
            args.sync_to, args.output_dir = args.output_dir, work_folder(args.output_dir)
        for key in ("csv", "weights", "boxes_csv", "load_model", "cache_dir"):  # args.json must work from any folder
            if getattr(args, key) not in (None, "off"):
                setattr(args, key, os.path.abspath(getattr(args, key)))
        check_args(args)
        setup_logging(args.output_dir)
        seed_everything(args.seed + dist.rank(), args.deterministic)
        if args.predict:
            stopped = predict_new(args, device, amp)
        elif args.test_only:
            stopped = evaluate_only(args, device, amp)
        else:
            if not args.resume:
                if dist.is_main():
                    start_run(args)
                dist.barrier()
            stopped = train(args, device, amp, stop)
        if args.sync_to and dist.is_main():
            sync(BucketFolder(args.sync_to), args.output_dir)
        return stopped


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = None
    try:
        args = parse_args(argv)
        stopped = run(args)
        if stopped and dist.is_main():
            print(stopped, file=sys.stderr)
    except InputError as e:
        print(f"traintest.py: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"traintest.py: error: {e}; stopped, the last good checkpoint is kept (try a lower --lr or --amp off)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM outside the training steps (set-up, cache build, test)
        print(f"\ntraintest.py: interrupted{interrupted_hint(args)}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        close_logging()
        dist.cleanup()
    return 0


def interrupted_hint(args):
    """How to go on after an interruption: --resume when the run has a checkpoint to continue from."""
    if args is None or args.predict or args.test_only or not args.output_dir or is_gcs_url(args.output_dir):
        return ""
    last = os.path.join(args.output_dir, "checkpoint_last.pt")
    if not os.path.isfile(last):
        return " before the first epoch ended; nothing to resume"
    return (f"; the last checkpoint is kept: continue with python traintest.py --resume "
            f"{args.sync_to or args.output_dir}")


if __name__ == "__main__":
    sys.exit(main())
