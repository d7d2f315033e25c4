"""Single-task MONAI baselines for ``bench_recipe.py``: benchmark code, not product code.

* ``unet``: ``monai.networks.nets.UNet`` (channels 16-32-64-128-256, strides 2, 2 residual units),
  segmentation only, DiceCE loss; 2D, or 3D patches + sliding window.
* ``densenet``: ``monai.networks.nets.DenseNet121`` (2D, random init, nothing downloaded), diagnosis
  only, cross-entropy loss.

Both take what the project's model card says (input size / patch, intensity normalisation, 3D
target spacing and orientation of the plan), train with AdamW and a cosine learning rate over the
wall-clock budget (the same budget rule as the bundle's ``scripts.train.schedule.BudgetSchedule``: the
clock starts after the data are cached and counts epochs with their validation; the run stops when
the next epoch would overrun the budget by more than half an epoch), random flips only, and keep the
weights of the best validation epoch (lesion Dice for ``unet``, balanced accuracy for ``densenet``).
Then each runs its own forward pass over the test split, resized back to every image's own
resolution, and writes the label maps / class probabilities to ``preds.npz`` for the benchmark to
score exactly as it scores the project.

Run by ``bench_recipe.py --worker SPEC.json`` in its own process.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from scripts.core.datalist import load_datalist
from scripts.train.metrics import overlap_scores
from scripts.core.transforms import load_transforms, map_mask_values, match_channels, normalize, val_transforms

UNET_CHANNELS = (16, 32, 64, 128, 256)
MIN_LR_RATIO = 0.01


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def unet_levels(spatial_size: list[int], most: int = 4) -> int:
    """How many stride-2 steps the patch allows without remainder (at most ``most``, at least 1)."""
    n = most
    while n > 1 and any(int(s) % 2 ** n for s in spatial_size):
        n -= 1
    return n


def build_network(kind: str, dims: int, in_channels: int, n_segments: int, n_classes: int,
                  spatial_size: list[int]) -> torch.nn.Module:
    from monai.networks.nets import DenseNet121, UNet

    if kind == "unet":
        levels = unet_levels(spatial_size)
        return UNet(spatial_dims=dims, in_channels=in_channels, out_channels=n_segments,
                    channels=UNET_CHANNELS[:levels + 1], strides=(2,) * levels, num_res_units=2)
    if kind == "densenet":
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes, pretrained=False)
    raise ValueError(f"unknown baseline {kind!r}")


# ------------------------------------------------------------------------------------------ data


def cache_2d(samples: list[dict], spec: dict, keep: str) -> dict[str, torch.Tensor]:
    """The samples that carry ``keep`` ("seg" or "cls") as model-size tensors (the bundle's own loading,
    channel matching, normalisation and resize: ``scripts.core.transforms.val_transforms``)."""
    chain = val_transforms(2, spec["spatial_size"], spec["in_channels"], spec["n_segments"], spec["normalization"])
    images, labels, classes = [], [], []
    for s in samples:
        if keep == "seg" and "label" not in s or keep == "cls" and s.get("class") is None:
            continue
        d = chain(dict(s))
        images.append(torch.as_tensor(d["image"]).float())
        labels.append(torch.as_tensor(d["label"]).to(torch.uint8))
        classes.append(int(d["class"]))
    return {"image": torch.stack(images), "label": torch.stack(labels), "class": torch.tensor(classes)}


def _pre_3d(spec: dict, keys: tuple[str, ...]):
    """Load + channel first + (the plan's) orientation and spacing: invertible, so test maps go back."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    chain: list = [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
    if spec.get("orientation"):
        chain.append(Orientationd(keys, axcodes=spec["orientation"]))
    if spec.get("target_spacing"):
        chain.append(Spacingd(keys, pixdim=spec["target_spacing"], mode=("bilinear", "nearest")[:len(keys)]))
    return Compose(chain)


def _image_array(image: Any, spec: dict) -> np.ndarray:
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    return np.asarray(normalize(match_channels(arr, spec["in_channels"]), spec["normalization"]), np.float32)


def cache_3d(samples: list[dict], spec: dict) -> list[dict[str, torch.Tensor]]:
    """Volumes with a mask, resampled as the plan says, normalised: plain tensors (C, X, Y, Z)."""
    from monai.data import set_track_meta

    set_track_meta(True)  # resampling needs each file's affine
    pre = _pre_3d(spec, ("image", "label"))
    out = []
    for s in samples:
        if "label" not in s:
            continue
        d = pre({"image": s["image"], "label": s["label"]})
        label = map_mask_values(np.asarray(d["label"]), spec["n_segments"])
        out.append({"image": torch.from_numpy(_image_array(d["image"], spec)), "label": torch.from_numpy(label)})
    set_track_meta(False)
    return out


def flip_batch(x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Light augmentation: each spatial axis of each sample flipped with probability 0.5."""
    for axis in range(2, x.ndim):
        which = torch.rand(x.shape[0], generator=gen) < 0.5
        if which.any():
            x = x.clone()
            x[which] = x[which].flip(axis - 1)
            if y is not None:
                y = y.clone()
                y[which] = y[which].flip(axis - 1)
    return x, y


# ------------------------------------------------------------------------------------ validation


def lesion_dice(pred: torch.Tensor, true: torch.Tensor) -> list[float]:
    """Per-image lesion Dice (all foreground together) of images whose truth has a lesion."""
    p, t = (pred.reshape(pred.shape[0], -1) > 0), (true.reshape(true.shape[0], -1) > 0)
    tp, fp, fn = (p & t).sum(1).numpy(), (p & ~t).sum(1).numpy(), (~p & t).sum(1).numpy()
    lesion = (tp + fn) > 0
    return overlap_scores(tp[lesion], fp[lesion], fn[lesion])["dice"].tolist()


def balanced_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    recalls = [float((pred[true == c] == c).mean()) for c in np.unique(true)]
    return float(np.mean(recalls)) if recalls else 0.0


# ---------------------------------------------------------------------------------------- training


class Budget:
    """Cosine learning rate over the run's progress and the stop rule of ``BudgetSchedule``."""

    def __init__(self, optimizer: torch.optim.Optimizer, budget_min: float, max_epochs: int) -> None:
        self.optimizer, self.budget_s, self.max_epochs = optimizer, budget_min * 60.0, max_epochs
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def step(self, iteration: int, per_epoch: int) -> None:
        progress = min(1.0, max(iteration / (self.max_epochs * per_epoch), self.seconds() / self.budget_s))
        factor = MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))
        for g, base in zip(self.optimizer.param_groups, self.base):
            g["lr"] = base * factor

    def spent(self) -> bool:
        return self.seconds() >= self.budget_s

    def stop_after(self, epoch_s: float, epoch: int) -> bool:
        return epoch >= self.max_epochs or self.budget_s - self.seconds() < 0.5 * epoch_s


