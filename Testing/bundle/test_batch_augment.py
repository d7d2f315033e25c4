"""Batch augmentation (``scripts.train.batch_augment.BatchAugment``): what each operation does to the image
and its mask, that they move together, the knobs and their errors, and how ``configs/train.json``
wires it in (``augment_on``: ``sample``, the MONAI chain, by default in 2D on the CPU; ``batch`` in 3D and on
CUDA).
"""

from __future__ import annotations


import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Randomizable

from bundle_config_helpers import tiny_datalist, train_parser
from scripts.train.batch_augment import BatchAugment, batch_augment_for
from scripts.core.tasks import Task
from scripts.train.training import prepare_batch, prepare_guided_batch

OFF = {"p_flip": 0.0, "p_rot90": 0.0, "p_affine": 0.0, "p_elastic": 0.0, "p_intensity": 0.0, "p_gamma": 0.0,
       "p_noise": 0.0}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(b: int = 8, size: tuple[int, ...] = (32, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose value is the mask's label (0, 1, 2) plus a smooth ramp, so content is asymmetric."""
    g = _gen(1)
    label = torch.zeros(b, 1, *size, dtype=torch.long)
    for i in range(b):
        lo = [int(torch.randint(2, n // 2, (1,), generator=g)) for n in size]
        sl = tuple(slice(a, a + n // 3) for a, n in zip(lo, size))
        label[(i, 0, *sl)] = 1 + i % 2
    return label.float(), label


def test_everything_off_returns_the_batch_unchanged():
    image, label = _blobs()
    out, lab = BatchAugment(2, **OFF)(image.clone(), label.clone(), _gen())
    assert torch.equal(out, image) and torch.equal(lab, label)


def test_flips_mirror_image_and_mask_exactly():
    image = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    label = (image[:, :1] > 40).to(torch.uint8)
    out, lab = BatchAugment(2, **{**OFF, "p_flip": 1.0})(image, label, _gen())
    torch.testing.assert_close(out, image.flip(2).flip(3), atol=1e-4, rtol=0)
    assert lab.dtype == torch.uint8 and torch.equal(lab, label.flip(2).flip(3))
    volume = torch.randn(2, 1, 6, 8, 4)
    out3, _ = BatchAugment(3, **{**OFF, "p_flip": 1.0})(volume, None, _gen())
    torch.testing.assert_close(out3, volume.flip(2).flip(3).flip(4), atol=1e-5, rtol=0)


def test_quarter_turns_on_a_square_plane_and_half_turns_otherwise():
    image = torch.arange(16 * 5 * 5, dtype=torch.float32).reshape(16, 1, 5, 5)
    out, lab = BatchAugment(2, **{**OFF, "p_rot90": 1.0})(image, image.long(), _gen())
    turns = []
    for i in range(16):
        k = [t for t in (1, 2, 3) if torch.equal(lab[i], torch.rot90(image[i].long(), t, (1, 2)))]
        assert len(k) == 1
        torch.testing.assert_close(out[i], torch.rot90(image[i], k[0], (1, 2)), atol=1e-4, rtol=0)
        turns.append(k[0])
    assert set(turns) == {1, 2, 3}  # all three drawn over 16 samples
    wide = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    out, _ = BatchAugment(2, **{**OFF, "p_rot90": 1.0})(wide, None, _gen())
    torch.testing.assert_close(out, wide.flip(2).flip(3), atol=1e-4, rtol=0)
    volume = torch.randn(1, 1, 5, 5, 3)  # turns in the (X, Y) plane only: slices stay slices
    out3, _ = BatchAugment(3, **{**OFF, "p_rot90": 1.0})(volume, None, _gen())
    assert any(torch.allclose(out3[0], torch.rot90(volume[0], t, (1, 2)), atol=1e-5) for t in (1, 2, 3))


@pytest.mark.parametrize("knob", ["p_affine", "p_elastic"])
def test_deformations_move_the_mask_with_the_image(knob):
    image, label = _blobs(16, (48, 40))
    aug = BatchAugment(2, **{**OFF, knob: 1.0, "rotate_deg": 30.0, "scale": 0.2, "shift": 0.1})
    out, lab = aug(image, label, _gen(3))
    assert not torch.equal(lab, label)  # something moved
    assert set(lab.unique().tolist()) <= {0, 1, 2} and lab.dtype == torch.long
    agree = (out.round().long() == lab).float().mean().item()
    assert agree > 0.97  # bilinear image and nearest mask land on the same pixels
    assert out.shape == image.shape and lab.shape == label.shape


def test_3d_affine_turns_about_the_slice_axis_only():
    # a volume that only varies along Z keeps every slice constant: no rotation tilts the slices
    z = torch.arange(8, dtype=torch.float32)
    volume = z.reshape(1, 1, 1, 1, 8).expand(4, 1, 16, 16, 8).clone()
    out, _ = BatchAugment(3, **{**OFF, "p_affine": 1.0, "rotate_deg": 45.0, "scale": 0.0, "shift": 0.0})(
        volume, None, _gen())
    centre = out[:, 0, 6:10, 6:10, :]  # away from the corners the rotation pads with zeros
    torch.testing.assert_close(centre, volume[:, 0, 6:10, 6:10, :], atol=1e-4, rtol=0)


def test_intensity_operations_stay_in_their_ranges():
    image = torch.rand(64, 1, 8, 8) + 1.0
    out, _ = BatchAugment(2, **{**OFF, "p_intensity": 1.0})(image, None, _gen())
    ratio = out / image  # (x + o) * f with |o| <= 0.1, 0.8 <= f <= 1.2
    assert float(ratio.min()) > (1.0 - 0.1 / 1.0) * 0.8 - 1e-4 and float(ratio.max()) < (1.0 + 0.1) * 1.2 + 1e-4
    out, _ = BatchAugment(2, **{**OFF, "p_gamma": 1.0})(image, None, _gen())
    flat_in, flat_out = image.reshape(64, -1), out.reshape(64, -1)
    torch.testing.assert_close(flat_out.amin(1), flat_in.amin(1), atol=1e-5, rtol=0)  # gamma keeps the range
    torch.testing.assert_close(flat_out.amax(1), flat_in.amax(1), atol=1e-5, rtol=0)
    assert not torch.allclose(out, image)
    out, _ = BatchAugment(2, **{**OFF, "p_noise": 1.0, "noise_std": 0.05})(image, None, _gen())
    assert 0.0 < float((out - image).std()) < 0.05


def test_probabilities_are_drawn_per_sample():
    image = torch.arange(400 * 4 * 4, dtype=torch.float32).reshape(400, 1, 4, 4)
    out, _ = BatchAugment(2, **{**OFF, "p_flip": 0.3})(image, None, _gen())
    first_axis = (out[:, 0, 0] != image[:, 0, 0]).any(dim=1) | (out[:, 0, :, 0] != image[:, 0, :, 0]).any(dim=1)
    share = first_axis.float().mean().item()  # changed by at least one of two flips: 1 - 0.7^2 = 0.51
    assert 0.43 < share < 0.59


def test_a_seeded_generator_repeats_and_the_global_seed_drives_the_default():
    image, label = _blobs()
    aug = BatchAugment(2, "strong")
    a = aug(image, label, _gen(7))
    b = aug(image, label, _gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(5)
    c = aug(image, label)
    torch.manual_seed(5)
    d = aug(image, label)
    assert torch.equal(c[0], d[0])


def test_strengths_and_knobs_match_the_per_sample_chain():
    from scripts.core.transforms import AUGMENT_STRENGTHS

    assert BatchAugment(2, "strong").knobs["p_affine"] == AUGMENT_STRENGTHS["strong"]["p_affine"] == 0.7
    assert BatchAugment(2, "light", p_affine=0.1).knobs["p_affine"] == 0.1
    assert BatchAugment(3).knobs["rotate_deg"] == 15.0


@pytest.mark.parametrize("kwargs, message", [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"spatial_dims": 2, "strength": "extreme"}, "augment_strength must be one of"),
    ({"spatial_dims": 2, "p_flip": 1.5}, "p_flip must be a probability"),
    ({"spatial_dims": 2, "p_swirl": 0.5}, "unknown augmentation knob"),
    ({"spatial_dims": 2, "scale": -0.1}, "scale must be >= 0"),
])
def test_bad_knobs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchAugment(**kwargs)


def test_bad_tensors_are_refused():
    aug = BatchAugment(2)
    with pytest.raises(ValueError, match="2 spatial axes"):
        aug(torch.zeros(2, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        aug(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="augment_on must be"):
        batch_augment_for(2, True, "epoch")


def test_prepare_batch_augments_image_and_mask_together_and_guidance_reads_the_moved_mask():
    image, label = _blobs(6)
    batch = {"image": image, "label": label, "class": torch.arange(6) % 2, "has_seg": torch.ones(6),
             "has_cls": torch.ones(6)}
    aug = BatchAugment(2, **{**OFF, "p_flip": 1.0})
    x, targets = prepare_batch(batch, "cpu", augment=aug)
    assert torch.equal(targets[Task.SEG.value], label.flip(2).flip(3))
    torch.testing.assert_close(x, image.flip(2).flip(3), atol=1e-4, rtol=0)
    plain, plain_targets = prepare_batch(batch, "cpu")
    assert torch.equal(plain, image) and torch.equal(plain_targets[Task.SEG.value], label)
    x, targets, _, kwargs = prepare_guided_batch(batch, "cpu", rate=1.0, augment=aug)
    assert torch.equal(kwargs["lesion"], (label.flip(2).flip(3) > 0).float())


def _random_transforms(parser: ConfigParser) -> list[str]:
    chain = parser.get_parsed_content("train#preprocessing")
    return [type(t).__name__ for t in chain.transforms if isinstance(t, Randomizable)]


def test_train_config_augments_batches_by_default_and_samples_on_request(tmp_path):
    datalist = tiny_datalist(tmp_path)
    default = train_parser({"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m")})
    assert default.get_parsed_content("augment_on") == "batch"
    aug = default.get_parsed_content("batch_augment")
    assert isinstance(aug, BatchAugment) and aug.strength == default.get_parsed_content("augment_strength")
    assert _random_transforms(default) == []  # the dataset chain is deterministic: cached once
    step = default.get_parsed_content("train_prepare_batch")
    assert step.keywords["augment"] is aug
    assert default.get_parsed_content("train#trainer").prepare_batch is step
    assert default.get_parsed_content("validate#evaluator").prepare_batch is default.get_parsed_content("prepare_batch")
    sample = train_parser({"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m"), "augment_on": "sample"})
    assert sample.get_parsed_content("batch_augment") is None
    assert "RandAffined" in _random_transforms(sample)
    off = train_parser({"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m"), "augment": False})
    assert off.get_parsed_content("batch_augment") is None and _random_transforms(off) == []


def test_train_config_augments_batches_on_every_device(tmp_path):
    """``batch`` on the CPU and on CUDA, 2D and 3D (why, with figures: the benchmarks README, *Training
    augmentations*). Only the parsed value is checked here (no GPU needed: the device object is not used)."""
    datalist = tiny_datalist(tmp_path)
    common = {"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m")}
    for device in ("$torch.device('cpu')", "$torch.device('cuda:0')", "$torch.device('cuda:1')"):
        assert train_parser({**common, "device": device}).get_parsed_content("augment_on") == "batch"
    assert train_parser({**common, "augment_on": "sample"}).get_parsed_content("augment_on") == "sample"
    assert train_parser(common, files=("train.json", "train_3d.json")).get_parsed_content("augment_on") == "batch"


def test_3d_config_augments_batches():
    parser = train_parser({}, files=("train.json", "train_3d.json"))
    assert parser.get("augment_on") == "batch" and parser.get("patches_per_volume") == 4


# --- the plan's mirror_axes and rot90: a 2D image keeps its "up" --------------------------------------


def test_flip_axes_mirror_only_the_named_axes():
    image = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    label = (image[:, :1] > 40).to(torch.uint8)
    out, lab = BatchAugment(2, **{**OFF, "p_flip": 1.0, "flip_axes": [1]})(image, label, _gen())
    torch.testing.assert_close(out, image.flip(3), atol=1e-4, rtol=0)  # columns only: left-right
    assert torch.equal(lab, label.flip(3))
    volume = torch.randn(2, 1, 6, 8, 4)
    out3, _ = BatchAugment(3, **{**OFF, "p_flip": 1.0, "flip_axes": (0,)})(volume, None, _gen())
    torch.testing.assert_close(out3, volume.flip(2), atol=1e-5, rtol=0)  # X of RAS: left-right
    same, _ = BatchAugment(2, **{**OFF, "p_flip": 1.0, "flip_axes": []})(image, None, _gen())
    assert torch.equal(same, image)


@pytest.mark.parametrize("axes", [[2], [1, 1], [-1], [0.5]])
def test_bad_flip_axes_are_refused(axes):
    from scripts.core.transforms import augmentations

    with pytest.raises(ValueError, match="flip_axes must name distinct spatial axes in 0..1"):
        BatchAugment(2, flip_axes=axes)
    with pytest.raises(ValueError, match="flip_axes must name distinct spatial axes in 0..1"):
        augmentations(2, (16, 16), flip_axes=axes)


def _orientation(parser: ConfigParser) -> tuple:
    aug = parser.get_parsed_content("batch_augment")
    return aug.flip_axes, aug.knobs["p_rot90"]


def test_train_config_mirrors_as_the_plan_says(tmp_path):
    from monai.transforms import RandFlipd, RandRotate90d

    datalist = tiny_datalist(tmp_path)
    common = {"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m")}
    parser = train_parser(common)
    plan = parser.get_parsed_content("plan")
    assert plan["fingerprint"]["raster_fraction"] == 1.0  # PNG files: display rows and columns
    assert (plan["mirror_axes"], plan["rot90"]) == ([1], False)
    assert _orientation(parser) == ((1,), 0.0)  # left-right flips only, no quarter turns
    chain = train_parser({**common, "augment_on": "sample"}).get_parsed_content("train#preprocessing").transforms
    assert [t.flipper.spatial_axis for t in chain if isinstance(t, RandFlipd)] == [1]
    assert [t.prob for t in chain if isinstance(t, RandRotate90d)] == [0.0]
    # the command line wins: the former behaviour back
    assert _orientation(train_parser({**common, "mirror_axes": [0, 1], "rot90": True})) == ((0, 1), 0.5)


def test_the_plan_mirrors_left_right_only():
    from scripts.core.plan import SYNTHETIC_DEMO_PINS, decide_mirroring, synthetic_pins

    assert decide_mirroring(2) == decide_mirroring(2, 1.0) == ([1], False)
    assert decide_mirroring(3) == decide_mirroring(3, 0.0) == ([0], False)  # X of RAS: left-right
    # 2D slices in NIfTI / NRRD / DICOM files are voxel axes, not display rows and columns: as before
    assert decide_mirroring(2, 0.0) == decide_mirroring(2, 0.5) == decide_mirroring(2, None) == ([0, 1], True)
    # the built-in demo pins the former behaviour (its random blobs have no "up"; its figures hold)
    assert synthetic_pins({"synthetic": {}, "spatial_dims": 2})["mirror_axes"] == [0, 1]
    assert SYNTHETIC_DEMO_PINS[2]["rot90"] is True and SYNTHETIC_DEMO_PINS[3]["mirror_axes"] == [0, 1, 2]
