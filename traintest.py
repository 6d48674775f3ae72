"""Step 4: train, evaluate and apply CheXNet or the Unified DCNN of ChestX-ray8 on combined.csv.

  python traintest.py --csv combined.csv --run-dir runs/chexnet                 # train, then evaluate on test
  torchrun --nproc_per_node 8 traintest.py --csv combined.csv --run-dir runs/r  # the same on 8 GPUs (DDP)
  python traintest.py --resume runs/chexnet                                     # continue a stopped run
  python traintest.py --csv combined.csv --run-dir runs/eval --is_training 0 --load_model runs/chexnet/checkpoint_best.pt
  python traintest.py --predict new_studies/ --load_model runs/chexnet/checkpoint_best.pt --out predictions/

Writes to the run folder: checkpoint_last.pt (for --resume), checkpoint_best.pt (best validation mean AUROC, with the
F1-optimal thresholds chosen on validation), args.json, train.log, metrics.csv, predictions.csv, thresholds.csv,
roc.png, heatmaps/, boxes.csv, localization.csv (with --boxes-csv) and report.html.
"""
import argparse
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data.classes import CLASSES, NUM_CLASSES
from data.dataset import ChestImages, image_files, missing_files, read_gray
from models import CheckpointError, PretrainedUnavailable, build_model, canonical_name, load_checkpoint, read_checkpoint
from models.losses import LOSSES
from utils import dist
from utils.engine import NonFiniteLoss, evaluate, predict, train_one_epoch
from utils.metrics import choose_thresholds, mean_auroc, metrics_table, per_class_auroc, plot_roc, write_metrics

log = logging.getLogger("traintest")

# Test hook: SIGKILL this process right after the checkpoint of this (1-based) epoch is written.
KILL_ENV = "TRAINTEST_KILL_AFTER_EPOCH"


