"""3D diagnosis: the lesion-aware head, aggregated over sliding windows with the rule of 2D slices.

The 3D configuration (``train.json`` + ``train_3d.json``) keeps ``cls_pooling: "lesion"``
(:class:`scripts.core.networks.LesionAwareHead`), and validation as well as the Predictor combine the
windows' class logits with :func:`scripts.core.sliding_window.aggregate_class_logits` (weight ``1 + tumor
voxels`` of the window): a window that shows the lesion decides the study's diagnosis.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import PersistentDataset

from scripts.core.sliding_window import MultiTaskSlidingWindowInferer, aggregate_class_logits, label_map
from scripts.core.networks import LesionAwareHead, MultiTaskUNet
from scripts.core.tasks import Task

CONFIGS = Path(__file__).resolve().parents[2] / "monai_bundle" / "configs"


def test_the_3d_config_trains_the_lesion_aware_head_on_cached_canonical_volumes(tmp_path):
    parser = ConfigParser()
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_3d.json")])
    parser.update({"device": "$torch.device('cpu')", "dataset_dir": str(tmp_path / "synthetic3d"),
                   "ckpt_dir": str(tmp_path / "models"), "datalist_file#n_train": 4, "datalist_file#n_val": 1,
                   "datalist_file#n_test": 1, "datalist_file#size": 32})
    assert parser.get_parsed_content("cls_pooling") == "lesion"
    network = parser.get_parsed_content("network_def")
    assert isinstance(network.classification_head, LesionAwareHead)
    card = parser.get_parsed_content("model_card")
    assert card["network"]["cls_pooling"] == "lesion"
    assert card["target_spacing"] == parser.get_parsed_content("target_spacing") and card["crop_foreground"] is True
    inferer = parser.get_parsed_content("validate#inferer")
    assert isinstance(inferer, MultiTaskSlidingWindowInferer) and inferer.sw_batch_size == 2  # CPU
    assert inferer.overlap == 0.0  # validation tiles the volume (the Predictor overlaps its windows by 0.25)
    for split in ("train", "validate"):
        dataset = parser.get_parsed_content(f"{split}#dataset")
        assert isinstance(dataset, PersistentDataset)
        # the cache lies beside the datalist (with its plan), one folder per pre-processing setting
        datalist_dir = os.path.dirname(os.path.abspath(str(parser.get_parsed_content("datalist_file"))))
        assert Path(dataset.cache_dir).parent == Path(datalist_dir) / "cache"
    sample = parser.get_parsed_content("validate#dataset")[0]  # cropped, resampled, cached
    assert sample["image"].ndim == 4 and any(Path(parser.get_parsed_content("validate#dataset").cache_dir).iterdir())


class _Recorder(torch.nn.Module):
    """Passes windows to the network and keeps each window's class logits and tumor voxel count."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.logits, self.tumor = network, [], []

    def forward(self, x: torch.Tensor) -> dict[Task, torch.Tensor]:
        out = self.network(x)
        self.logits.append(out[Task.CLS].float())
        self.tumor.append((label_map(out[Task.SEG]) > 0).flatten(1).sum(1))
        return out


def test_lesion_aware_3d_diagnosis_is_the_window_aggregate():
    torch.manual_seed(0)
    network = MultiTaskUNet(spatial_dims=3, in_channels=1, num_classes=4, channels=(4, 8, 16),
                            cls_pooling="lesion", dropout=0.0).eval()
    volume = torch.randn(1, 1, 40, 30, 20)
    recorder = _Recorder(network)
    with torch.inference_mode():
        out = MultiTaskSlidingWindowInferer((16, 16, 16), sw_batch_size=3, overlap=0.25)(volume, recorder)
    logits, tumor = torch.cat(recorder.logits), torch.cat(recorder.tumor)
    assert logits.shape[0] > 3  # several batches of windows
    torch.testing.assert_close(out[Task.CLS][0], aggregate_class_logits(logits, tumor))


def test_a_window_showing_the_lesion_decides_the_diagnosis():
    """Many lesion-free windows say class 2; the one window with tumor says class 0 and wins."""
    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0]] * 11 + [[5.0, 0.0, 0.0, 0.0]])
    tumor = torch.tensor([0] * 11 + [400])
    assert int(aggregate_class_logits(logits, tumor).argmax()) == 0
    assert int(aggregate_class_logits(logits, torch.zeros(12, dtype=torch.long)).argmax()) == 2
