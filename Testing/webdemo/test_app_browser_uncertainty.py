"""The web demo's uncertainty toggle in headless Chromium: ``app.py --tta`` against the same Predictor called here.

A second app (the shared ``app_server`` runs without TTA, where the toggle must not show) serves a
copy of the tiny bundle with flip TTA, its segmentation head scaled up 300 times: the same label map
(the sign of every logit margin is kept) with sharp probabilities, so that the image and its mirror
visibly disagree (the plain random model's passes differ by 0.001). The page's pixels are compared
with :func:`scripts.inference.overlay.render_uncertainty`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from playwright.sync_api import Page, expect

from app import EXAMPLES
from scripts.inference import Predictor, overlay
from test_app_browser import download, move_slider, overlay_pixels, run_ok, upload
from webdemo_helpers import serving


@pytest.fixture(scope="module")
def sharp_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharp") / "bundle"
    shutil.copytree(tiny_bundle, root)
    weights = root / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    for key in ("segmentation_head.weight", "segmentation_head.bias"):
        state[key] = state[key] * 300
    torch.save(state, weights)
    return root


@pytest.fixture(scope="module")
def tta_server(sharp_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    with serving(sharp_bundle, tmp_path_factory.mktemp("app_tta") / "app.log", "--tta") as server:
        yield server


def _open(browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    expect(page.locator("#run")).to_be_visible()
    return page


def test_uncertainty_toggle_draws_the_map_and_a_new_run_opens_on_the_tumour(browser, tta_server, sharp_bundle: Path,
                                                                            artifacts_dir: Path) -> None:
    example = sharp_bundle / EXAMPLES / "example_glioma_volume.nii.gz"
    expected = Predictor.from_bundle(sharp_bundle, device="cpu", tta=True).predict(example, uncertainty_map=True)
    image, label = overlay.display_arrays(expected.image, expected.label, expected.view)
    shown = overlay.display_map(expected.uncertainty, expected.view)
    best = overlay.best_slice(label)
    colors = overlay.result_colors(expected.result["segmentation"]["segments"])
    assert shown[..., best].max() > 0.2  # the image and its mirror disagree visibly
    page = _open(browser, tta_server.url)
    try:
        upload(page, example)
        run_ok(page)
        toggle = page.locator("#show-uncertainty input[type=checkbox]")
        expect(toggle).to_be_visible()
        expect(toggle).not_to_be_checked()
        np.testing.assert_array_equal(overlay_pixels(page), overlay.render_overlay(image, label, best, 0.4, colors=colors))
        expect(page.locator("#summary")).to_contain_text("segmentation uncertainty (flip TTA)")

        before = page.locator("#overlay img").get_attribute("src")
        toggle.check()
        expect(page.locator("#overlay img")).not_to_have_attribute("src", before)
        np.testing.assert_array_equal(overlay_pixels(page), overlay.render_uncertainty(image, shown, best))
        page.screenshot(path=str(artifacts_dir / "webdemo_uncertainty.png"), full_page=True, animations="disabled")
        other = (best + 3) % label.shape[-1]
        move_slider(page, "#slice", other)  # slices of the map follow the slider
        np.testing.assert_array_equal(overlay_pixels(page), overlay.render_uncertainty(image, shown, other))
        assert download(page, "_uncertainty.nii.gz")[:2] == b"\x1f\x8b"  # the map, gzipped NIfTI, is offered

        run_ok(page)  # a new result opens on its tumour overlay, the toggle off
        expect(toggle).not_to_be_checked()
        np.testing.assert_array_equal(overlay_pixels(page), overlay.render_overlay(image, label, best, 0.4, colors=colors))
    finally:
        page.close()


def test_without_tta_there_is_no_toggle(browser, app_server, tiny_bundle: Path) -> None:
    page = _open(browser, app_server.url)
    try:
        upload(page, tiny_bundle / EXAMPLES / "example_glioma.png")
        run_ok(page)
        expect(page.locator("#show-uncertainty")).to_be_hidden()
        expect(page.locator("#summary")).to_contain_text("segmentation uncertainty: not measured (flip TTA off)")
    finally:
        page.close()
