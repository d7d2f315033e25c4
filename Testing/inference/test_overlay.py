"""The one overlay renderer (``scripts.inference.overlay``): display orientation, slices, and every segment
painted in its terminology colour, for the CLI's overlay PNG, the web page and its screenshots alike."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scripts.inference import overlay
from scripts.inference.orientation import display_view
from scripts.inference.result import parse_result
from scripts.inference.terminology import hex_color, rgb_color, segment_term
from scripts.inference.writers import write_overlay

TUMOR = segment_term("tumor", 1).color  # the terminology table's tumour colour, (230, 40, 40)
COLORS = overlay.segment_colors(["background", "tumor"])


# ---------------------------------------------------------------- colours: the terminology table's, nothing else


def test_colours_come_from_the_terminology_table() -> None:
    names = ["background", "tumor", "edema", "necrosis", "something"]
    assert overlay.segment_colors(names) == {v: segment_term(n, v).color for v, n in enumerate(names) if v}
    assert COLORS == {1: TUMOR} and TUMOR == (230, 40, 40)
    segments = [{"name": "tumor", "value": 1, "color": hex_color(TUMOR)}, {"name": "edema", "value": 2}]
    # a result's colour is used as written; a result older than the colour gets the table's colour of its name
    assert overlay.result_colors(segments) == {1: TUMOR, 2: segment_term("edema", 2).color}
    typed = parse_result({"input": "x.png", "diagnosis": {"label": "a", "index": 0, "probabilities": {"a": 1.0}},
                          "segmentation": {"path": "x_seg.png", "format": "png", "segments": [
                              {"name": "lesion", "value": 1, "voxels": 3, "volume_ml": None, "color": "#0a0b0c"}]}},
                         "x_result.json")
    assert overlay.result_colors(typed.segmentation.segments) == {1: (10, 11, 12)}
    assert rgb_color(hex_color((1, 128, 255))) == (1, 128, 255)
    with pytest.raises(ValueError, match=r"'red' is not #rrggbb"):
        rgb_color("red")


def test_no_private_palette_is_left() -> None:
    import inspect

    source = inspect.getsource(overlay)
    assert "PALETTE" not in source and "CONTOUR" not in source
    assert not any(isinstance(v, tuple) and len(v) == 3 and all(isinstance(c, int) for c in v) and v not in
                   (overlay.LOW_RGB, overlay.HIGH_RGB) for v in vars(overlay).values())  # only the uncertainty heat's


# ---------------------------------------------------------------- slices and display orientation


def test_slices_of_a_volume() -> None:
    label = np.zeros((8, 6, 5), np.uint8)
    label[2:4, 1:3, 3] = 1
    label[2, 1, 1] = 1
    assert overlay.num_slices(label) == 5 and overlay.best_slice(label) == 3
    assert overlay.best_slice(np.zeros((8, 6, 5), np.uint8)) == 2  # no tumor: the middle
    assert overlay.num_slices(np.zeros((4, 4), np.uint8)) == 1 and overlay.best_slice(np.zeros((4, 4))) == 0


def test_slice_view_is_what_a_2d_model_sees() -> None:
    image = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)  # (C, X, Y, Z)
    label = np.zeros((4, 3, 2), np.uint8)
    label[3, 0, 1] = 1  # x=3, y=0, z=1
    img2d, lab2d = overlay.slice_view(image, label, 1)
    assert img2d.shape == (2, 4, 3) and lab2d.shape == (4, 3)  # rows = X
    assert lab2d[3, 0] == 1 and img2d[1, 3, 2] == image[1, 3, 2, 1]


def test_display_arrays_show_a_volume_as_a_viewer_does() -> None:
    image = np.random.default_rng(0).random((2, 4, 3, 5)).astype(np.float32)  # (C, X, Y, Z)
    label = np.zeros((4, 3, 5), np.uint8)
    label[3, 0, 1] = 1  # i=3 (left), j=0 (anterior), k=1
    img, lab = overlay.display_arrays(image, label, display_view(np.eye(3), 2))  # LPS identity: axial
    assert img.shape == (2, 3, 4, 5) and lab.shape == (3, 4, 5)  # rows = Y (A->P), cols = X (R->L), slices last
    assert lab[0, 3, 1] == 1 and lab.sum() == 1  # top row (anterior), right-most column (patient left)
    np.testing.assert_array_equal(img[:, :, :, 1], image[:, :, :, 1].transpose(0, 2, 1))
    ras = display_view(np.diag([-1, -1, 1.0]), 2)
    ras_img, ras_lab = overlay.display_arrays(image[:, ::-1, ::-1], label[::-1, ::-1], ras)
    np.testing.assert_array_equal(ras_lab, lab)  # the same head stored RAS shows the same picture
    np.testing.assert_array_equal(ras_img, img)
    flat_img, flat_lab = overlay.display_arrays(image[..., 0], label[..., 1], display_view((1.0, 0.0, 0.0, 1.0), 2))
    assert flat_img.shape == (2, 3, 4) and flat_lab[0, 3] == 1  # a 2D grid (2D NIfTI): one axial picture
    raster = np.zeros((1, 4, 3), np.float32)
    assert overlay.display_arrays(raster, np.zeros((4, 3), np.uint8))[0] is raster  # PNG/JPG: as it is
    with pytest.raises(ValueError, match=r"image grid \(4, 3\) differs from label grid \(3, 4\)"):
        overlay.display_arrays(raster, np.zeros((3, 4), np.uint8))


def test_slice_view_errors() -> None:
    with pytest.raises(ValueError, match=r"image grid \(4, 4\) differs from label grid \(4, 5\)"):
        overlay.slice_view(np.zeros((1, 4, 4)), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"slice 3 is outside 0\.\.2"):
        overlay.slice_view(np.zeros((1, 4, 4, 3)), np.zeros((4, 4, 3), np.uint8), 3)


def test_overlay_at_original_resolution_with_fill_and_outline_in_the_terminology_colour() -> None:
    image = np.zeros((1, 40, 60), np.float32)
    image[0, :, 30:] = 1.0  # right half bright: windowing keeps it white
    label = np.zeros((40, 60), np.uint8)
    label[10:30, 35:55] = 1
    rgb = overlay.render_overlay(image, label, opacity=0.5, colors=COLORS, min_size=80)
    assert rgb.shape == (80, 120, 3) and rgb.dtype == np.uint8  # enlarged by 2: every pixel 2x2
    inside, outside = rgb[40, 90], rgb[10, 110]
    assert tuple(outside) == (255, 255, 255)
    np.testing.assert_allclose(inside, 0.5 * 255 + 0.5 * np.array(TUMOR), atol=1)  # filled half-way to the tumour red
    assert tuple(rgb[20, 90]) == TUMOR and tuple(rgb[19, 90]) == (255, 255, 255)  # outlined solid in it
    clear = overlay.render_overlay(image, label, opacity=0.0, colors=COLORS, min_size=80)
    assert tuple(clear[40, 90]) == (255, 255, 255) and tuple(clear[20, 90]) == TUMOR
    assert {tuple(c) for c in clear.reshape(-1, 3)} == {(0, 0, 0), (255, 255, 255), TUMOR}  # no other colour


def test_each_segment_in_its_own_colour_outlined_at_the_border() -> None:
    label = np.zeros((6, 8), np.uint8)
    label[:, :3] = 1  # touches the picture's edge: still outlined there
    label[2:4, 5:7] = 2
    names = ["background", "tumor", "edema"]
    rgb = overlay.render_overlay(np.zeros((1, 6, 8), np.float32), label, opacity=1.0,
                                 colors=overlay.segment_colors(names), min_size=1)
    assert tuple(rgb[0, 0]) == TUMOR and tuple(rgb[3, 5]) == segment_term("edema", 2).color
    assert overlay.outline(label)[:, 0].all() and not overlay.outline(label)[2:4, 1].any()  # inner pixels are not edge
    unnamed = overlay.render_overlay(np.zeros((1, 6, 8), np.float32), label, opacity=1.0, colors={}, min_size=1)
    assert tuple(unnamed[0, 0]) == segment_term("", 1).color  # a value the card does not name: the table's fallback


def test_overlay_of_rgb_and_volume() -> None:
    rgb_image = np.zeros((3, 8, 8), np.float32)
    rgb_image[0] = 1.0  # pure red image
    out = overlay.render_overlay(rgb_image, np.zeros((8, 8), np.uint8), colors=COLORS, min_size=8)
    assert tuple(out[0, 0]) == (255, 0, 0)
    vol = np.random.default_rng(0).random((1, 16, 12, 4)).astype(np.float32)
    out = overlay.render_overlay(vol, np.zeros((16, 12, 4), np.uint8), index=2, colors=COLORS, min_size=24)
    assert out.shape == (32, 24, 3)  # rows = X (16) x2, cols = Y (12) x2


def test_constant_image_is_black() -> None:
    assert overlay.to_rgb(np.full((1, 4, 4), 7.0)).max() == 0


def test_opacity_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"opacity must be within 0\.\.1, got 1\.5"):
        overlay.render_overlay(np.zeros((1, 4, 4)), np.zeros((4, 4), np.uint8), opacity=1.5, colors=COLORS)


# ---------------------------------------------------------------- uncertainty map


def test_uncertainty_heat_by_hand() -> None:
    image = np.full((1, 2, 2), 7.0, np.float32)  # constant: shown black
    values = np.array([[0.0, 0.02], [0.5, 1.0]], np.float32)
    rgb = overlay.render_uncertainty(image, values, min_size=2)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])  # 0 and below SHOW_FROM: the image as it is
    np.testing.assert_array_equal(rgb[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [128, 58, 0])  # half way: 0.5 * (255, 115, 0) over black
    np.testing.assert_array_equal(rgb[1, 1], [255, 0, 0])  # certain disagreement: HIGH_RGB, opaque
    assert overlay.render_uncertainty(image, values).shape == (384, 384, 3)  # enlarged like the overlay


def test_uncertainty_map_is_shown_as_the_label_is() -> None:
    rng = np.random.default_rng(0)
    label = (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
    view = display_view(np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float), 0)  # a permuted, flipped cut
    _, shown_label = overlay.display_arrays(np.zeros((1, 6, 5, 4), np.float32), label, view)
    np.testing.assert_array_equal(overlay.display_map(label.astype(np.float32), view), shown_label)
    flat = rng.random((6, 5)).astype(np.float32)
    assert overlay.display_map(flat, None) is flat


def test_key_slices_largest_tumor_first_then_sorted() -> None:
    label = np.zeros((4, 4, 6), np.uint8)
    label[:2, :2, 1] = 1  # 4 voxels
    label[:, :, 4] = 1  # 16
    label[:1, :1, 5] = 1  # 1
    label[:3, :3, 0] = 1  # 9
    assert overlay.key_slices(label, 3) == [0, 1, 4]
    assert overlay.key_slices(np.zeros((4, 4, 6), np.uint8)) == [3]
    assert overlay.best_slice(label) == 4


# ---------------------------------------------------------------- the CLI's overlay PNG: the same drawing


def test_the_png_is_the_pages_drawing_of_the_key_slices(tmp_path) -> None:
    image = np.random.default_rng(0).random((1, 12, 10, 6)).astype(np.float32)  # (C, X, Y, Z)
    label = np.zeros((12, 10, 6), np.uint8)
    label[2:6, 3:7, 1] = 1
    label[4:9, 2:8, 3] = 2
    label[5, 5, 4] = 1
    names = ["background", "tumor", "edema"]
    view = display_view(np.eye(3), 2)
    write_overlay(image, label, view, names, tmp_path / "o.png")
    png = np.asarray(Image.open(tmp_path / "o.png"))
    assert png.shape == (10, 3 * 12 + 2 * 4, 3)  # three (Y, X) panels with 4-pixel gaps
    shown, lab = overlay.display_arrays(image, label, view)
    colors = overlay.segment_colors(names)
    for tile, index in zip((png[:, :12], png[:, 16:28], png[:, 32:]), (1, 3, 4)):  # the key slices, in order
        np.testing.assert_array_equal(tile, overlay.render_overlay(shown, lab, index, overlay.PNG_OPACITY,
                                                                   colors=colors, min_size=1))
    assert (png == TUMOR).all(axis=-1).any() and (png == segment_term("edema", 2).color).all(axis=-1).any()


def test_the_png_of_a_raster_image_is_the_image_itself(tmp_path) -> None:
    image = np.random.default_rng(0).random((3, 9, 7)).astype(np.float32)
    label = np.zeros((9, 7), np.uint8)
    label[2:6, 2:5] = 1
    write_overlay(image, label, None, ["background", "tumor"], tmp_path / "r.png")
    png = np.asarray(Image.open(tmp_path / "r.png"))
    np.testing.assert_array_equal(png, overlay.render_overlay(image, label, 0, overlay.PNG_OPACITY, colors=COLORS,
                                                              min_size=1))
    assert tuple(png[2, 2]) == TUMOR
