"""Frontal or lateral, for the images whose header says nothing: a small CNN trained on the known views.

    python -m utils.view_classifier --csv combined.csv [--out combined.csv] [--cache-dir DIR] [--abstain 0.1,0.9]

About a third of OpenI's images (and every image ingested from PNG) carry no view, and the frontal-only default leaves
them out. A frontal and a lateral chest radiograph differ in their whole layout (two lung fields and a centred heart
against one body profile). A small CNN (models.view_net) on 64-px thumbnails learns it from the images whose view is
known (PadChest's Projection, DICOM headers) in the train and val splits, under augmentations that imitate another
hospital's images: a random window and gamma, zoom and crop, rotation, stretch, added borders, noise and left-right
flips (a flipped lateral is still a lateral). Its accuracy is measured on the test split's known views (a
patient-level held-out set) and on every known view of a source left out of training (--train-sources), and printed
per source. It then labels the unknown views 'frontal' or 'lateral', with view_source 'predicted' and the probability
in view_p_lateral, so that nobody mistakes a guess for a header. A guess whose probability of lateral lies strictly
between the two --abstain limits is not made: the view stays empty (view_source 'abstained', the probability kept),
so that the frontal-only default leaves the image out rather than training on a wrong view; they are counted.
"""
import contextlib
import math
import os
import sys

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from data.cache import cache_folder, image_cache
from data.commands import Parser, run_main
from data.dataset import decode_square, worker_process_init
from data.errors import InputError
from data.files import atomic_path, read_table
from data.views import view_kind
from models.view_net import ViewNet
from utils.cli import checked, parse_sources

THUMBNAIL = 64
# A guess with p(lateral) strictly between these stays unknown. The net is confident on the views it has learned
# (p < 0.01 or > 0.99 on the sample world's held-out and shifted images); an image unlike both views lands between.
ABSTAIN = (0.1, 0.9)
STEPS, BATCH = 600, 64  # ~40k augmented thumbnails: about a minute on one core at 64 px, whatever the CSV's size


def parse_abstain(text):
    """'LOW,HIGH' -> (low, high), 0 <= low <= 0.5 <= high <= 1; '0.5,0.5' never abstains."""
    parts = str(text).split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--abstain {text!r} is not two probabilities LOW,HIGH (such as 0.1,0.9)") from None
    if not 0 <= low <= 0.5 <= high <= 1:
        raise ValueError(f"--abstain {text!r}: give 0 <= LOW <= 0.5 <= HIGH <= 1 (0.5,0.5 never abstains)")
    return low, high


def decide(p, abstain=ABSTAIN):
    """p(lateral) -> (is lateral, abstained) boolean arrays: a probability strictly between the limits abstains."""
    p = np.asarray(p, dtype=float)
    low, high = abstain
    abstained = (p > low) & (p < high)
    return (p >= 0.5) & ~abstained, abstained


