"""A traintest.py run folder: the name of every file a run writes there, where it is (a local folder, or a gs://
prefix trained in a local work folder), what --resume reads back from it (args.json), what --overwrite deletes and
when, and the lines that tell a user how to go on after a stop.

A gs:// run (--output-dir or --sync-to gs://BUCKET/PREFIX, for a spot VM) is trained in a local work folder and
mirrored to the bucket prefix, a data.gcs.BucketFolder: after each checkpoint the files whose size or CRC32C differ
from the bucket's copy are uploaded (never a temporary file of a write in progress); `--resume gs://BUCKET/PREFIX` on
a fresh VM downloads them first (pull_run), each verified by its checksum. Write permission is tried before training
starts, so a missing role is one line at the start, not a traceback after the first epoch.

Every module that writes or reads a run's files takes its name from here, so that --overwrite, the report, the
comparison of two runs and the sample world's score agree on what a run holds.
"""
import fcntl
import json
import logging
import os
import shutil

import pandas as pd

from data.errors import InputError
from data.files import atomic_path, is_gcs_url, output_file, output_folder, write_text_atomic
from utils import dist
from utils.runtime import log_to_file

log = logging.getLogger(__name__)

ARGS_JSON = "args.json"
TRAIN_LOG = "train.log"
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
METRICS_CSV = "metrics.csv"
PREDICTIONS_CSV = "predictions.csv"
THRESHOLDS_CSV = "thresholds.csv"
CALIBRATION_CSV = "calibration.csv"
RELIABILITY_PNG = "reliability.png"
ROC_PNG = "roc.png"
HEATMAPS_DIR = "heatmaps"
HEATMAP_INDEX_CSV = "index.csv"  # inside HEATMAPS_DIR
BOXES_CSV = "boxes.csv"
LOCALIZATION_CSV = "localization.csv"
REPORT_HTML = "report.html"
SKIPPED_IMAGES_CSV = "skipped_images.csv"
PREDICT_ERRORS_CSV = "predict_errors.csv"
COMPARE_DIR = "compare"
COMPARE_CSV = "compare.csv"  # inside COMPARE_DIR/<name of the run compared with>
HISTORY_CSV = "history.csv"  # per epoch: losses, validation AUROC, learning rate (report.html's training section)
TRAINING_PNG = "training.png"  # the curves of HISTORY_CSV
TENSORBOARD_DIR = "tb"  # TensorBoard event files (--tensorboard)
MODEL_CARD_JSON = "model_card.json"  # the model that produced the results, and its input convention

# What a run writes besides args.json and train.log: --overwrite deletes these before the new run starts, so that
# nothing of the old run can be resumed or mixed with the new one.
RUN_OUTPUTS = (CHECKPOINT_LAST, CHECKPOINT_BEST, METRICS_CSV, PREDICTIONS_CSV, THRESHOLDS_CSV, ROC_PNG, CALIBRATION_CSV,
               RELIABILITY_PNG, BOXES_CSV, LOCALIZATION_CSV, REPORT_HTML, SKIPPED_IMAGES_CSV, PREDICT_ERRORS_CSV,
               HEATMAPS_DIR, COMPARE_DIR, HISTORY_CSV, TRAINING_PNG,
               TENSORBOARD_DIR, MODEL_CARD_JSON)

DEFAULT_RUN_DIR = os.path.join("runs", "run")
# Flags naming files: made absolute, so that args.json (and --resume) work from any folder.
PATH_FLAGS = ("csv", "weights", "boxes_csv", "load_model", "cache_dir")
# What a resumed run's checkpoint fixes: its model (with its input) and where it started from.
MODEL_FLAGS = ("model", "pretrained", "weights", "pooling", "lse_r", "map_size", "image_size", "load_model")


def model_name(run_dir):
    """The name in the run's model_card.json (metrics.csv and predictions.csv record it), '' without one."""
    try:
        with open(path(run_dir, MODEL_CARD_JSON), encoding="utf-8") as f:
            return str(json.load(f).get("name", ""))
    except (OSError, ValueError):
        return ""


