"""Network-facing inference: slice axis, slice-wise 2D, sliding-window 3D, the diagnosis rule, device fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from infer_helpers import dice, tiny_card, wire_threshold
from scripts.inference import engine
from scripts.inference.orientation import display_view
from scripts.core.sliding_window import MultiTaskSlidingWindowInferer
from scripts.core.model_card import build_network

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
AXIAL = display_view(np.eye(3).ravel(), 2)  # an LPS volume cut along Z (orientation itself: test_orientation.py)


@pytest.fixture(scope="module")
def net2d():
    return wire_threshold(build_network(tiny_card(2))).eval()


@pytest.fixture(scope="module")
def net3d():
    return wire_threshold(build_network(tiny_card(3))).eval()


def test_resolve_device(monkeypatch):
    assert engine.resolve_device("cpu") == torch.device("cpu")
    assert engine.resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'cuda' asked for, but CUDA is not available"):
        engine.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.resolve_device("auto") == torch.device("cuda:0")
    assert engine.resolve_device("cuda") == torch.device("cuda:0")


def test_cuda_out_of_memory_reruns_on_cpu():
    calls = []

    def run(device: torch.device) -> str:
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "done"

    result, device, warnings = engine.with_cpu_fallback(run, torch.device("cuda:0"))
    assert (result, device, calls) == ("done", torch.device("cpu"), ["cuda", "cpu"])
    assert warnings == ["out of GPU memory on cuda:0: this study was run on the CPU instead"]

    def always_oom(device: torch.device) -> str:
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):  # on the CPU there is nowhere to go
        engine.with_cpu_fallback(always_oom, torch.device("cpu"))


@pytest.mark.parametrize("shape", [(3, 2, 5, 4), (2, 5, 6, 7, 3)])
def test_label_map_equals_argmax_including_ties(shape):
    logits = torch.randint(0, 3, shape).float()  # few values: many ties, where the first maximum must win
    label = engine.label_map(logits)
    assert label.dtype == torch.uint8
    torch.testing.assert_close(label, logits.argmax(1).to(torch.uint8))


@pytest.mark.parametrize("spacing, shape, axis, expected", [
    ((1.0, 1.0, 5.0), (64, 64, 20), None, 2),  # thick axial slices
    ((4.0, 1.0, 1.0), (20, 64, 64), None, 0),  # sagittal stack
    ((1.0, 1.0, 1.0), (64, 64, 64), None, 2),  # isotropic: Z
    ((1.0, 1.0, 1.0), (64, 1, 64), None, 1),  # a single coronal slice
    ((1.0, 1.0, 5.0), (64, 64, 20), 0, 0),  # asked for
])
def test_slice_axis(spacing, shape, axis, expected):
    assert engine.slice_axis(spacing, shape, axis) == expected


def test_slice_axis_out_of_range():
    with pytest.raises(ValueError, match=r"axis must be in 0\.\.2 for a 3D volume, got 3"):
        engine.slice_axis((1, 1, 1), (4, 4, 4), 3)


@pytest.mark.parametrize("shape, roi, overlap", [((40, 33, 20), (16, 16, 16), 0.25), ((16, 10, 50), (16, 16, 16), 0.5)])
def test_count_windows_matches_monai(shape, roi, overlap):
    seen = []

    def count(x):
        seen.append(x.shape[0])
        return x

    sliding_window_inference(torch.zeros((1, 1, *shape)), roi, 1, count, overlap)
    assert engine.count_windows(shape, roi, overlap) == sum(seen)


def test_slices_without_resize_equal_the_threshold(net2d):
    image = np.random.default_rng(0).random((1, 32, 32, 5)).astype(np.float32)
    label, logits = engine.segment_slices(net2d, image, AXIAL, (32, 32), torch.device("cpu"), batch_size=2)
    np.testing.assert_array_equal(label, (image[0] > 0.5).astype(np.uint8))
    assert label.dtype == np.uint8 and logits.shape == (4,)


def test_slices_resized_back_to_each_slice(net2d):
    x, y = np.meshgrid(np.arange(60), np.arange(45), indexing="ij")
    disc = ((x - 20) ** 2 + (y - 25) ** 2 < 12 ** 2).astype(np.float32)  # (60, 45): off-centre, not square
    image = np.stack([disc * (0.9 + 0.05 * k) for k in range(3)], axis=-1)[None]  # (1, 60, 45, 3)
    image = image + 0.01
    label, _ = engine.segment_slices(net2d, image, AXIAL, (32, 32), torch.device("cpu"))
    assert label.shape == (60, 45, 3)
    for k in range(3):
        assert dice(label[..., k], disc) > 0.95


class _RecordingNetwork(torch.nn.Module):
    """The network, remembering the strides of every batch it was given."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.strides = network, []

    def forward(self, x: torch.Tensor):
        self.strides.append((x.stride(), torch.empty(x.shape).stride()))
        return self.network(x)