class UserError(Exception):
    """Bad input from the user: reported as one message on stderr, exit status 2, no traceback."""


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--csv", help="combined.csv from combinelabels.py (ImageID, path, split and the 22 class columns)")
    io.add_argument("--run-dir", default="runs/run", help="folder for checkpoints, logs, metrics and heatmaps")
    io.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint_last.pt, "
                    "with the arguments it was started with (--epochs may be raised)")
    io.add_argument("--load_model", metavar="CKPT", help="checkpoint to evaluate (--is_training 0), to predict with "
                    "(--predict), or to start training from")
    io.add_argument("--save_model", metavar="PATH", help="also copy the best checkpoint to PATH")
    io.add_argument("--is_training", type=int, default=1, choices=[0, 1],
                    help="1: train then evaluate on test; 0: only evaluate --load_model on the test split")
    io.add_argument("--predict", metavar="PATH", help="predict new studies: a PNG/JPEG/DICOM file or a folder of "
                    "them (ImageID = file stem); needs --load_model and --out")
    io.add_argument("--out", metavar="DIR", help="output folder of --predict")
    io.add_argument("--skip-missing", action="store_true",
                    help="drop rows whose image file is missing (with a warning) instead of stopping")
    io.add_argument("--overwrite", action="store_true",
                    help="train into a --run-dir that already holds a run, replacing its checkpoints (without it, "
                         "such a folder is refused: resume it with --resume instead)")

    m = p.add_argument_group("model")
    m.add_argument("--model", default="chexnet", help="chexnet, unified-resnet50, unified-vgg16, unified-alexnet, "
                   "unified-googlenet (the seed's densenet, resnet, vgg are aliases)")
    m.add_argument("--pretrained", type=int, default=0, choices=[0, 1],
                   help="1: start from torchvision's ImageNet weights (local cache or --weights); never downloads")
    m.add_argument("--weights", metavar="FILE", help="ImageNet weights file of the backbone for --pretrained 1")
    m.add_argument("--pooling", default="lse", choices=["lse", "max", "avg"],
                   help="global pooling of the Unified DCNN (CheXNet always averages)")
    m.add_argument("--lse-r", type=float, default=10.0, help="sharpness r of LSE pooling (the paper's best: 10)")
    m.add_argument("--map-size", type=int, help="resize the Unified DCNN's transition map to S x S (8, 16, 32)")
    m.add_argument("--image-size", type=int, help="input side in pixels (default 224; a checkpoint's own size "
                   "when evaluating or predicting)")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=20, help="number of epochs")
    t.add_argument("--batch_size", "--batch-size", type=int, default=16, help="images per batch per process")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (CheXNet: 1e-3)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    t.add_argument("--lr-patience", type=int, default=1,
                   help="epochs without validation-loss improvement before the learning rate is divided by 10")
    t.add_argument("--loss", default="bce", choices=sorted(LOSSES),
                   help="bce: CheXNet's binary cross-entropy; wcel: ChestX-ray8's weighted cross-entropy")
    t.add_argument("--amp", default="auto", choices=["auto", "1", "0"],
                   help="mixed precision: float16 AMP on CUDA, bfloat16 autocast on CPU; auto: on CUDA, and on CPUs "
                   "with native bfloat16 (AVX-512 BF16/AMX; elsewhere bfloat16 is emulated and many times slower)")
    t.add_argument("--workers", type=int, default=min(4, max(1, (os.cpu_count() or 2) - 1)),
                   help="DataLoader worker processes per training process")
    t.add_argument("--cache", action="store_true", help="keep decoded, resized images in shared memory so that "
                   "epochs after the first decode nothing (needs N x image_size^2 bytes of RAM)")
    t.add_argument("--seed", type=int, default=0, help="random seed (shuffling, flips, initialization)")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: a killed and resumed run ends with the same metrics")
    t.add_argument("--threads", type=int, help="torch intra-op threads per process (default: torch's choice, one "
                   "per core; 1 is faster on a CPU shared with other busy processes)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    t.add_argument("--max-train-batches", type=int, help="stop each epoch after this many batches (smoke tests)")
    t.add_argument("--limit", type=int, help="use only the first N rows of each split (smoke tests)")
    t.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUROC 95%% intervals")

    h = p.add_argument_group("localization")
    h.add_argument("--heatmap-classes", help="comma-separated classes to map for every image (default: the classes "
                   "predicted positive at the validation thresholds)")
    h.add_argument("--box-thresholds", default="60,180", help="heatmap levels (0-255) at which boxes are drawn")
    h.add_argument("--boxes-csv", metavar="FILE", help="ground-truth boxes (NIH BBox_List_2017 layout) to score "
                   "localization against")
    h.add_argument("--max-heatmaps", type=int, default=50, help="at most this many images get heatmap PNGs; boxes "
                   "are found on every image (0: skip heatmaps, boxes and localization)")
    return p


# ----------------------------------------------------------------------------------------------- inputs

def read_labels(csv_path, skip_missing=False):
    """combined.csv with absolute image paths; UserError naming the file for a bad CSV or missing images."""
    if not csv_path:
        raise UserError("--csv is required for training and evaluation")
    if not os.path.isfile(csv_path):
        raise UserError(f"label CSV {csv_path} not found")
    frame = pd.read_csv(csv_path)
    missing_cols = [c for c in ["ImageID", "path", "split"] + CLASSES if c not in frame.columns]
    if missing_cols:
        raise UserError(f"{csv_path} lacks the columns {missing_cols}; expected combinelabels.py's combined.csv "
                        f"(ImageID, path, split and the {NUM_CLASSES} class columns)")
    bad = ~frame[CLASSES].isin([-1, 0, 1]).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{csv_path}: row {row + 2}: class values must be 1, 0 or -1, got "
                        f"{frame.loc[row, CLASSES].tolist()}")
    root = os.path.dirname(os.path.abspath(csv_path))
    frame["path"] = [p if os.path.isabs(p) else os.path.join(root, p) for p in frame["path"].astype(str)]
    gone = missing_files(frame["path"])
    if gone:
        first = ", ".join(gone[:5])
        if not skip_missing:
            raise UserError(f"{len(gone)} of {len(frame)} images listed in {csv_path} are missing (first: {first}); "
                            f"fix the paths or pass --skip-missing to drop them")
        log.warning("dropping %d rows whose image is missing (first: %s)", len(gone), first)
        frame = frame[~frame["path"].isin(set(gone))]
    return frame.reset_index(drop=True)