def train(spec: dict, log: list[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    kind, dims, device = spec["kind"], spec["spatial_dims"], torch.device(spec["device"])
    datalist = load_datalist(spec["datalist"])
    gen = torch.Generator().manual_seed(spec["seed"])
    keep = "seg" if kind == "unet" else "cls"
    t_cache = time.perf_counter()
    if dims == 2:
        train_data = cache_2d(datalist.split("training"), spec, keep)
        val_data = cache_2d(datalist.split("validation"), spec, keep)
        n_train = len(train_data["image"])
    else:
        train_data = cache_3d(datalist.split("training"), spec)
        val_data = cache_3d(datalist.split("validation"), spec)
        n_train = len(train_data)
    cache_s = time.perf_counter() - t_cache
    net = build_network(kind, dims, spec["in_channels"], spec["n_segments"], spec["n_classes"],
                        spec["spatial_size"]).to(device)
    if kind == "unet":
        from monai.losses import DiceCELoss

        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=spec["learning_rate"], weight_decay=spec["weight_decay"])
    bs = int(spec["batch_size"])
    per_epoch = max(1, math.ceil(n_train / bs))
    budget = Budget(opt, spec["budget_min"], spec["max_epochs"])
    best, best_score, best_epoch, history, iteration = None, -1.0, 0, [], 0
    crop = _crop_3d(spec) if dims == 3 else None
    for epoch in range(1, spec["max_epochs"] + 1):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n_train, generator=gen)
        losses = []
        for start in range(0, n_train, bs):
            idx = order[start:start + bs]
            if dims == 2:
                x, y = train_data["image"][idx], train_data["label"][idx]
                c = train_data["class"][idx]
            else:
                x, y = _patches(train_data, idx, crop)
                c = None
            x, y = flip_batch(x, y if kind == "unet" else None, gen)
            budget.step(iteration, per_epoch)
            opt.zero_grad(set_to_none=True)
            with _autocast(device):
                out = net(x.to(device))
                loss = loss_fn(out.float(), y.to(device).long()) if kind == "unet" else loss_fn(out.float(), c.to(device))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            iteration += 1
            if budget.spent():  # an epoch longer than the whole budget is cut short (then validated)
                break
        score = validate(net, kind, val_data, spec, device)
        epoch_s = time.perf_counter() - t0
        history.append({"epoch": epoch, "seconds": round(epoch_s, 2), "loss": float(np.mean(losses)),
                        "val_score": score, "lr": opt.param_groups[0]["lr"]})
        log.append(f"epoch {epoch}: loss {np.mean(losses):.4f}, val {score:.4f}, {epoch_s:.1f} s")
        if score > best_score:
            best_score, best_epoch, best = score, epoch, copy.deepcopy(net.state_dict())
        if budget.stop_after(epoch_s, epoch):
            break
    net.load_state_dict(best)
    info = {"epochs": len(history), "best_epoch": best_epoch, "best_val_score": best_score,
            "trained_s": round(budget.seconds(), 2), "cache_s": round(cache_s, 2), "n_train": n_train,
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])), "history": history,
            "parameters": sum(p.numel() for p in net.parameters())}
    return net, info


