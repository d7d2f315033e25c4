"""The evaluation report: ``metrics.json``, a readable ``report.md`` and PNG plots.

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly (no ``pyplot``), so
writing a report never changes the process-wide matplotlib backend (the Slicer GUI, notebooks).
Every file is written to a temporary name and renamed, so a crash leaves no half-written report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from scripts.core.atomic import write_bytes_atomic
from scripts.train.metrics import as_numpy, roc_auc, roc_curve
from scripts.core.tasks import Task

FILES = {"metrics": "metrics.json", "report": "report.md", "per_image": "per_image.csv",
         "confusion_matrix": "confusion_matrix.png", "roc": "roc.png",
         "training_curves": "training_curves.png", "dice_histogram": "dice_histogram.png",
         "reliability": "reliability.png"}

#: training-curve panels: (title, y label, [(line label, history keys to try)]). A key matches a
#: flattened history key exactly or as its ending after "/", so the trainer's nested
#: ``val_details/<metric>/seg/lesion/dice`` is found as ``seg/lesion/dice``.
HISTORY_PANELS: list[tuple[str, str, list[tuple[str, list[str]]]]] = [
    ("Training loss", "loss", [("total", ["loss", "train_loss"]), ("segmentation", ["loss_seg"]),
                               ("diagnosis", ["loss_cls"])]),
    ("Validation lesion Dice", "Dice", [("lesion Dice", ["val_dice", "seg/lesion/dice"])]),
    ("Validation diagnosis accuracy", "accuracy", [("accuracy", ["val_accuracy", "cls/accuracy"]),
                                                   ("balanced accuracy", ["val_balanced_accuracy", "cls/balanced_accuracy"])]),
    ("Validation combined score", "mean(Dice, balanced accuracy)", [("combined score", ["val_score", "combined_score"])]),
    ("Learning rate", "learning rate", [("lr", ["lr"])]),
]


def plot_reliability(bins: dict[str, dict[str, list]], path: Path) -> None:
    """Reliability diagram: top-class confidence vs accuracy per bin, one line per probability set."""
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    for (name, b), marker in zip(bins.items(), "os^"):
        pts = [(c, a) for c, a in zip(b["confidence"], b["accuracy"]) if c is not None]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability of the diagnosis probabilities")
    ax.legend(loc="upper left", fontsize=8)
    _save_figure(fig, path)


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Two panels: counts, and rows normalised to 1 (the diagonal is each class's recall)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    k = len(classes)
    fig = Figure(figsize=(2 * max(4.0, 1.1 * k + 1.5), max(3.6, 0.9 * k + 1.6)), layout="constrained")
    fig.get_layout_engine().set(wspace=0.12)  # keep the right panel's label off the left colour bar
    for ax, data, title, fmt in zip(fig.subplots(1, 2), (cm, norm), ("Counts", "Row-normalised (recall on the diagonal)"),
                                    ("{:.0f}", "{:.2f}")):
        image = ax.imshow(np.nan_to_num(data), cmap="Blues", vmin=0, vmax=1 if data is norm else max(cm.max(), 1))
        ax.set(xticks=range(k), yticks=range(k), xlabel="Predicted class", ylabel="True class", title=title)
        ax.set_xticklabels(classes, rotation=35, ha="right")
        ax.set_yticklabels(classes)
        high = np.nanmax(data) if np.isfinite(data).any() else 1.0
        for (i, j), v in np.ndenumerate(data):
            text = "–" if np.isnan(v) else fmt.format(v)
            ax.text(j, i, text, ha="center", va="center", color="white" if v > 0.6 * high else "black")
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        if data is cm:
            bar.locator = MaxNLocator(integer=True)  # counts: no 17.5 ticks
            bar.update_ticks()
    fig.suptitle("Diagnosis confusion matrix")
    _save_figure(fig, path)


def plot_roc(cls_prob: np.ndarray, cls_true: np.ndarray, classes: Sequence[str], path: Path) -> bool:
    """One-vs-rest ROC curve per class with its AUC; ``False`` (nothing written) if none is defined."""
    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for k, name in enumerate(classes):
        curve = roc_curve(cls_prob[:, k], cls_true == k)
        if curve is not None:
            ax.plot(*curve, lw=1.8, label=f"{name} (AUC {roc_auc(cls_prob[:, k], cls_true == k):.3f})")
            drawn = True
    if not drawn:
        return False
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title="One-vs-rest ROC curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    _save_figure(fig, path)
    return True


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _find_key(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    for cand in candidates:
        for key in keys:
            if key == cand or key.endswith("/" + cand):
                return key
    return None


def history_series(history: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[tuple[str, str, dict[str, np.ndarray]]]]:
    """Epochs and the :data:`HISTORY_PANELS` that have data: ``[(title, ylabel, {line: values})]``.

    Missing values are NaN; ``log_vars/<task>`` (uncertainty weighting) adds a panel of its own.
    """
    flat = [_flatten(h) for h in history]
    keys = list(dict.fromkeys(k for h in flat for k in h))
    panels = HISTORY_PANELS + [("Uncertainty weights", "log variance",
                                [(k.split("/", 1)[1], [k]) for k in keys if k.startswith("log_vars/")])]
    found = []
    for title, ylabel, lines in panels:
        series = {}
        for label, candidates in lines:
            key = _find_key(keys, candidates)
            values = np.array([_num(h.get(key)) for h in flat]) if key else np.array([])
            if np.isfinite(values).any():
                series[label] = values
        if series:
            found.append((title, ylabel, series))
    epochs = np.array([_num(h.get("epoch", i + 1)) for i, h in enumerate(flat)])
    return epochs, found


def plot_history(history: Sequence[dict[str, Any]], path: Path) -> bool:
    """A panel per :data:`HISTORY_PANELS` entry with data, against epoch; ``False`` if none has data.

    Epochs with ``seg_only: true`` (the segmentation-only warm-up) are shaded.
    """
    epochs, panels = history_series(history)
    if not panels:
        return False
    warmup = [e for e, h in zip(epochs, history) if h.get("seg_only") is True]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.3 * cols, 3.3 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax, (title, ylabel, series) in zip(axes, panels):
        for label, values in series.items():
            ok = np.isfinite(values)
            ax.plot(epochs[ok], values[ok], marker="o", ms=3, lw=1.5, label=label)
            if title == "Learning rate" and (values[ok] > 0).all() and values[ok].max() > 5 * values[ok].min():
                ax.set_yscale("log")  # step / plateau schedules span decades
        if warmup:
            ax.axvspan(min(warmup) - 0.5, max(warmup) + 0.5, color="grey", alpha=0.15, label="seg-only warm-up")
        ax.set(title=title, xlabel="Epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if np.isfinite(epochs).any():
            ax.set_xlim(np.nanmin(epochs) - 0.5, np.nanmax(epochs) + 0.5)  # one epoch: no 0.99..1.01 axis
        ax.grid(alpha=0.3)
        if len(series) > 1 or warmup:
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Training history")
    _save_figure(fig, path)
    return True


def plot_dice_histogram(dice: np.ndarray, path: Path) -> None:
    """Histogram of per-image lesion Dice over 0..1 with mean and median marked."""
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(float(np.mean(dice)), color="tab:red", ls="--", label=f"mean {np.mean(dice):.3f}")
    ax.axvline(float(np.median(dice)), color="tab:green", ls=":", label=f"median {np.median(dice):.3f}")
    ax.set(xlim=(0, 1), xlabel="Lesion Dice of one image", ylabel="Images",
           title=f"Per-image lesion Dice ({dice.size} images with a lesion)")
    ax.legend(loc="upper left")
    _save_figure(fig, path)


def _write_per_image(rows: Sequence[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def write_report(metrics: dict[str, Any], out_dir: str | os.PathLike, history: Sequence[dict[str, Any]] | None = None,
                 cls_prob: Any = None, cls_true: Any = None, per_image: Sequence[dict[str, Any]] | None = None,
                 reliability: dict[str, dict[str, list]] | None = None) -> dict[str, Path]:
    """Write the evaluation report folder.

    Args:
        metrics: the dict of :meth:`scripts.train.metrics.MetricsAccumulator.compute`.
        out_dir: created if missing.
        history: per-epoch dicts of the trainer (``history.json``) for the training curves.
        cls_prob: ``(N, K)`` probabilities and cls_true ``(N,)`` indices of the scored samples (ROC).
        per_image: rows of :meth:`~scripts.train.metrics.MetricsAccumulator.per_image` (CSV, Dice histogram).
        reliability: ``{name: scripts.train.calibration.reliability_bins(...)}`` for the reliability diagram.

    Returns:
        name -> path of every file written (keys of :data:`FILES` that were produced).

    Raises:
        ValueError: ``metrics`` lacks the ``seg`` / ``cls`` halves.
    """
    if not isinstance(metrics, dict) or Task.SEG.value not in metrics or Task.CLS.value not in metrics:
        raise ValueError("write_report: metrics must be the dict of MetricsAccumulator.compute() with 'seg' and 'cls'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    written = {"metrics": paths["metrics"]}
    write_bytes_atomic(paths["metrics"], (json.dumps(metrics, indent=2) + "\n").encode())
    cls = metrics[Task.CLS.value]
    if cls["n_scored"] > 0:
        plot_confusion_matrix(np.array(cls["confusion_matrix"]), cls["classes"], paths["confusion_matrix"])
        written["confusion_matrix"] = paths["confusion_matrix"]
    if cls_prob is not None and cls_true is not None and len(as_numpy(cls_true)):
        if plot_roc(as_numpy(cls_prob), as_numpy(cls_true).reshape(-1), cls["classes"], paths["roc"]):
            written["roc"] = paths["roc"]
    if reliability:
        plot_reliability(reliability, paths["reliability"])
        written["reliability"] = paths["reliability"]
    if history and plot_history(history, paths["training_curves"]):
        written["training_curves"] = paths["training_curves"]
    if per_image:
        _write_per_image(per_image, paths["per_image"])
        written["per_image"] = paths["per_image"]
        dice = np.array([r["dice"] for r in per_image if r.get("dice") is not None], dtype=np.float64)
        if dice.size:
            plot_dice_histogram(dice, paths["dice_histogram"])
            written["dice_histogram"] = paths["dice_histogram"]
    written["report"] = paths["report"]
    text = render_markdown(metrics, {k: p.name for k, p in written.items()}, history_given=bool(history))
    write_bytes_atomic(paths["report"], text.encode())
    return written


# ----------------------------------------------------------------------------- report.md


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(sep) + " |"] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows] + [""]


def _segmentation_md(seg: dict[str, Any], files: dict[str, str]) -> list[str]:
    les, emp = seg["lesion"], seg["empty_masks"]
    fg = ", ".join(seg["segments"][1:])
    lines = [f"## Segmentation ({fg})", ""]
    lines += _table(["images", "count"], [
        ["evaluated", seg["n_images"]], ["without a mask (excluded)", seg["n_without_mask"]],
        ["with a lesion (scored below)", les["n_images"]], ["with an empty mask (reported apart)", emp["n_images"]]], "lr")
    dice = "n/a" if les["dice"] is None else f"{les['dice']:.3f} ± {les['dice_std']:.3f} (median {les['dice_median']:.3f})"
    lines += _table(["metric", "value", "what it means"], [
        ["Dice", dice, "overlap 2·\\|P∩T\\| / (\\|P\\|+\\|T\\|) of predicted P and true T lesion (all foreground "
                       "segments), per image, averaged over images with a lesion"],
        ["IoU", _f(les["iou"]), "\\|P∩T\\| / \\|P∪T\\| per image"],
        ["Precision", _f(les["precision"]), "share of predicted lesion voxels that are lesion (0 when nothing is predicted)"],
        ["Recall", _f(les["recall"]), "share of true lesion voxels found (sensitivity)"]], "lrl")
    if len(seg["segments"]) > 2:
        lines += ["Per segment, over the images that contain it:", ""]
        lines += _table(["segment", "images", "Dice", "IoU"], [[n, v["n_images"], _f(v["dice"]), _f(v["iou"])]
                                                             for n, v in seg["per_segment"].items()], "lrrr")
    fp = "n/a" if emp["mean_false_positive_voxels"] is None else (
        f"{emp['mean_false_positive_voxels']:.1f} voxels ({100 * emp['mean_false_positive_fraction']:.2f}% of the image)")
    lines += ["### Images whose ground truth has no lesion", "",
              "Not scored by Dice: empty against empty is undefined, and counting it as 1.0 would inflate the mean. "
              "Image-level specificity is the share of them where nothing was predicted.", ""]
    lines += _table(["images", "predicted empty", "specificity", "mean false-positive area"],
                    [[emp["n_images"], emp["n_predicted_empty"], _f(emp["specificity"]), fp]], "rrrl")
    if "dice_histogram" in files:
        lines += [f"![Per-image lesion Dice]({files['dice_histogram']})", ""]
    return lines


def _classification_md(cls: dict[str, Any], files: dict[str, str]) -> list[str]:
    lines = ["## Diagnosis", "", f"{cls['n_samples']} samples, {cls['n_without_class']} without a class "
             f"(excluded), {cls['n_scored']} scored.", ""]
    if cls["n_scored"] == 0:
        return lines
    mac, wei = cls["macro"], cls["weighted"]
    prf = lambda d: f"{_f(d['precision'])} / {_f(d['recall'])} / {_f(d['f1'])}"  # noqa: E731
    lines += _table(["metric", "value", "what it means"], [
        ["Accuracy", _f(cls["accuracy"]), "share of correct diagnoses"],
        ["Balanced accuracy", _f(cls["balanced_accuracy"]), "mean recall over classes; not inflated by a frequent class"],
        ["MCC", _f(cls["mcc"]), "Matthews correlation over the whole confusion matrix: 1 perfect, 0 chance"],
        ["ROC AUC (macro)", _f(cls["auc_macro"]), "mean one-vs-rest AUC: how well probabilities rank, at any threshold"],
        ["Macro precision / recall / F1", prf(mac), "plain mean over the classes present in the ground truth"],
        ["Weighted precision / recall / F1", prf(wei), "mean weighted by each class's number of samples"]], "lrl")
    lines += ["### Per class", ""]
    lines += _table(["class", "samples", "precision", "recall", "F1", "ROC AUC"], [
        [n, v["support"], _f(v["precision"]), _f(v["recall"]), _f(v["f1"]), _f(v["auc"])]
        for n, v in cls["per_class"].items()], "lrrrrr")
    lines += ["n/a: undefined (a class absent from the ground truth has no recall or AUC).", "",
              "### Confusion matrix (rows: true class, columns: predicted class)", ""]
    lines += _table(["true \\ predicted"] + cls["classes"],
                    [[n] + row for n, row in zip(cls["classes"], cls["confusion_matrix"])], "l" + "r" * len(cls["classes"]))
    for key, title in (("confusion_matrix", "Confusion matrix"), ("roc", "ROC curves")):
        if key in files:
            lines += [f"![{title}]({files[key]})", ""]
    cal = cls.get("calibration")
    if cal:
        lines += ["### Calibration", "",
                  f"Temperature scaling (T = {_f(cal.get('temperature'))}, fitted on the validation split after "
                  "training) changes no diagnosis, only how sure the probabilities are. Expected calibration error "
                  "(MONAI `CalibrationErrorMetric`, class-wise, 15 bins): 0 is perfect.", ""]
        lines += _table(["probabilities", "ECE"], [["as the network gives them", _f(cal.get("ece_uncalibrated"))],
                                                   ["temperature-scaled (what the Predictor reports)", _f(cal.get("ece"))]], "lr")
        if cal.get("ece_floor") is not None:
            lines += [f"Perfectly calibrated probabilities would still show an ECE of about {_f(cal['ece_floor'])} on "
                      f"these {cal.get('n_samples', 'few')} samples (the mean ECE of the reported probabilities against "
                      "classes drawn from themselves): an ECE near it cannot be told from perfect calibration here.", ""]
        if "reliability" in files:
            lines += [f"![Reliability diagram]({files['reliability']})", ""]
    return lines


def _consistency_md(con: dict[str, Any] | None) -> list[str]:
    if not con or con.get("rate") is None:
        return []
    pct = 100 * con["min_fraction"]
    return ["## Agreement of the two heads", "",
            f"A contradiction is a tumor-free diagnosis over a predicted lesion of at least {pct:.2g}% of the image, "
            "or a tumor diagnosis with an empty segmentation. The Predictor flags both in the result's warnings.", ""] + \
        _table(["images", "contradictions", "rate", "tumor-free diagnosis with a lesion", "tumor diagnosis without one"],
               [[con["n_images"], con["tumor_free_with_lesion"] + con["tumor_without_lesion"], f"{100 * con['rate']:.1f}%",
                 con["tumor_free_with_lesion"], con["tumor_without_lesion"]]], "rrrrr")


def render_markdown(metrics: dict[str, Any], files: dict[str, str], history_given: bool) -> str:
    """The text of ``report.md``; ``files`` maps :data:`FILES` keys to the names that were written."""
    score = metrics.get("combined_score")
    lines = ["# Evaluation report", "",
             f"**Combined score: {_f(score)}** = mean of the lesion Dice and the diagnosis balanced accuracy "
             "(of the halves that exist); training keeps the checkpoint with the highest value.", ""]
    lines += _segmentation_md(metrics[Task.SEG.value], files)
    lines += _classification_md(metrics[Task.CLS.value], files)
    lines += _consistency_md(metrics.get("consistency"))
    lines += ["## Training history", ""]
    if "training_curves" in files:
        lines += [f"![Training curves]({files['training_curves']})", ""]
    else:
        lines += ["No training history was given." if not history_given else "The history holds none of the series plotted here.", ""]
    lines += ["## Files", "", f"- [{files['metrics']}]({files['metrics']}): every number above (null = undefined)"]
    if "per_image" in files:
        lines += [f"- [{files['per_image']}]({files['per_image']}): one row per image, in evaluation order, "
                  "to find the failures"]
    return "\n".join(lines) + "\n"
