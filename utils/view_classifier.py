"""Frontal or lateral, for the images whose header says nothing: a small classifier trained on the known views.

    python -m utils.view_classifier --csv combined.csv [--out combined.csv] [--cache-dir DIR]

About a third of OpenI's images (and every image ingested from PNG) carry no view, and the frontal-only default leaves
them out. A frontal and a lateral chest radiograph differ in their whole layout (two lung fields and a centred heart
against one body profile), so a logistic regression on 32x32 thumbnails, each standardized to zero mean and unit
variance so that windowing does not matter, separates them; it is trained on the images whose view is known (PadChest's
Projection, DICOM headers) in the train and val splits, its accuracy is measured on the test split's known views (a
patient-level held-out set), and it labels the unknown ones 'frontal' or 'lateral', with view_source 'predicted' and
the probability in view_p_lateral so that nobody mistakes a guess for a header.
"""
import os
import sys

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from data.cache import cache_folder, image_cache
from data.commands import Parser, run_main
from data.dataset import decode_square, worker_process_init
from data.errors import InputError
from data.files import atomic_path, read_table
from data.views import view_kind

THUMBNAIL = 32


def features(images):
    """[N, S, S] uint8 -> [N, S*S] float: each image standardized, so that a darker or flatter windowing of the same
    view gives the same features."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True) + 1e-6
    return x


def fit(x, lateral, seed=0):
    """A logistic regression on the features; the flipped images are added, as a view does not depend on the side."""
    side = int(np.sqrt(x.shape[1]))
    flipped = x.reshape(-1, side, side)[:, :, ::-1].reshape(len(x), -1)
    model = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    return model.fit(np.concatenate([x, flipped]), np.concatenate([lateral, lateral]))


def classify_views(frame, cache_dir, size=THUMBNAIL, progress=True):
    """(frame with view, view_source, view_p_lateral filled for the unknown views; stats)."""
    frame = frame.copy()
    views = frame["view"].fillna("").astype(str) if "view" in frame.columns else pd.Series("", index=frame.index)
    kinds = views.map(view_kind)
    known = kinds.isin(["frontal", "lateral"]).to_numpy()
    unknown = (kinds == "").to_numpy()
    train = known & frame["split"].isin(["train", "val"]).to_numpy()
    test = known & (frame["split"] == "test").to_numpy()
    lateral = (kinds == "lateral").to_numpy()
    if train.sum() < 2 or len(set(lateral[train])) < 2:
        raise InputError("the view classifier needs frontal and lateral images of known view in the train and val "
                         f"splits; this CSV has {int((train & ~lateral).sum())} frontal and "
                         f"{int((train & lateral).sum())} lateral")
    cache = image_cache(cache_dir, frame["path"].astype(str).tolist(), size, decode_square, worker_process_init,
                        progress=progress)
    x = features(np.asarray(cache.images))
    decoded = np.array([e == "" for e in cache.errors])
    model = fit(x[train & decoded], lateral[train & decoded])
    stats = {"train": int((train & decoded).sum()), "test": int((test & decoded).sum()),
             "unknown": int(unknown.sum()), "undecodable": int((~decoded).sum())}
    if stats["test"]:
        predicted = model.predict(x[test & decoded]).astype(bool)
        stats["accuracy"] = float(accuracy_score(lateral[test & decoded], predicted))
        if "Source" in frame.columns:
            for source in sorted(frame["Source"][test & decoded].unique()):
                mask = (frame["Source"] == source).to_numpy()[test & decoded]
                stats[f"accuracy_{source}"] = float(accuracy_score(lateral[test & decoded][mask], predicted[mask]))
    if "view_source" not in frame.columns:
        frame["view_source"] = np.where(known | (kinds == "other").to_numpy(), "given", "")
    frame["view_p_lateral"] = np.nan
    guess = unknown & decoded
    if guess.any():
        p = model.predict_proba(x[guess])[:, 1]
        frame.loc[guess, "view"] = np.where(p >= 0.5, "lateral", "frontal")
        frame.loc[guess, "view_source"] = "predicted"
        frame.loc[guess, "view_p_lateral"] = np.round(p, 4)
        stats["predicted_lateral"] = int((p >= 0.5).sum())
    stats["predicted"] = int(guess.sum())
    return frame, stats


def main(argv=None):
    parser = Parser(prog="python -m utils.view_classifier", description=__doc__.split("\n\n")[0],
                    epilog="Exit status 2 on bad input (one line on stderr).")
    parser.add_argument("--csv", required=True, help="combinelabels.py's CSV (path, split, view columns)")
    parser.add_argument("--out", help="CSV to write (default: --csv itself, replaced atomically)")
    parser.add_argument("--cache-dir", help="where the 32-px thumbnails are cached (default: CSV_FOLDER/cache)")
    parser.add_argument("--size", type=int, default=THUMBNAIL, help="thumbnail side in pixels (default %(default)s)")
    return run_main(parser.prog, parser.parse_args, classify_csv, argv)


def classify_csv(args):
    """The unknown views of --csv predicted and written to --out, and what was done printed."""
    frame = read_table(args.csv, ["ImageID", "path", "split"], what="combinelabels.py's CSV", error=InputError,
                       dtype={"ImageID": str, "PatientID": str, "view": str}, keep_default_na=False)
    root = os.path.dirname(os.path.abspath(args.csv))
    absolute = frame.assign(path=[p if os.path.isabs(p) else os.path.join(root, p) for p in frame["path"]])
    result, stats = classify_views(absolute, cache_folder(args.csv, args.cache_dir), size=args.size)
    result["path"] = frame["path"]
    out = args.out or args.csv
    with atomic_path(out) as tmp:
        result.to_csv(tmp, index=False)
    accuracy = ", ".join(f"{k[len('accuracy_'):]} {v:.3f}" for k, v in stats.items() if k.startswith("accuracy_"))
    held_out = (f"held-out accuracy {stats['accuracy']:.3f} on {stats['test']} test images of known view"
                + (f" ({accuracy})" if accuracy else "")) if "accuracy" in stats else "no test images of known view"
    print(f"view classifier: trained on {stats['train']} images; {held_out}; {stats['predicted']} unknown views "
          f"predicted ({stats.get('predicted_lateral', 0)} lateral) -> {out}")


if __name__ == "__main__":
    sys.exit(main())