def _crop_3d(spec: dict):
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd

    size = tuple(int(s) for s in spec["spatial_size"])
    return Compose([SpatialPadd(("image", "label"), spatial_size=size),
                    RandCropByPosNegLabeld(("image", "label"), label_key="label", spatial_size=size, pos=2.0,
                                           neg=1.0, num_samples=1)])


def _patches(data: list[dict], idx: torch.Tensor, crop) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in idx.tolist():
        d = crop({"image": data[i]["image"], "label": data[i]["label"]})[0]
        xs.append(torch.as_tensor(d["image"]).float())
        ys.append(torch.as_tensor(d["label"]).to(torch.uint8))
    return torch.stack(xs), torch.stack(ys)


@torch.inference_mode()
def validate(net: torch.nn.Module, kind: str, data, spec: dict, device: torch.device) -> float:
    """Mean lesion Dice (unet) or balanced accuracy (densenet) on the validation split, at model size."""
    net.eval()
    if spec["spatial_dims"] == 3:
        dice = []
        for d in data:
            logits = _sliding(net, d["image"][None], spec, device)
            dice += lesion_dice(logits.argmax(1).cpu(), d["label"])
        return float(np.mean(dice)) if dice else 0.0
    preds = []
    n = len(data["image"])
    for start in range(0, n, int(spec["val_batch_size"])):
        with _autocast(device):
            out = net(data["image"][start:start + int(spec["val_batch_size"])].to(device)).float()
        preds.append(out.argmax(1).cpu())
    pred = torch.cat(preds) if preds else torch.zeros(0)
    if kind == "unet":
        dice = lesion_dice(pred, data["label"][:, 0])
        return float(np.mean(dice)) if dice else 0.0
    return balanced_accuracy(pred.numpy(), data["class"].numpy())