def split(frame, name, limit=None):
    part = frame[frame["split"] == name].reset_index(drop=True)
    return part.head(limit) if limit else part


def make_loader(frame, args, train):
    """A DataLoader over `frame` with a DistributedSampler (also with one process: seeded, per-epoch shuffling
    that a resumed run replays exactly). uint8 batches; pinned memory when feeding a GPU."""
    dataset = ChestImages(frame, args.image_size, CLASSES, cache=args.cache)
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=train,
                                 seed=args.seed, drop_last=False)
    workers = args.workers
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available() and args.device != "cpu",
                      drop_last=train and len(dataset) // dist.world_size() > args.batch_size,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=worker_init)


def worker_init(_):
    torch.set_num_threads(1)  # the workers are the parallelism; intra-op threads would fight them


# ----------------------------------------------------------------------------------------------- setup

def setup_logging(run_dir):
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if not dist.is_main():
        log.addHandler(logging.NullHandler())
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(stream)
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(run_dir, "train.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)


def seed_everything(seed, deterministic):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state():
    """Every global RNG's state, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state, path):
    """Write to a temporary file, then rename: a run killed while saving keeps its previous checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def model_args(args):
    """The args a checkpoint stores: all flags (plain types), the canonical model name and the class count."""
    stored = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    stored.update(model=canonical_name(args.model), num_classes=NUM_CLASSES, lse_r=args.lse_r,
                  transition_dim=None)
    return stored


def check_classes(ckpt, path):
    if ckpt.get("classes") is not None and list(ckpt["classes"]) != CLASSES:
        raise CheckpointError(f"{path} was trained on other classes ({len(ckpt['classes'])}: "
                              f"{', '.join(ckpt['classes'][:4])}, ...); this toolkit classifies the {NUM_CLASSES} "
                              f"in data/classes.py")


# ----------------------------------------------------------------------------------------------- outputs

def thresholds_frame(thresholds):
    return pd.DataFrame({"class": CLASSES, "threshold": thresholds})


def predictions_frame(image_ids, probs, thresholds):
    """predictions.csv: ImageID, the 22 probabilities (prob_<class>), the 22 labels predicted at the validation
    thresholds (label_<class>)."""
    out = pd.DataFrame({"ImageID": list(image_ids)})
    out = pd.concat([out, pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES]).round(6),
                     pd.DataFrame((probs >= np.asarray(thresholds)[None, :]).astype(int),
                                  columns=[f"label_{c}" for c in CLASSES])], axis=1)
    return out


def summary_line(table):
    per_class = table[table["class"].isin(CLASSES)]
    defined = per_class[per_class["auroc"].notna()]
    mean = defined["auroc"].mean() if len(defined) else math.nan
    parts = ", ".join(f"{r['class']} {r['auroc']:.3f}" for _, r in defined.iterrows())
    return f"test mean AUROC {mean:.4f} over {len(defined)} classes with positives | {parts}"


def localize_and_report(model, frame, out_dir, args, thresholds, device, image_size):
    """Heatmaps and boxes for `frame` (step 5), then report.html, on rank 0."""
    from utils.heatmaps import localize
    from utils.report import write_report

    classes = [c.strip() for c in args.heatmap_classes.split(",") if c.strip()] if args.heatmap_classes else None
    if classes:
        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise UserError(f"--heatmap-classes: unknown classes {unknown}; choose from {CLASSES}")
    box_thresholds = tuple(int(v) for v in str(args.box_thresholds).split(",") if v.strip())
    if args.max_heatmaps != 0:
        summary = localize(unwrap(model).eval(), frame, out_dir, image_size=image_size, device=device,
                           thresholds=thresholds, classes=classes, box_thresholds=box_thresholds,
                           boxes_csv=args.boxes_csv, max_images=args.max_heatmaps, batch_size=args.batch_size)
        log.info("localization: %d images, %d heatmaps, %d boxes", summary.get("images", 0),
                 summary.get("heatmaps", 0), summary.get("boxes", 0))
    report = write_report(out_dir)
    log.info("report: %s", report)