def path(run_dir, name):
    return os.path.join(run_dir, name)


def work_folder(url):
    """The local folder a gs:// run is trained in: under the user's cache, named by the bucket and prefix, so that a
    restarted VM that kept its disk finds it again ($XDG_CACHE_HOME/traintest/runs/BUCKET/PREFIX)."""
    from data.gcs import parse_gcs_url  # on use: a run on local files never loads the GCS client
    bucket, prefix = parse_gcs_url(str(url))
    parts = [p for p in prefix.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InputError(f"{url}: name a run folder inside the bucket, gs://BUCKET/runs/NAME")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "traintest", "runs", bucket, *parts)


def pull_run(url, run_dir, client=None):
    """Download the run at `url` into run_dir (BucketFolder.pull); returns how many files. The processes of one
    machine (DDP ranks) take turns (a lock beside run_dir): the first downloads, the others find the files there.
    InputError when the prefix holds no run."""
    from data.gcs import BucketFolder
    folder = BucketFolder(url, client=client)
    os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)
    with open(os.path.abspath(run_dir) + ".pull.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remote = folder.listing()
        if not remote:
            raise InputError(f"{folder.url}: no run there to resume (the prefix holds no objects)")
        return folder.pull(run_dir, remote)


def stored_args(run_dir):
    """The arguments a run was started with (run_dir/args.json); InputError naming the file when it is missing."""
    where = path(run_dir, ARGS_JSON)
    if not os.path.isfile(where):
        raise InputError(f"cannot resume: {where} not found (is {run_dir} a run folder?)")
    try:
        with open(where) as f:
            stored = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot resume: {where} is not readable JSON ({e}); it should hold the run's flags as "
                         f"written by traintest.py") from None
    if not isinstance(stored, dict):
        raise InputError(f"cannot resume: {where} holds a JSON {type(stored).__name__}, not the run's flags (an "
                         f"object)")
    stored.setdefault("output_dir", stored.get("run_dir"))  # args.json of the first format
    return stored


def resumed_args(parser, argv, given):
    """The arguments of `--resume RUN`: the run's args.json as the defaults that the flags given replace, except the
    flags that shape the model (InputError). A gs:// RUN is fetched into its local work folder first."""
    args = parser.parse_args(argv)
    refused = [k for k in given if k in MODEL_FLAGS]
    if refused:
        raise InputError(f"--resume continues {args.resume}'s own model; it cannot change "
                         f"{', '.join('--' + k.replace('_', '-') for k in refused)} (start a new run with "
                         f"--load-model {args.resume}/{CHECKPOINT_BEST} to fine-tune)")
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
    return args


def locate(args):
    """Settle where the run lives: the default run folder when training; a gs:// --output-dir becomes --sync-to and
    the local work folder it is trained in; the flags naming files absolute."""
    if not args.predict:
        args.output_dir = args.output_dir or DEFAULT_RUN_DIR
    if args.output_dir and is_gcs_url(args.output_dir):
        if args.sync_to and args.sync_to.rstrip("/") != args.output_dir.rstrip("/"):
            raise InputError(f"--output-dir {args.output_dir} and --sync-to {args.sync_to}: give one of them")
        args.sync_to, args.output_dir = args.output_dir, work_folder(args.output_dir)
    for key in PATH_FLAGS:
        if getattr(args, key) not in (None, "off"):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    return args


def check_locations(args, training):
    """The output locations, before any work: the run folder writable, --save-model's file, a run to resume (or none
    to replace without --overwrite), write access to --sync-to's bucket; InputError naming the first that is wrong."""
    if args.sync_to and not is_gcs_url(args.sync_to):
        raise InputError(f"--sync-to {args.sync_to}: expected a gs://BUCKET/runs/NAME URL")
    if args.sync_to:
        work_folder(args.sync_to)  # a URL that names a run folder
    output_folder(args.output_dir, "--output-dir")
    if training and args.save_model:
        output_file(args.save_model, "--save-model")
    last = path(args.output_dir, CHECKPOINT_LAST)
    if training and args.resume and not os.path.isfile(last):
        raise InputError(f"cannot resume: {args.output_dir} has no {CHECKPOINT_LAST} (the run stopped before its "
                         f"first epoch ended)")
    if training and not args.resume and not args.overwrite and os.path.exists(last):
        raise InputError(f"{args.output_dir} already holds a run ({CHECKPOINT_LAST}): continue it with --resume "
                         f"{args.sync_to or args.output_dir}, or pass --overwrite to start over and replace it")
    if args.sync_to and dist.is_main():
        bucket(args.sync_to).check_writable()  # a missing role is found now, not after the first epoch