@pytest.mark.parametrize("layout", ["C", "F", "flipped"])
@pytest.mark.parametrize("channels", [1, 2])
def test_slices_do_not_depend_on_the_memory_order(layout, channels):
    """A volume read in file order (Fortran-ordered, see readers) or through a flipped view gives the
    label and logits of a C-ordered copy, a label in the input's own memory order, and batches in
    PyTorch's default strides (a C = 1 slice view would otherwise reach the network as channels-last)."""
    network = _RecordingNetwork(wire_threshold(build_network(tiny_card(2, in_channels=channels))).eval())
    base = np.random.default_rng(3).random((channels, 32, 32, 7)).astype(np.float32)  # (C, X, Y, Z), C order
    image = {"C": base, "F": np.moveaxis(np.asfortranarray(np.moveaxis(base, 0, -1)), -1, 0),  # as a NIfTI is read
             "flipped": np.ascontiguousarray(base[:, ::-1])[:, ::-1]}[layout]  # negative strides along X
    expected, expected_logits = engine.segment_slices(network, base, AXIAL, (32, 32), torch.device("cpu"), batch_size=3)
    network.strides.clear()
    label, logits = engine.segment_slices(network, image, AXIAL, (32, 32), torch.device("cpu"), batch_size=3)
    np.testing.assert_array_equal(label, expected)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert label.flags.f_contiguous == (layout == "F") and all(s >= 0 for s in label.strides)
    assert all(got == default for got, default in network.strides)


def test_single_raster_image(net2d):
    image = np.zeros((1, 20, 30), np.float32)
    image[0, 5:12, 3:20] = 1.0
    label, logits = engine.segment_slices(net2d, image, None, (20, 30), torch.device("cpu"))
    np.testing.assert_array_equal(label, image[0] > 0.5)
    assert logits.shape == (4,)


def test_tumor_slices_decide_the_study_diagnosis(net2d):
    rng = np.random.default_rng(0)
    volume = 0.1 * rng.random((1, 32, 32, 20)).astype(np.float32)  # dark slices: no tumor, "no_tumor"
    x, y = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    for k in (6, 7, 8):
        volume[0, :, :, k][(x - 16) ** 2 + (y - 16) ** 2 < 9 ** 2] = 1.0  # bright blob: tumor, "glioma"
    label, study_logits = engine.segment_slices(net2d, volume, AXIAL, (32, 32), torch.device("cpu"), batch_size=7)
    per_slice = [engine.segment_slices(net2d, volume[..., k], None, (32, 32), torch.device("cpu"))[1] for k in range(20)]
    assert [int(logits.argmax()) for logits in per_slice].count(0) == 3  # only the tumor slices say glioma
    assert engine.diagnosis(torch.stack(per_slice).mean(0), CLASSES)["label"] == "no_tumor"  # a plain mean is outvoted
    assert engine.diagnosis(study_logits, CLASSES)["label"] == "glioma"  # the rule weights by tumor area
    assert set(np.unique(np.nonzero(label)[2])) == {6, 7, 8}


def test_no_tumor_anywhere_is_the_plain_mean(net2d):
    volume = 0.1 * np.random.default_rng(1).random((1, 32, 32, 6)).astype(np.float32)
    _, study_logits = engine.segment_slices(net2d, volume, AXIAL, (32, 32), torch.device("cpu"))
    per_slice = torch.stack([engine.segment_slices(net2d, volume[..., k], None, (32, 32), torch.device("cpu"))[1]
                             for k in range(6)])
    torch.testing.assert_close(study_logits, per_slice.mean(0))


def test_sliding_window_3d_equals_the_threshold(net3d):
    volume = np.random.default_rng(2).random((1, 40, 23, 18)).astype(np.float32)
    progress = []
    inferer = MultiTaskSlidingWindowInferer((16, 16, 16), sw_batch_size=3, overlap=0.25)
    label, logits = engine.segment_volume(net3d, volume, inferer, torch.device("cpu"), progress=progress.append)
    np.testing.assert_array_equal(label, (volume[0] > 0.5).astype(np.uint8))
    assert logits.shape == (4,) and progress[-1] == 1.0 and progress == sorted(progress)


def test_diagnosis_probabilities_by_hand():
    diag = engine.diagnosis(torch.tensor([0.0, math.log(3.0), 0.0, 0.0]), CLASSES)
    assert diag == {"label": "meningioma", "index": 1,
                    "probabilities": {"glioma": 0.1667, "meningioma": 0.5, "no_tumor": 0.1667, "pituitary": 0.1667},
                    "calibrated": False}


def test_consistency_warnings():
    no = {"label": "no_tumor", "probabilities": dict.fromkeys(CLASSES, 0.25)}
    yes = {"label": "glioma", "probabilities": dict.fromkeys(CLASSES, 0.25)}
    assert engine.consistency_warnings(no, 12, "no_tumor") == [
        "the diagnosis is no_tumor but the segmentation marks 12 tumor voxels: review"]
    assert engine.consistency_warnings(yes, 0, "no_tumor") == ["the diagnosis is glioma but the segmentation is empty: review"]
    assert engine.consistency_warnings(no, 0, "no_tumor") == [] and engine.consistency_warnings(yes, 5, "no_tumor") == []
    assert engine.consistency_warnings(no, 12, None) == []