def evaluate_test(model, args, device, frame, thresholds, loss_fn):
    """Evaluate on the test split and write metrics.csv, predictions.csv, roc.png (rank 0)."""
    test = split(frame, "test", args.limit)
    if len(test) == 0:
        raise UserError(f"{args.csv} has no test rows (split == 'test')")
    loss, probs, labels = evaluate(model, make_loader(test, args, train=False), device, loss_fn, amp=args.use_amp,
                                   desc="test")
    if dist.is_main():
        table = metrics_table(labels, probs, CLASSES, thresholds, n_boot=args.bootstrap, seed=args.seed)
        write_metrics(table, os.path.join(args.run_dir, "metrics.csv"))
        predictions_frame(test["ImageID"], probs, thresholds).to_csv(
            os.path.join(args.run_dir, "predictions.csv"), index=False)
        plot_roc(labels, probs, CLASSES, os.path.join(args.run_dir, "roc.png"))
        log.info("test loss %.4f", loss)
        log.info(summary_line(table))
    return test


# ----------------------------------------------------------------------------------------------- modes

def train(args, device):
    frame = read_labels(args.csv, args.skip_missing)
    train_frame, val_frame = split(frame, "train", args.limit), split(frame, "val", args.limit)
    if len(train_frame) == 0 or len(val_frame) == 0:
        raise UserError(f"{args.csv} needs train and val rows (split column); it has {len(train_frame)} train and "
                        f"{len(val_frame)} val rows")
    if args.image_size is None:
        args.image_size = 224
    ckpt_last = os.path.join(args.run_dir, "checkpoint_last.pt")
    ckpt_best = os.path.join(args.run_dir, "checkpoint_best.pt")

    # A resumed run takes its weights from checkpoint_last.pt: no need for the ImageNet file again.
    model = build_model(args.model, NUM_CLASSES, pretrained=bool(args.pretrained and not args.resume),
                        weights=args.weights,
                        pooling=args.pooling, lse_r=args.lse_r, map_size=args.map_size)
    if args.load_model and not args.resume:
        init = read_checkpoint(args.load_model)
        check_classes(init, args.load_model)
        if canonical_name(init["args"]["model"]) != canonical_name(args.model):
            raise CheckpointError(f"{args.load_model} holds a {init['args']['model']} model, not {args.model}")
        try:
            model.load_state_dict(init["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{args.load_model}: {str(e).splitlines()[0]}") from None
    model.to(device, memory_format=torch.channels_last)
    if dist.is_dist():
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=args.lr_patience)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and args.use_amp else None
    loss_fn = LOSSES[args.loss]

    start_epoch, best_auroc, history = 0, -math.inf, []
    if args.resume:
        ckpt = read_checkpoint(ckpt_last)
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_auroc, history = ckpt["epoch"], ckpt["best_auroc"], list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])
        log.info("resuming %s after epoch %d (best validation mean AUROC %.4f)", args.run_dir, start_epoch, best_auroc)

    train_loader = make_loader(train_frame, args, train=True)
    val_loader = make_loader(val_frame, args, train=False)
    log.info("%s on %s x%d: %d train, %d val images, %d px, batch %d, loss %s, amp %s, %d workers%s",
             canonical_name(args.model), device.type, dist.world_size(), len(train_frame), len(val_frame),
             args.image_size, args.batch_size, args.loss, args.use_amp, args.workers, ", cache" if args.cache else "")
    stored_args = model_args(args)
    for epoch in range(start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        flips = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        t0 = time.perf_counter()
        train_loss, rate = train_one_epoch(model, train_loader, optimizer, loss_fn, device, epoch + 1, scaler=scaler,
                                           amp=args.use_amp, flip_generator=flips,
                                           max_batches=args.max_train_batches, desc=f"epoch {epoch + 1}/{args.epochs}")
        val_loss, val_probs, val_labels = evaluate(model, val_loader, device, loss_fn, amp=args.use_amp,
                                                   desc="validation")
        if not math.isfinite(val_loss):
            raise NonFiniteLoss(f"validation loss is {val_loss} after epoch {epoch + 1}")
        val_auroc = mean_auroc(val_labels, val_probs)
        scheduler.step(val_loss)
        improved = math.isnan(val_auroc) and best_auroc == -math.inf or val_auroc > best_auroc
        if improved:
            best_auroc = val_auroc if not math.isnan(val_auroc) else best_auroc
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        "val_auroc": val_auroc, "lr": optimizer.param_groups[0]["lr"], "images_per_s": rate})
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val mean AUROC %.4f%s  lr %.2g  %.1f img/s  %.0f s",
                 epoch + 1, args.epochs, train_loss, val_loss, val_auroc, " (best)" if improved else "",
                 optimizer.param_groups[0]["lr"], rate, time.perf_counter() - t0)
        if dist.is_main():
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "epoch": epoch + 1, "best_auroc": best_auroc, "history": history, "args": stored_args,
                     "classes": CLASSES, "rng": rng_state()}
            if improved:
                # The best checkpoint is a model only, with the thresholds chosen on validation.
                save_checkpoint({"model": state["model"], "args": stored_args, "classes": CLASSES,
                                 "epoch": epoch + 1, "val_auroc": val_auroc,
                                 "thresholds": choose_thresholds(val_labels, val_probs)}, ckpt_best)
            save_checkpoint(state, ckpt_last)
        dist.barrier()
        if os.environ.get(KILL_ENV) == str(epoch + 1):
            os.kill(os.getpid(), signal.SIGKILL)

    # Evaluate the best model, with thresholds chosen on validation by that same model.
    best = read_checkpoint(ckpt_best)
    unwrap(model).load_state_dict(best["model"])
    thresholds = best["thresholds"]
    if dist.is_main():
        thresholds_frame(thresholds).to_csv(os.path.join(args.run_dir, "thresholds.csv"), index=False)
        if args.save_model:
            os.makedirs(os.path.dirname(os.path.abspath(args.save_model)), exist_ok=True)
            shutil.copyfile(ckpt_best, args.save_model)
    test = evaluate_test(model, args, device, frame, thresholds, loss_fn)
    if dist.is_main():
        localize_and_report(model, test, args.run_dir, args, thresholds, device, args.image_size)