def start_run(args):
    """args.json of a new run. With --overwrite the old run's checkpoints and results are deleted first, so that an
    interrupted new run can never be resumed from the old run's weights: call it only once every input is checked."""
    if args.overwrite:
        for name in RUN_OUTPUTS:
            where = path(args.output_dir, name)
            if os.path.isdir(where) and not os.path.islink(where):
                shutil.rmtree(where)
            elif os.path.lexists(where):
                os.remove(where)
    write_text_atomic(path(args.output_dir, ARGS_JSON),
                      json.dumps({k: v for k, v in vars(args).items() if k != "given"}, indent=1))


def begin(args, new_run=False, card=None):
    """Every input is checked: from here on the run folder changes (a new run's args.json after --overwrite's
    deletions, train.log with the messages of the checks first, model_card.json: `card`, the model's)."""
    if new_run and dist.is_main():
        start_run(args)
    if card is not None and dist.is_main():
        write_text_atomic(path(args.output_dir, MODEL_CARD_JSON), json.dumps(card, indent=1))
    dist.barrier()
    log_to_file(path(args.output_dir, TRAIN_LOG))


def mirror(args):
    """The bucket copy of the run (--sync-to) on rank 0, or None."""
    return bucket(args.sync_to) if args.sync_to and dist.is_main() else None


def bucket(url):
    """The bucket prefix `url` as a data.gcs.BucketFolder (the GCS client loaded on use)."""
    from data.gcs import BucketFolder
    return BucketFolder(url)


def sync(bucket, run_dir):
    """Copy what changed in the run folder to the bucket (nothing without one)."""
    if bucket is not None:
        log.info("synced %d files to %s", bucket.push(run_dir), bucket.url)


def write_file_errors(rows, where):
    """A (path, error) CSV of the files that did not decode, written even when empty: an old run's list must not
    stay behind."""
    with atomic_path(where) as tmp:
        pd.DataFrame(list(rows), columns=["path", "error"]).to_csv(tmp, index=False)


def write_skipped(bad, run_dir):
    """--skip-bad-images (`bad` a list; None without it): skipped_images.csv of the images left out, from every rank,
    and a warning counting them."""
    rows = sorted(dict(row for part in dist.all_gather(bad or []) for row in part).items())
    if bad is None or not dist.is_main():
        return
    write_file_errors(rows, path(run_dir, SKIPPED_IMAGES_CSV))
    if rows:
        log.warning("skipped %d image%s that did not decode (listed in %s; first: %s: %s)", len(rows),
                    "s" if len(rows) > 1 else "", path(run_dir, SKIPPED_IMAGES_CSV), *rows[0])


def stopped_line(stop, args, where):
    """The one line of a run a stop signal ended with a checkpoint, saying how to go on."""
    return (f"traintest.py: stopped by {stop.name or 'a stop signal'} {where}; {CHECKPOINT_LAST} holds the run: "
            f"continue with python traintest.py --resume {args.sync_to or args.output_dir}")


def interrupted_hint(args):
    """How to go on after an interruption outside the training steps: --resume when there is a checkpoint."""
    if args is None or args.predict or args.test_only or not args.output_dir or is_gcs_url(args.output_dir):
        return ""
    if not os.path.isfile(path(args.output_dir, CHECKPOINT_LAST)):
        return "the first epoch had not ended: nothing to resume"
    return f"the last checkpoint is kept: continue with python traintest.py --resume {args.sync_to or args.output_dir}"