def _sliding(net: torch.nn.Module, x: torch.Tensor, spec: dict, device: torch.device) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    def run(w: torch.Tensor) -> torch.Tensor:
        with _autocast(device):
            return net(w.to(device)).float().cpu()

    return sliding_window_inference(x, tuple(int(s) for s in spec["spatial_size"]), 2, run, overlap=0.25)


# ------------------------------------------------------------------------------------------- test


@torch.inference_mode()
def predict_test(net: torch.nn.Module, spec: dict) -> dict[str, Any]:
    """Every test image at its own resolution: label maps (unet) or probabilities (densenet), and ms each.

    2D label maps are ``(H, W)`` (rows first, as the image file); 3D ones ``(Z, Y, X)`` (SimpleITK's
    array order), so that both compare directly with masks read by SimpleITK.
    """
    from monai.data import MetaTensor, set_track_meta
    from monai.transforms import Compose, Invertd

    kind, device = spec["kind"], torch.device(spec["device"])
    net.eval()
    samples = load_datalist(spec["datalist"], require_training=False).split("test")
    labels, probs, ms = [], [], []
    if spec["spatial_dims"] == 2:
        load = Compose(load_transforms())
        size = tuple(int(s) for s in spec["spatial_size"])
        for s in samples:
            t0 = time.perf_counter()
            image = _image_array(load({"image": s["image"]})["image"], spec)
            x = torch.from_numpy(image)[None].to(device)
            h, w = x.shape[-2:]
            with _autocast(device):
                out = net(F.interpolate(x, size=size, mode="bilinear", align_corners=False)).float()
            if kind == "unet":
                label = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False).argmax(1)[0]
                labels.append(label.to(torch.uint8).cpu().numpy())
            else:
                probs.append(torch.softmax(out, 1)[0].cpu().numpy())
            ms.append((time.perf_counter() - t0) * 1000)
    else:
        set_track_meta(True)
        pre = _pre_3d(spec, ("image",))
        invert = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)
        for s in samples:
            t0 = time.perf_counter()
            d = pre({"image": s["image"]})
            x = torch.from_numpy(_image_array(d["image"], spec))[None]
            label = _sliding(net, x, spec, device).argmax(1)  # (1, X, Y, Z) on the resampled grid
            d["pred"] = MetaTensor(label.float())  # Invertd takes the transforms from d["image"]
            back = invert(d)["pred"]  # (1, X, Y, Z) on the file's own grid
            labels.append(np.asarray(torch.as_tensor(back)[0].round().to(torch.uint8)).T.copy())
            ms.append((time.perf_counter() - t0) * 1000)
    return {"labels": labels, "probs": np.stack(probs) if probs else None, "ms": ms,
            "images": [str(s["image"]) for s in samples]}


def run_worker(spec_file: str | Path) -> int:
    """Train one baseline as ``spec`` says, predict the test split, write ``preds.npz`` + ``result.json``."""
    from monai.data import set_track_meta
    from monai.utils import set_determinism

    set_track_meta(False)  # plain tensors, as the bundle trains (3D resampling switches it on where needed)
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=spec["seed"])
    torch.manual_seed(spec["seed"])
    log: list[str] = []
    net, info = train(spec, log)
    test = predict_test(net, spec)
    arrays = {f"label_{i}": a for i, a in enumerate(test["labels"])}
    if test["probs"] is not None:
        arrays["probs"] = test["probs"]
    np.savez_compressed(out / "preds.npz", **arrays)
    result = {**info, "ms_per_image": test["ms"], "images": test["images"], "threads": torch.get_num_threads(),
              "device": spec["device"]}
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "train.log").write_text("\n".join(log) + "\n", encoding="utf-8")
    return 0