def evaluate_only(args, device):
    if not args.load_model:
        raise UserError("--is_training 0 needs --load_model CKPT")
    model, ckpt = load_checkpoint(args.load_model, map_location="cpu")
    check_classes(ckpt, args.load_model)
    args.image_size = args.image_size or ckpt["args"].get("image_size") or 224
    frame = read_labels(args.csv, args.skip_missing)
    model.to(device, memory_format=torch.channels_last)
    thresholds = ckpt.get("thresholds")
    if thresholds is None:
        val = split(frame, "val", args.limit)
        if len(val) == 0:
            raise UserError(f"{args.load_model} stores no thresholds and {args.csv} has no val rows to choose them on")
        _, probs, labels = evaluate(model, make_loader(val, args, train=False), device, LOSSES[args.loss],
                                    amp=args.use_amp, desc="validation")
        thresholds = choose_thresholds(labels, probs)
    if dist.is_main():
        os.makedirs(args.run_dir, exist_ok=True)
        thresholds_frame(thresholds).to_csv(os.path.join(args.run_dir, "thresholds.csv"), index=False)
    test = evaluate_test(model, args, device, frame, thresholds, LOSSES[args.loss])
    if dist.is_main():
        localize_and_report(model, test, args.run_dir, args, thresholds, device, args.image_size)