def augment(x, generator):
    """A batch [B, 1, S, S] float in [0, 1] as other scanners and exports might have given it, drawn per image from
    `generator`: rotated up to 15 degrees, zoomed 0.7-1.25x (a crop, or the image inside a margin), shifted, stretched,
    flipped left-right half the time (a view does not depend on the side), its outside filled black, white or grey;
    then a window and a gamma; then a band of border on each side a third of the time; then noise."""
    b, _, s, _ = x.shape

    def uniform(low, high, n=b):
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-math.radians(15), math.radians(15))
    zoom = torch.exp(uniform(math.log(0.8), math.log(1.43)))  # the sampled region's side: >1 shrinks the image
    aspect = torch.exp(uniform(-0.15, 0.15))
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    sx, sy = zoom * aspect * flip, zoom / aspect
    theta = torch.stack([torch.stack([angle.cos() * sx, -angle.sin() * sy, uniform(-0.15, 0.15)], 1),
                         torch.stack([angle.sin() * sx, angle.cos() * sy, uniform(-0.15, 0.15)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)

    def fill():
        kind = torch.rand(b, generator=generator)
        return torch.where(kind < 0.6, 0.0, torch.where(kind < 0.8, 1.0, uniform(0, 1))).view(b, 1, 1, 1)

    outside = fill()
    x = F.grid_sample(x - outside, grid, align_corners=False) + outside
    low, high = uniform(0, 0.3), uniform(0.7, 1)
    x = ((x - low.view(b, 1, 1, 1)) / (high - low).view(b, 1, 1, 1)).clamp(0, 1)
    x = x ** torch.exp(uniform(-0.7, 0.7)).view(b, 1, 1, 1)
    rows = torch.arange(s, dtype=torch.float32).view(1, 1, s, 1) / s
    cols = rows.view(1, 1, 1, s)
    band = lambda: (uniform(0, 0.2) * (torch.rand(b, generator=generator) < 1 / 3)).view(b, 1, 1, 1)  # noqa: E731
    border = (rows < band()) | (rows >= 1 - band()) | (cols < band()) | (cols >= 1 - band())
    x = torch.where(border, fill(), x)
    return (x + uniform(0, 0.04).view(b, 1, 1, 1) * torch.randn(x.shape, generator=generator)).clamp(0, 1)


@contextlib.contextmanager
def one_thread():
    """One intra-op thread for the block (or the function it decorates): a net this small gains little from more,
    and on a shared 2-core machine two threads spinning against other processes made each step 6-12 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def train_net(images, lateral, seed=0, steps=STEPS, batch=BATCH, progress=False):
    """A ViewNet trained on uint8 thumbnails [N, S, S] with their lateral flags: AdamW with a cosine schedule, each
    batch drawn half frontal and half lateral (laterals are the minority, and the misses that matter), augmented."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ViewNet()
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    y = torch.as_tensor(np.asarray(lateral, dtype=np.float32))
    weights = torch.where(y > 0, 1 / y.sum(), 1 / (len(y) - y.sum()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    steps_range = range(steps)
    if progress:
        from tqdm import tqdm
        steps_range = tqdm(steps_range, desc="view classifier", unit="step", leave=False, mininterval=1)
    for _ in steps_range:
        index = torch.multinomial(weights, batch, replacement=True, generator=generator)
        loss = F.binary_cross_entropy_with_logits(model(augment(x[index].float() / 255, generator)), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@one_thread()
@torch.no_grad()
def p_lateral(model, images, batch=256):
    """p(lateral) of uint8 thumbnails [N, S, S]: the mean over the image and its mirror image."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).unsqueeze(1).float() / 255
        out.append((torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1)))) / 2)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def held_out_stats(lateral, p, abstain, prefix=""):
    """{accuracy, lateral_recall, abstained, images, laterals} of the guesses made on images of known view (keys
    after `prefix`); accuracy and recall over the guesses made, abstentions counted apart."""
    guess, abstained = decide(p, abstain)
    made = ~abstained
    stats = {f"{prefix}images": int(len(p)), f"{prefix}abstained": int(abstained.sum()),
             f"{prefix}laterals": int(lateral.sum())}
    if made.any():
        stats[f"{prefix}accuracy"] = float((guess[made] == lateral[made]).mean())
    if (lateral & made).any():
        stats[f"{prefix}lateral_recall"] = float(guess[lateral & made].mean())
    return stats


def classify_views(frame, cache_dir, size=THUMBNAIL, progress=True, abstain=ABSTAIN, train_sources=None, seed=0,
                   steps=STEPS):
    """(frame with view, view_source, view_p_lateral filled for the unknown views; stats). train_sources: train only
    on these sources' known views (default all); every known view of another source is held out."""
    frame = frame.copy()
    views = frame["view"].fillna("").astype(str) if "view" in frame.columns else pd.Series("", index=frame.index)
    kinds = views.map(view_kind)
    if "view_source" in frame.columns:  # an earlier run's guesses are guessed again, never learned from
        kinds[(frame["view_source"].astype(str) == "predicted").to_numpy()] = ""
    known = kinds.isin(["frontal", "lateral"]).to_numpy()
    unknown = (kinds == "").to_numpy()
    sources = frame["Source"].astype(str) if "Source" in frame.columns else pd.Series("", index=frame.index)
    if train_sources:
        missing = sorted(set(train_sources) - set(sources))
        if missing:
            raise InputError(f"--train-sources {', '.join(missing)}: no such Source in this CSV (it has "
                             f"{', '.join(sorted(set(sources))) or 'no Source column'})")
    trained_on = sources.isin(train_sources).to_numpy() if train_sources else np.ones(len(frame), dtype=bool)
    train = known & trained_on & frame["split"].isin(["train", "val"]).to_numpy()
    test = known & ((frame["split"] == "test").to_numpy() | ~trained_on)
    lateral = (kinds == "lateral").to_numpy()
    if train.sum() < 2 or len(set(lateral[train])) < 2:
        raise InputError("the view classifier needs frontal and lateral images of known view in the train and val "
                         f"splits{' of --train-sources' if train_sources else ''}; this CSV has "
                         f"{int((train & ~lateral).sum())} frontal and {int((train & lateral).sum())} lateral")
    cache = image_cache(cache_dir, frame["path"].astype(str).tolist(), size, decode_square, worker_process_init,
                        progress=progress)
    images = np.asarray(cache.images)
    decoded = np.array([e == "" for e in cache.errors])
    model = train_net(images[train & decoded], lateral[train & decoded], seed=seed, steps=steps, progress=progress)
    stats = {"train": int((train & decoded).sum()), "test": int((test & decoded).sum()),
             "unknown": int(unknown.sum()), "undecodable": int((~decoded).sum()), "abstain": tuple(abstain),
             "train_sources": sorted(set(sources[train & decoded]))}
    if stats["test"]:
        held = test & decoded
        p, truth = p_lateral(model, images[held]), lateral[held]
        stats.update({k: v for k, v in held_out_stats(truth, p, abstain).items() if k != "images"})
        for source in sorted(set(sources[held])):
            mask = (sources[held] == source).to_numpy()
            stats.update(held_out_stats(truth[mask], p[mask], abstain, prefix=f"{source}:"))
    if "view_source" not in frame.columns:
        frame["view_source"] = np.where(known | (kinds == "other").to_numpy(), "given", "")
    frame["view_p_lateral"] = np.nan
    guess = unknown & decoded
    stats["predicted"] = stats["predicted_lateral"] = stats["abstained_unknown"] = 0
    if guess.any():
        p = p_lateral(model, images[guess])
        is_lateral, abstained = decide(p, abstain)
        frame.loc[guess, "view"] = np.where(abstained, "", np.where(is_lateral, "lateral", "frontal"))
        frame.loc[guess, "view_source"] = np.where(abstained, "abstained", "predicted")
        frame.loc[guess, "view_p_lateral"] = np.round(p, 4)
        stats.update(predicted=int((~abstained).sum()), predicted_lateral=int(is_lateral.sum()),
                     abstained_unknown=int(abstained.sum()))
    return frame, stats


def main(argv=None):
    parser = Parser(prog="python -m utils.view_classifier", description=__doc__.split("\n\n")[0],
                    epilog="Exit status 2 on bad input (one line on stderr).")
    parser.add_argument("--csv", required=True, help="combinelabels.py's CSV (path, split, view columns)")
    parser.add_argument("--out", help="CSV to write (default: --csv itself, replaced atomically)")
    parser.add_argument("--cache-dir", help="where the thumbnails are cached (default: CSV_FOLDER/cache)")
    parser.add_argument("--size", type=int, default=THUMBNAIL, help="thumbnail side in pixels (default %(default)s)")
    parser.add_argument("--abstain", type=checked(parse_abstain), default=ABSTAIN, metavar="LOW,HIGH",
                        help="a guess whose p(lateral) lies strictly between LOW and HIGH is not made: the view stays "
                        "empty, view_source 'abstained' (default %s,%s; 0.5,0.5 always guesses)" % ABSTAIN)
    parser.add_argument("--train-sources", type=checked(parse_sources), metavar="NAMES",
                        help="train only on these sources' known views (Source names, comma-separated); every known "
                        "view of the others is held out and scored (default: all sources, test split held out)")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="training steps of %d augmented thumbnails (default %%(default)s)" % BATCH)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and augmentations")
    return run_main(parser.prog, lambda argv: checked_args(parser, argv), classify_csv, argv)


def checked_args(parser, argv):
    args = parser.parse_args(argv)
    if args.size < 16:
        parser.error(f"--size must be at least 16 (four poolings), got {args.size}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def summary_lines(stats, out):
    """What classify_csv prints: the held-out accuracy overall and per source, then what was labelled."""
    low, high = stats["abstain"]
    band = f"p(lateral) strictly between {low:g} and {high:g}"
    lines = []
    if stats["test"]:
        sources = sorted({k.split(":")[0] for k in stats if k.endswith(":images")})
        accuracy = ", ".join(f"{s} {stats[s + ':accuracy']:.3f}" for s in sources if s + ":accuracy" in stats)
        recall = f", lateral recall {stats['lateral_recall']:.3f}" if "lateral_recall" in stats else ""
        overall = f"accuracy {stats['accuracy']:.3f}" if "accuracy" in stats else "no guess"
        lines.append(f"view classifier: trained on {stats['train']} images ({', '.join(stats['train_sources'])}); "
                     f"held-out {overall}{recall} on {stats['test']} images of known view, {stats['abstained']} "
                     f"abstained ({band})" + (f" ({accuracy})" if accuracy else ""))
        for s in sources:
            parts = [f"accuracy {stats[s + ':accuracy']:.3f}" if s + ":accuracy" in stats else "no guess",
                     f"lateral recall {stats[s + ':lateral_recall']:.3f} of {stats[s + ':laterals']} laterals"
                     if s + ":lateral_recall" in stats else f"{stats[s + ':laterals']} laterals",
                     f"{stats[s + ':abstained']} abstained"]
            lines.append(f"  held out {s}: {stats[s + ':images']} images, " + ", ".join(parts))
    else:
        lines.append(f"view classifier: trained on {stats['train']} images; no held-out images of known view")
    lines.append(f"view classifier: {stats['predicted']} unknown views predicted ({stats['predicted_lateral']} "
                 f"lateral), {stats['abstained_unknown']} left unknown ({band}) -> {out}")
    return lines


def classify_csv(args):
    """The unknown views of --csv predicted and written to --out, and what was done printed."""
    frame = read_table(args.csv, ["ImageID", "path", "split"], what="combinelabels.py's CSV", error=InputError,
                       dtype={"ImageID": str, "PatientID": str, "view": str}, keep_default_na=False)
    root = os.path.dirname(os.path.abspath(args.csv))
    absolute = frame.assign(path=[p if os.path.isabs(p) else os.path.join(root, p) for p in frame["path"]])
    result, stats = classify_views(absolute, cache_folder(args.csv, args.cache_dir), size=args.size,
                                   abstain=args.abstain, train_sources=args.train_sources, seed=args.seed,
                                   steps=args.steps)
    result["path"] = frame["path"]
    out = args.out or args.csv
    with atomic_path(out) as tmp:
        result.to_csv(tmp, index=False)
    print("\n".join(summary_lines(stats, out)))


if __name__ == "__main__":
    sys.exit(main())
