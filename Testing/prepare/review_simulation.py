"""A radiologist who corrects the model's worst errors, simulated on the built-in synthetic set.

Used by ``test_review_finetune.py`` and ``benchmarks/bench_review.py``. One run:

1. the synthetic set's test patients are split in two: a *pool* the model is deployed on and
   reviewed, and a *held-out* set nobody trains on; the base datalist keeps the synthetic
   training / validation splits and the held-out set as its test split;
2. a model is trained on the base (``monai.bundle run training``, tiny settings);
3. the model runs on the pool (the bundle's Predictor: ``<name>_result.json`` + label map);
4. the reviewer writes ``<name>_review.json`` records: the ``fraction`` worst studies (by true
   error: a wrong diagnosis first, then a low Dice) are corrected -- the true mask as an edit, the
   true class as an overridden diagnosis -- and the others accepted as the model gave them;
5. ``python -m scripts.prepare reviewed POOL --merge base.json`` -> ``merged.json`` (accepted,
   unedited masks left out by default: ``Setting.accepted_masks``);
6. fine-tuning from the model (``--init_from``, train.json's fine-tuning learning rate unless
   ``Setting.finetune_lr``) on that datalist, and on the same studies all accepted uncorrected (the
   control: the same data and epochs without the corrections);
7. each model scored on the held-out set: balanced accuracy and Dice (images with a tumour).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "monai_bundle"


@dataclass
class Setting:
    """Sizes of one simulation (the test's are tiny: one thread, well under two minutes)."""

    size: int = 48
    n_train: int = 48
    n_val: int = 16
    n_test: int = 128  # split by patient into the reviewed pool and the held-out set
    channels: tuple[int, ...] = (8, 16, 32)
    epochs: int = 15
    finetune_epochs: int = 6
    finetune_lr: float | None = None  # None: train.json's (a tenth of training's with init_from)
    batch_size: int = 8
    fraction: float = 0.2
    accepted_masks: str = "skip"  # prepare reviewed --accepted-masks: what an accepted, unedited mask trains


def _read_mask(path: str) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    denom = pred.sum() + true.sum()
    return 1.0 if denom == 0 else float(2 * (pred & true).sum() / denom)


def balanced_accuracy(true: list[int], pred: list[int]) -> float:
    """Mean recall over the classes present in ``true``."""
    t, p = np.asarray(true), np.asarray(pred)
    return float(np.mean([(p[t == c] == c).mean() for c in np.unique(t)]))


def make_base(root: Path, seed: int, s: Setting) -> tuple[Path, list[dict], list[dict]]:
    """The synthetic set, ``base.json`` (its test split = the held-out half) and the pool / held-out samples."""
    from scripts.core.datalist import load_datalist
    from scripts.datasets.synthetic import ensure_dataset

    datalist = ensure_dataset(root / "data", seed=seed, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test, size=s.size)
    raw = json.loads(datalist.read_text(encoding="utf-8"))
    groups = sorted({e["group"] for e in raw["test"]})
    pool_groups = set(groups[::2])  # every other patient: both halves hold every class
    raw["test"] = [e for e in raw["test"] if e["group"] not in pool_groups]
    base = datalist.parent / "base.json"
    base.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    test = load_datalist(datalist, require_training=False).split("test")
    pool = [e for e in test if e["group"] in pool_groups]
    held = [e for e in test if e["group"] not in pool_groups]
    return base, pool, held


def train(datalist: Path, ckpt: Path, seed: int, s: Setting, epochs: int, init_from: Path | None = None,
          calibrate: bool = False, augment: bool = False) -> Path:
    """``monai.bundle run training`` in this process with tiny settings; returns ``model.pt``.

    ``calibrate`` / ``augment``: train.json's temperature scaling and augmentation (both on in its
    defaults; off here unless asked, so the tiny runs stay short and comparable)."""
    from monai.bundle import run

    overrides: dict[str, Any] = {
        "datalist_file": str(datalist), "ckpt_dir": str(ckpt), "max_epochs": epochs, "seed": seed,
        "spatial_size": [s.size, s.size], "network_channels": list(s.channels), "batch_size": s.batch_size,
        "val_batch_size": s.batch_size, "augment": augment, "calibrate": calibrate, "resume": False,
        "time_budget_min": None, "early_stop_patience": 1000, "num_workers": 0,
    }
    if init_from is not None:
        overrides["init_from"] = str(init_from)
        if s.finetune_lr is not None:  # the peak rate as given (train.json's factor 1)
            overrides.update(learning_rate=s.finetune_lr, finetune_lr_factor=1.0)
    run("training", config_file=str(BUNDLE / "configs" / "train.json"), **overrides)
    return ckpt / "model.pt"


def predictor(model: Path):
    from scripts.inference import Predictor

    return Predictor.from_bundle(BUNDLE, checkpoint=model, card=model.with_name("model_card.json"),
                                 device="cpu", tta=False)


def score(model: Path, samples: list[dict]) -> dict[str, float]:
    """Balanced accuracy, accuracy and the mean negative log-likelihood of the true class (samples with a
    class), and the mean Dice (samples with a tumour mask; NaN when there is none)."""
    p = predictor(model)
    classes = p.card["classes"]
    true, pred, dices, nll = [], [], [], []
    for e in samples:
        out = p.predict(e["image"])
        if "class" in e:
            true.append(int(e["class"]))
            pred.append(classes.index(out.result["diagnosis"]["label"]))
            prob = out.result["diagnosis"]["probabilities"][classes[int(e["class"])]]
            nll.append(-np.log(max(prob, 1e-4)))
        if "label" in e:
            mask = _read_mask(e["label"])
            if mask.any():
                dices.append(dice(out.label > 0, mask))
    return {"balanced_accuracy": balanced_accuracy(true, pred), "accuracy": float(np.mean(np.equal(true, pred))),
            "dice": float(np.mean(dices)) if dices else float("nan"), "nll": float(np.mean(nll))}


def review(model: Path, pool: list[dict], folder: Path, fraction: float,
           correct: bool) -> tuple[dict[str, int], list[dict]]:
    """Run the model on the pool into ``folder``; write a review record per study. Returns the counts of
    the decisions and the studies whose answer the reviewer changed (mask edited or diagnosis overridden)."""
    p = predictor(model)
    classes = p.card["classes"]
    errors = []
    for e in pool:
        out = p.predict(e["image"], folder, overlay=False)
        wrong = "class" in e and classes.index(out.result["diagnosis"]["label"]) != int(e["class"])
        d = dice(out.label > 0, _read_mask(e["label"])) if "label" in e else 1.0
        errors.append((float(wrong) + (1.0 - d), wrong, d, out.paths["result"], e))
    n_fix = round(fraction * len(pool)) if correct else 0
    ranked = sorted(errors, key=lambda x: -x[0])
    counts = {"accepted": 0, "edited": 0, "overridden": 0}
    changed = []
    for i, (_, wrong, d, result_file, e) in enumerate(ranked):
        record: dict[str, Any] = {"decision": "accepted"}
        if i < n_fix and "label" in e and d < 0.999:
            record.update(decision="edited", mask=str(e["label"]))
        if i < n_fix and wrong:
            record["final_diagnosis"] = classes[int(e["class"])]
        counts["overridden" if "final_diagnosis" in record else record["decision"]] += 1
        if record["decision"] == "edited" or "final_diagnosis" in record:
            changed.append(e)
        name = Path(result_file).name[: -len("_result.json")]
        Path(result_file).with_name(f"{name}_review.json").write_text(json.dumps(record), encoding="utf-8")
    return counts, changed


def prepare(review_dir: Path, base: Path, out: Path, accepted_masks: str = "skip") -> Path:
    from scripts.prepare.__main__ import main

    code = main(["reviewed", str(review_dir), "--out", str(out), "--merge", str(base), "--no-duplicate-check",
                 "--accepted-masks", accepted_masks])
    if code != 0:
        raise RuntimeError(f"prepare reviewed {review_dir} failed ({code})")
    return out / "merged.json"


def simulate(root: Path, seed: int, s: Setting) -> dict[str, Any]:
    """One full run (module docstring): held-out scores of the initial and both fine-tuned models, and
    ``on_changed``: the three models scored on the pool studies the reviewer changed, against the
    reviewer's answers (what the corrected fine-tune was taught and the control was not)."""
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    base, pool, held = make_base(root, seed, s)
    model = train(base, root / "initial", seed, s, s.epochs)
    out: dict[str, Any] = {"initial": score(model, held), "pool": len(pool), "held_out": len(held)}
    tuned = {}
    for name, correct in (("corrected", True), ("uncorrected", False)):
        out[f"review_{name}"], changed = review(model, pool, root / f"review_{name}", s.fraction, correct)
        if correct:
            out["changed"] = len(changed)
            corrections = changed
        merged = prepare(root / f"review_{name}", base, root / f"prepared_{name}", s.accepted_masks)
        tuned[name] = train(merged, root / f"tuned_{name}", seed, s, s.finetune_epochs, init_from=model)
        out[name] = score(tuned[name], held)
        out[f"card_{name}"] = json.loads(tuned[name].with_name("model_card.json").read_text(encoding="utf-8"))
    out["on_changed"] = {name: score(m, corrections) for name, m in (("initial", model), *tuned.items())}
    out["seconds"] = time.perf_counter() - start
    return out


def combined(scores: dict[str, float]) -> float:
    """The held-out figure the test compares: the mean of balanced accuracy and Dice."""
    return (scores["balanced_accuracy"] + scores["dice"]) / 2


if __name__ == "__main__":  # a quick look: python Testing/prepare/review_simulation.py ROOT [SEED]
    import sys

    sys.path.insert(0, str(BUNDLE))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = simulate(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0, Setting())
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("card_")}, indent=1))