def predict_new(args, device):
    """--predict PATH: probabilities and labels for new studies, then heatmaps, boxes and the report."""
    if not args.load_model or not args.out:
        raise UserError("--predict needs --load_model CKPT and --out DIR")
    files = image_files(args.predict)
    if not files:
        raise UserError(f"no PNG, JPEG or DICOM files at {args.predict}")
    model, ckpt = load_checkpoint(args.load_model, map_location="cpu")
    check_classes(ckpt, args.load_model)
    image_size = args.image_size or ckpt["args"].get("image_size") or 224
    thresholds = ckpt.get("thresholds") or [0.5] * NUM_CLASSES
    sizes = []
    for path in files:
        try:
            h, w = read_gray(path).shape[:2]
        except Exception as e:  # decoders raise many types for a broken file
            raise UserError(f"cannot decode {path}: {e}") from None
        sizes.append((w, h))
    frame = pd.DataFrame({"ImageID": [os.path.splitext(os.path.basename(f))[0] for f in files], "path": files,
                          "width": [s[0] for s in sizes], "height": [s[1] for s in sizes]})
    args.image_size, args.run_dir = image_size, args.out
    model.to(device, memory_format=torch.channels_last)
    loader = DataLoader(ChestImages(frame, image_size, CLASSES), batch_size=args.batch_size, num_workers=args.workers,
                        worker_init_fn=worker_init)
    _, probs, _ = predict(model, loader, device, amp=args.use_amp)
    os.makedirs(args.out, exist_ok=True)
    predictions_frame(frame["ImageID"], probs, thresholds).to_csv(os.path.join(args.out, "predictions.csv"),
                                                                  index=False)
    log.info("predicted %d images -> %s", len(frame), os.path.join(args.out, "predictions.csv"))
    localize_and_report(model, frame, args.out, args, thresholds, device, image_size)


def resumed_args(args, argv):
    """The arguments of the run being resumed, with --epochs (and the device/worker settings) from this command."""
    path = os.path.join(args.resume, "args.json")
    if not os.path.isfile(path):
        raise UserError(f"cannot resume: {path} not found (is {args.resume} a run folder?)")
    if not os.path.isfile(os.path.join(args.resume, "checkpoint_last.pt")):
        raise UserError(f"cannot resume: {args.resume} has no checkpoint_last.pt (the run stopped before its "
                        f"first epoch ended)")
    with open(path) as f:
        stored = json.load(f)
    given = {a.split("=")[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
    run_dir = args.resume
    for key, value in stored.items():
        if not (key in ("epochs", "workers", "device", "threads") and key in given):
            setattr(args, key, value)
    args.resume = args.run_dir = run_dir
    return args


def use_amp(setting, device):
    if setting != "auto":
        return setting == "1"
    return device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def run(args, argv):
    device = dist.init_distributed(args.device)
    if args.resume:
        args = resumed_args(args, argv)
    args.use_amp = use_amp(str(args.amp), device)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = args.out if args.predict else args.run_dir
    setup_logging(run_dir)
    seed_everything(args.seed + dist.rank(), args.deterministic)
    canonical_name(args.model)
    if args.predict:
        return predict_new(args, device)
    for key in ("csv", "weights", "boxes_csv", "load_model"):  # args.json must work from any folder on resume
        if getattr(args, key):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    if (args.is_training and not args.resume and not args.overwrite
            and os.path.exists(os.path.join(args.run_dir, "checkpoint_last.pt"))):
        raise UserError(f"{args.run_dir} already holds a run (checkpoint_last.pt): continue it with --resume "
                        f"{args.run_dir}, or pass --overwrite to start over and replace its checkpoints")
    if dist.is_main():
        os.makedirs(args.run_dir, exist_ok=True)
        if args.is_training and not args.resume:
            with open(os.path.join(args.run_dir, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1)
    if args.is_training:
        return train(args, device)
    return evaluate_only(args, device)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    try:
        run(args, argv)
    except (UserError, CheckpointError, PretrainedUnavailable, NonFiniteLoss, ValueError) as e:
        message = str(e)
        if isinstance(e, NonFiniteLoss):
            message += "; stopped, the last good checkpoint is kept (try a lower --lr or --amp 0)"
        print(f"traintest.py: error: {message}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
