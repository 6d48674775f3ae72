"""RUN/report.html: one page with the run's metrics, ROC curves, localization scores and heatmap gallery.

Built from whatever of model_card.json, history.csv, metrics.csv, roc.png, localization.csv, boxes.csv,
predictions.csv and heatmaps/ the run folder holds; training.png (the curves of history.csv) is drawn here. Images are referenced by relative paths, so the page opens from disk (file://) without a server, and the run
folder can be copied or zipped whole.
"""
import html
import json
import math
import os
import sys
from urllib.parse import quote

import numpy as np
import pandas as pd

from data.commands import Parser, run_main
from data.errors import EnvironmentFault, InputError
from data.files import read_table, write_text_atomic
from utils.metrics import save_figure
from utils.run_folder import (BOXES_CSV, CALIBRATION_CSV, COMPARE_CSV, COMPARE_DIR, HEATMAP_INDEX_CSV, HEATMAPS_DIR,
                              HISTORY_CSV, LOCALIZATION_CSV, METRICS_CSV, MODEL_CARD_JSON, PREDICTIONS_CSV,
                              RELIABILITY_PNG, REPORT_HTML, ROC_PNG, TRAINING_PNG)

MAX_GALLERY = 60

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 20px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 17px; margin: 22px 0 8px 0; }
.muted { color: #666; font-size: 12px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 12px; }
th { background: #1f4e79; color: #fff; padding: 3px 7px; text-align: left; font-weight: 600; }
td { padding: 2px 7px; border-bottom: 1px solid #ddd; text-align: right; }
td.name { text-align: left; }
tr.summary td { font-weight: 600; background: #eef3f8; }
.chance { color: #888; }
img.roc { width: 440px; border: 1px solid #ddd; }
img.training { width: 640px; border: 1px solid #ddd; }
table.card td { text-align: left; vertical-align: top; } table.card td.key { font-weight: 600; white-space: nowrap; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 270px; font-size: 11px; }
figure img { width: 270px; display: block; background: #eee; min-height: 120px; }
figcaption { padding: 2px 0; overflow-wrap: anywhere; }
.legend span { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 3px 0 10px; }
"""


def _cell(value, digits=3):
    if isinstance(value, float):
        if math.isnan(value):
            return "NA"
        return f"{value:.{digits}f}" if not value.is_integer() or abs(value) < 1 else f"{value:.0f}"
    return html.escape(str(value))


def table_html(frame, name_columns=("class",)):
    """An HTML table of a DataFrame; text columns left-aligned, numbers with 3 decimals, macro/micro/mean rows bold."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        first = str(values[0])
        cls = ' class="summary"' if first in ("macro", "micro", "mean", "overall") else ""
        cells = "".join(
            f'<td class="name">{_cell(v)}</td>' if c in name_columns or isinstance(v, str) else f"<td>{_cell(v)}</td>"
            for c, v in zip(frame.columns, values))
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def compact_metrics(metrics):
    """metrics.csv with the AUROC interval folded into one column, so the table fits beside the ROC curves."""
    if {"auroc_low", "auroc_high"} <= set(metrics.columns):
        interval = [f"{lo:.3f}-{hi:.3f}" if pd.notna(lo) and pd.notna(hi) else ""
                    for lo, hi in zip(metrics["auroc_low"], metrics["auroc_high"])]
        at = list(metrics.columns).index("auroc_low")
        metrics = metrics.drop(columns=["auroc_low", "auroc_high"])
        metrics.insert(at, "auroc 95% CI", interval)
    return metrics.rename(columns={"average_precision": "AP", "sensitivity": "sens", "specificity": "spec",
                                   "positives": "pos", "negatives": "neg"})


HEADLINE_NOTE = ('<div class="muted">macro: the mean over the 20 findings (normal and other findings are reported in '
                 'their own rows, outside it); 95% intervals from a bootstrap that resamples patients</div>')
GROUP_NOTE = ('<div class="muted">the same model on subsets of the evaluated images: each source, each view, PadChest\'s '
              'physician-labelled images, and held-out sources (external:&lt;source&gt;); a class a source never '
              'annotates has no row there</div>')


def group_summary(metrics):
    """One row per group of metrics.csv: images, the macro and micro AUROC with the macro's interval, AP and F1."""
    rows = []
    for group, part in metrics.groupby("group", sort=False):
        at = part.set_index("class")
        macro, micro = at.loc["macro"], at.loc["micro"]
        interval = (f"{macro['auroc_low']:.3f}-{macro['auroc_high']:.3f}"
                    if pd.notna(macro["auroc_low"]) and pd.notna(macro["auroc_high"]) else "")
        findings = at.drop(index=["macro", "micro"], errors="ignore")
        rows.append({"group": group, "images": int(part["images"].iloc[0]),
                     "findings with AUROC": int(findings["auroc"].notna().sum()),
                     "macro AUROC": macro["auroc"], "95% CI": interval, "micro AUROC": micro["auroc"],
                     "macro AP": macro["average_precision"], "macro F1": macro["f1"]})
    return pd.DataFrame(rows)


def calibration_html(run_dir):
    """The calibration section: calibration.csv's pooled row and per-class ECE beside reliability.png."""
    csv, png = os.path.join(run_dir, CALIBRATION_CSV), os.path.join(run_dir, RELIABILITY_PNG)
    if not os.path.isfile(csv):
        return []
    table = read_result(csv, ["class", "ece"])
    table = pd.concat([table[table["class"] == "overall"], table[table["class"] != "overall"]])
    columns = [c for c in ("class", "labelled", "ece", "ece_calibrated", "log_loss", "log_loss_calibrated",
                           "temperature") if c in table.columns]
    image = (f'<div><a href="{RELIABILITY_PNG}"><img class="roc" src="{RELIABILITY_PNG}" alt="reliability diagram">'
             "</a></div>" if os.path.isfile(png) else "")
    note = ('<div class="muted">expected calibration error (15 equal-width bins) and log-loss on the test split; '
            "'overall' pools the findings; with --calibrate, after one temperature per class fitted on validation</div>")
    return [f'<h2>Calibration</h2>{note}<div class="row"><div>{table_html(table[columns])}</div>{image}</div>']


def comparison_html(run_dir):
    """A section per comparison written by `python -m utils.compare OTHER RUN` into RUN/compare/<name>/."""
    folder = os.path.join(run_dir, COMPARE_DIR)
    if not os.path.isdir(folder):
        return []
    parts = []
    for name in sorted(os.listdir(folder)):
        csv = os.path.join(folder, name, COMPARE_CSV)
        if not os.path.isfile(csv):
            continue
        table = read_result(csv, ["class", "auroc_a", "auroc_b", "difference"])
        a = table["run_a"].iloc[0] if "run_a" in table.columns and len(table) else name
        unit = table["resampled"].iloc[0] if "resampled" in table.columns and len(table) else "patients"
        interval = [f"{lo:+.3f} to {hi:+.3f}" if pd.notna(lo) and pd.notna(hi) else ""
                    for lo, hi in zip(table["difference_low"], table["difference_high"])]
        shown = table[["class", "positives", "negatives", "auroc_a", "auroc_b", "difference"]].assign(
            **{"95% CI (paired)": interval, "DeLong p": table["delong_p"]})
        parts.append(f"<h2>Compared with {html.escape(str(a))}</h2>"
                     f'<div class="muted">A = that run, B = this run; difference B - A; paired bootstrap resampling '
                     f"{html.escape(str(unit))}; DeLong's test per class</div>" + table_html(shown))
    return parts


def localization_html(table):
    """The localization table in the paper's layout: a row per T, a column per class, 'acc (chance) / AFP' cells."""
    classes = [c for c in table.columns if c not in ("criterion", "T", "measure")]
    head = "<th>T</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = []
    for criterion in ("IoU", "IoBB"):
        part = table[table["criterion"] == criterion]
        for t in sorted(part["T"].unique()):
            at = part[part["T"] == t].set_index("measure")
            cells = "".join(
                f'<td>{at.at["acc", c]:.3f} <span class="chance">({at.at["chance_acc", c]:.3f})</span> / '
                f'{at.at["afp", c]:.2f}</td>' for c in classes)
            rows.append(f'<tr><td class="name">T({criterion})={t:g}</td>{cells}</tr>')
            if "paper_acc" in at.index:  # ChestX-ray8's own figure under the same T, for the eye to compare
                cells = "".join(f'<td class="chance">{at.at["paper_acc", c]:.3f}</td>' if pd.notna(at.at["paper_acc", c])
                                else '<td class="chance">&ndash;</td>' for c in classes)
                rows.append(f'<tr><td class="name chance">ChestX-ray8 (paper), T({criterion})={t:g}</td>{cells}</tr>')
    counts = table[table["criterion"] == "count"].set_index("measure")
    if "n_boxes" in counts.index:
        rows.append('<tr class="summary"><td class="name">true boxes</td>'
                    + "".join(f"<td>{int(counts.at['n_boxes', c])}</td>" for c in classes) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def card_value_html(value):
    """A model card's value as HTML, whatever its JSON shape: text escaped, a list of texts comma-separated (of
    anything else, one item per line), an object as a table of its keys."""
    if isinstance(value, dict):
        rows = "".join(f'<tr><td class="key">{html.escape(str(k))}</td><td>{card_value_html(v)}</td></tr>'
                       for k, v in value.items())
        return f'<table class="card">{rows}</table>'
    if isinstance(value, list):
        flat = not any(isinstance(v, (dict, list)) for v in value)
        return (", " if flat else "<br>").join(card_value_html(v) for v in value)
    return html.escape("" if value is None else str(value))


def model_html(run_dir):
    """The Model section: RUN/model_card.json's object, key by key (the model that produced these results)."""
    where = os.path.join(run_dir, MODEL_CARD_JSON)
    if not os.path.isfile(where):
        return []
    try:
        with open(where, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{where}: not readable JSON ({e}); traintest.py writes the model's card there") from None
    if not isinstance(card, dict):
        raise InputError(f"{where}: holds a JSON {type(card).__name__}, not the model card (an object)")
    return [f"<h2>Model</h2>{card_value_html(card)}"]


def plot_training(history, path):
    """training.png: the train and validation loss, the validation macro AUROC and the learning rate per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, auroc, lr) = plt.subplots(1, 3, figsize=(12, 3.6))
    epochs = history["epoch"]
    loss.plot(epochs, history["train_loss"], "o-", color="tab:blue", label="train")
    loss.plot(epochs, history["val_loss"], "o-", color="tab:orange", label="validation")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend(fontsize=8)
    auroc.plot(epochs, history["val_auroc"], "o-", color="tab:green")
    auroc.set(xlabel="epoch", ylabel="macro AUROC", title="validation macro AUROC")
    lr.plot(epochs, history["lr"], "o-", color="tab:red")
    lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (after the epoch)", yscale="log")
    for ax in (loss, auroc, lr):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)


TRAINING_NOTE = ('<div class="muted">per epoch, from history.csv: the mean training loss over the epoch\'s images, the '
                 "validation loss and macro AUROC after it, and the learning rate the plateau schedule set after it "
                 "(a resumed run continues the rows)</div>")


def training_html(run_dir):
    """The Training section: history.csv as curves (training.png, drawn here) and as a table."""
    where = os.path.join(run_dir, HISTORY_CSV)
    if not os.path.isfile(where):
        return []
    history = read_result(where, ["epoch", "train_loss", "val_loss", "val_auroc", "lr"])
    if len(history) == 0:
        return []
    plot_training(history, os.path.join(run_dir, TRAINING_PNG))
    table = history.rename(columns={"train_loss": "train loss", "val_loss": "val loss", "val_auroc": "val macro AUROC",
                                    "images_per_s": "images/s"})
    cells = [f"<tr>{''.join(f'<th>{html.escape(c)}</th>' for c in table.columns)}</tr>"]
    for row in table.to_dict("records"):
        cells.append("<tr>" + "".join(f"<td>{training_cell(c, v)}</td>" for c, v in row.items()) + "</tr>")
    image = (f'<div><a href="{TRAINING_PNG}"><img class="training" src="{TRAINING_PNG}" alt="training curves"></a>'
             "</div>")
    return [f'<h2>Training</h2>{TRAINING_NOTE}<div class="row">{image}<div><table>{"".join(cells)}</table></div></div>']


def training_cell(column, value):
    """A history.csv value as the training table shows it: the epoch whole, the learning rate in 2 significant
    digits, the rest with 4 decimals."""
    if isinstance(value, float) and math.isnan(value):
        return "NA"
    if column == "epoch":
        return f"{int(value)}"
    if column == "lr":
        return f"{value:.2g}"
    return f"{value:.1f}" if column == "images/s" else f"{value:.4f}"


def read_result(path, columns=(), **read_csv_kwargs):
    """A CSV the run wrote, with `columns`; InputError naming the file when it is not what the run writes."""
    return read_table(path, list(columns), what="a file traintest.py writes", error=InputError, **read_csv_kwargs)


def gallery_items(run_dir, limit=MAX_GALLERY):
    """[(file, caption)] for the gallery: from heatmaps/index.csv (written by utils.localization.localize) when present,
    images with true boxes first; otherwise every PNG in heatmaps/, sorted by name."""
    heat_dir = os.path.join(run_dir, HEATMAPS_DIR)
    index = os.path.join(heat_dir, HEATMAP_INDEX_CSV)
    if os.path.isfile(index):
        frame = read_result(index, ["file", "ImageID", "class", "probability", "predicted", "boxes", "true_boxes"],
                            dtype={"ImageID": str, "file": str})
        # a boolean array, not a list: an empty list would select no columns instead of no rows
        frame = frame[np.array([os.path.isfile(os.path.join(heat_dir, f)) for f in frame["file"]], dtype=bool)]
        frame = frame.sort_values(["true_boxes", "probability"], ascending=False, kind="stable").head(limit)
        items = []
        for r in frame.to_dict("records"):
            # the model's call apart from the truth, as localize wrote it; an older run's index has no caption
            said = (r["caption"] if isinstance(r.get("caption"), str) else
                    f"p={r['probability']:.2f} ({'positive' if r['predicted'] else 'negative'})")
            n, n_true = r["boxes"], r["true_boxes"]
            truth = f", {n_true} true box{'es' if n_true != 1 else ''}" if n_true else ""
            items.append((r["file"], f"<b>{html.escape(r['class'])}</b> {html.escape(said)}<br>"
                                     f"{n} box{'es' if n != 1 else ''}{truth} · {html.escape(r['ImageID'])}"))
        return items
    if not os.path.isdir(heat_dir):
        return []
    files = sorted(f for f in os.listdir(heat_dir) if f.endswith(".png"))[:limit]
    items = []
    for f in files:
        image_id, _, cls = f[:-4].rpartition("__")
        items.append((f, f"<b>{html.escape(cls)}</b><br>{html.escape(image_id)}"))
    return items


def write_report(run_dir):
    """Write run_dir/report.html from the files the run produced; returns its path."""
    run_dir = os.path.abspath(run_dir)
    path = lambda name: os.path.join(run_dir, name)
    parts = [f"<h1>Chest X-ray classification and localization</h1>"
             f'<div class="muted">run folder: {html.escape(run_dir)}</div>']

    summary = []
    if os.path.isfile(path(PREDICTIONS_CSV)):
        summary.append(f"{len(read_result(path(PREDICTIONS_CSV), ['ImageID'])):,} images predicted")
    if os.path.isfile(path(BOXES_CSV)):
        boxes = read_result(path(BOXES_CSV), ["ImageID"])
        summary.append(f"{len(boxes):,} boxes on {boxes['ImageID'].nunique():,} images")
    if summary:
        parts.append(f"<p>{' &middot; '.join(summary)}</p>")
    parts.extend(model_html(run_dir))
    parts.extend(training_html(run_dir))

    left, right, groups = "", "", None
    if os.path.isfile(path(METRICS_CSV)):
        metrics = read_result(path(METRICS_CSV), ["class"])
        if "group" in metrics.columns:
            groups = metrics
            metrics = metrics[metrics["group"] == metrics["group"].iloc[0]].drop(columns=["group", "images"])
        left = (f"<div><h2>Classification metrics (test split)</h2>{HEADLINE_NOTE}"
                f"{table_html(compact_metrics(metrics))}</div>")
    if os.path.isfile(path(ROC_PNG)):
        right = (f'<div><h2>ROC curves</h2><a href="{ROC_PNG}"><img class="roc" src="{ROC_PNG}" alt="ROC curves">'
                 "</a></div>")
    if left or right:
        parts.append(f'<div class="row">{left}{right}</div>')
    if groups is not None and groups["group"].nunique() > 1:
        parts.append("<h2>By group</h2>" + GROUP_NOTE + table_html(group_summary(groups), ("group",)))
    parts.extend(calibration_html(run_dir))
    parts.extend(comparison_html(run_dir))

    if os.path.isfile(path(LOCALIZATION_CSV)):
        table = read_result(path(LOCALIZATION_CSV), ["criterion", "T", "measure"])
        parts.append("<h2>Localization (ChestX-ray8 protocol)</h2>"
                     '<div class="muted">accuracy <span class="chance">(chance: a box of the true box\'s size at a '
                     "random position)</span> / average false positives per image; a true box counts as found when "
                     "any predicted box of its class overlaps it by more than T</div>" + localization_html(table))

    items = gallery_items(run_dir)
    if items:
        figures = "".join(
            f'<figure><a href="{HEATMAPS_DIR}/{quote(f)}"><img src="{HEATMAPS_DIR}/{quote(f)}" alt="{html.escape(f)}" '
            f'loading="eager"></a><figcaption>{caption}</figcaption></figure>' for f, caption in items)
        parts.append('<h2>Heatmaps</h2><div class="muted legend">'
                     '<span style="background:#fff;border:1px solid #999"></span>predicted boxes'
                     '<span style="background:#f0f"></span>true boxes</div>'
                     f'<div class="gallery">{figures}</div>')
    if len(parts) == 1:
        parts.append("<p>This run folder has no results yet.</p>")

    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Run report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = path(REPORT_HTML)
    write_text_atomic(out, page)
    return out


def main(argv=None):
    parser = Parser(prog="python -m utils.report",
                    description="Write RUN/report.html from the files of a traintest.py run folder.")
    parser.add_argument("run_dir", help="run folder (holds metrics.csv, roc.png, localization.csv, heatmaps/, ...)")
    return run_main(parser.prog, parser.parse_args, report_run, argv)


def report_run(args):
    """RUN/report.html of run folder args.run_dir written, and its path printed."""
    if not os.path.isdir(args.run_dir):
        what = "is not a folder" if os.path.exists(args.run_dir) else "does not exist"
        raise InputError(f"run folder {args.run_dir} {what}")
    try:
        print(f"wrote {write_report(args.run_dir)}")
    except OSError as e:
        raise EnvironmentFault(f"cannot write {os.path.join(args.run_dir, 'report.html')}: {e.strerror or e}") \
            from None


if __name__ == "__main__":
    sys.exit(main())
