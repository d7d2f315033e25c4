"""``app.py`` in a real headless Chromium: upload, run, read the page, look at the overlay.

The app runs in a subprocess on a free port of 127.0.0.1 with a tiny random-weight bundle
(``conftest.py``). What the page shows is compared with the same Predictor called here directly:
the diagnosis text, the overlay pixels (PNG, lossless) and the downloadable files.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from app import EXAMPLES
from scripts.inference import Predictor, overlay
from scripts.inference.terminology import segment_term

RUN_TIMEOUT_MS = 120_000  # a run on 2 shared cores, model and page included


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor.from_bundle(tiny_bundle, device="cpu")


@pytest.fixture()
def outside_requests() -> list[str]:
    """URLs the page asked for anywhere but the app (fonts, CDNs, analytics): there must be none."""
    return []


@pytest.fixture()
def page(browser, app_server, outside_requests: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("request", lambda r: None if r.url.startswith(app_server.url) else outside_requests.append(r.url))
    page.goto(app_server.url)
    expect(page.locator("#run")).to_be_visible()
    yield page
    page.close()


def upload(page: Page, path: Path) -> None:
    """Put a file in the upload box (emptying it first) and wait until the page has taken it."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.set_input_files("#upload input[type=file]", str(path))
    expect(page.locator("#status")).to_have_text("Ready: press the button.")


def run_ok(page: Page) -> None:
    page.click("#run")
    expect(page.locator("#status")).to_have_text("Done.", timeout=RUN_TIMEOUT_MS)


def run_refused(page: Page, message: str, screenshot: Path | None = None) -> None:
    """Run, expect the error toast with ``message``, close it; the outputs must be emptied."""
    page.click("#run")
    toast = page.locator(".toast-body").filter(has_text=message)
    expect(toast).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("could not be processed")
    expect(page.locator("#overlay img")).to_have_count(0)
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
    toast.locator("button").first.click()  # close it, so the next check sees only new toasts
    expect(toast).to_have_count(0)


def overlay_pixels(page: Page) -> np.ndarray:
    """The overlay exactly as served to the browser: ``(rows, cols, 3)`` uint8."""
    src = page.locator("#overlay img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def shown_diagnosis(page: Page) -> tuple[str, dict[str, str]]:
    """The top label and every class's percentage as the page writes them."""
    label = page.locator("#diagnosis [data-testid=label-output-value]").inner_text()
    names = page.locator("#diagnosis dt.text").all_inner_texts()
    return label, dict(zip(names, page.locator("#diagnosis dd.confidence").all_inner_texts()))


def move_slider(page: Page, slider: str, value: float) -> None:
    """Set a slider as a drag does and wait for the overlay to be redrawn (a new image URL)."""
    before = page.locator("#overlay img").get_attribute("src")
    page.locator(f"{slider} input[type=range]").fill(str(value))
    expect(page.locator("#overlay img")).not_to_have_attribute("src", before)


def download(page: Page, suffix: str) -> bytes:
    links = page.locator("#downloads a[data-testid=download-link]")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    (href,) = [h for h in hrefs if h.endswith(suffix)]
    return page.request.get(href).body()


def test_image_upload_shows_diagnosis_overlay_and_downloads(page: Page, predictor: Predictor, tiny_bundle: Path,
                                                           artifacts_dir: Path, tmp_path: Path,
                                                           outside_requests: list[str]) -> None:
    example = tiny_bundle / EXAMPLES / "example_glioma.png"
    expect(page.locator("#problem")).to_have_count(0)  # a model is loaded: no warning banner
    upload(page, example)
    run_ok(page)
    expected = predictor.predict(example)

    label, shown = shown_diagnosis(page)
    probs = expected.result["diagnosis"]["probabilities"]
    assert label == expected.result["diagnosis"]["label"]
    assert shown == {k: f"{round(100 * v)}%" for k, v in probs.items()}  # all four classes
    pixels = overlay_pixels(page)
    colors = overlay.result_colors(expected.result["segmentation"]["segments"])
    np.testing.assert_array_equal(pixels, overlay.render_overlay(expected.image, expected.label, 0, 0.4, colors=colors))
    assert (pixels == segment_term("tumor", 1).color).all(axis=-1).any()  # outlined in the terminology's tumour red
    assert expected.label.sum() > 0 and pixels.shape[0] % expected.label.shape[0] == 0  # whole pixels of the input
    expect(page.locator("#summary")).to_contain_text(f"tumor: area {int(expected.label.sum())} pixels")
    expect(page.locator("#slice")).to_be_hidden()  # an image has no slices
    page.screenshot(path=str(artifacts_dir / "webdemo_image.png"), full_page=True, animations="disabled")

    result = json.loads(download(page, "_result.json"))
    assert result["diagnosis"] == expected.result["diagnosis"]
    seg = tmp_path / "seg.png"
    seg.write_bytes(download(page, "_seg.png"))  # a PNG image gets a PNG mask on its own pixel grid, 0/255
    np.testing.assert_array_equal(np.asarray(Image.open(seg)), expected.label * 255)

    move_slider(page, "#opacity", 0)
    np.testing.assert_array_equal(overlay_pixels(page), overlay.render_overlay(expected.image, expected.label, 0, 0.0,
                                                                                   colors=colors))
    assert outside_requests == []


def test_volume_has_a_slice_slider(page: Page, predictor: Predictor, tiny_bundle: Path, artifacts_dir: Path) -> None:
    example = tiny_bundle / EXAMPLES / "example_glioma_volume.nii.gz"
    upload(page, example)
    run_ok(page)
    expected = predictor.predict(example)
    shown_image, shown_label = overlay.display_arrays(expected.image, expected.label, expected.view)
    best = overlay.best_slice(shown_label)
    colors = overlay.result_colors(expected.result["segmentation"]["segments"])
    expect(page.locator("#slice")).to_be_visible()
    expect(page.locator("#slice input[type=number]")).to_have_value(str(best))
    expect(page.locator("#summary")).to_contain_text(f"mL ({int(expected.label.sum())} voxels)")
    np.testing.assert_array_equal(overlay_pixels(page), overlay.render_overlay(shown_image, shown_label, best, 0.4,
                                                                                   colors=colors))
    page.screenshot(path=str(artifacts_dir / "webdemo_volume.png"), full_page=True, animations="disabled")

    other = (best + 5) % shown_label.shape[-1]
    move_slider(page, "#slice", other)
    np.testing.assert_array_equal(overlay_pixels(page), overlay.render_overlay(shown_image, shown_label, other, 0.4,
                                                                                   colors=colors))


def test_bad_uploads_show_their_message_and_the_app_keeps_serving(page: Page, tiny_bundle: Path, tmp_path: Path,
                                                                   artifacts_dir: Path) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("these are notes, not an image")
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("series/", b"")
    two_channels = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 4, 2)).astype(np.float32), np.eye(4)), two_channels)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((tiny_bundle / EXAMPLES / "example_glioma_volume.nii.gz").read_bytes()[:3000])

    for refused, message in ((tmp_path / "notes.txt", "Invalid file type: notes.txt."),
                             (tmp_path / "huge.nii.gz", 'exceed the maximum allowed size of 1.0 Mb: "huge.nii.gz"')):
        refused.write_bytes(bytes(2_000_000))  # over the 1 MB limit of the app_server fixture
        page.set_input_files("#upload input[type=file]", str(refused))  # refused by the page itself
        toast = page.locator(".toast-body").filter(has_text=message)
        expect(toast).to_be_visible()
        toast.locator("button").first.click()
        expect(page.locator("#upload input[type=file]")).to_have_count(1)  # nothing was taken
    upload(page, not_image)
    run_refused(page, "notes.png: cannot decode the image", artifacts_dir / "webdemo_bad_upload.png")
    for bad, message in ((empty_zip, "empty.zip: the zip holds no files"),
                         (two_channels, "two_channels.nii.gz: 4D input with 2 volumes, but the model takes 1"),
                         (truncated, "truncated.nii.gz: cannot read")):
        upload(page, bad)
        run_refused(page, message)
    upload(page, tiny_bundle / EXAMPLES / "example_meningioma.png")
    run_ok(page)
    expect(page.locator("#overlay img")).to_have_count(1)
    expect(page.locator("#diagnosis [data-testid=label-output-value]")).not_to_be_empty()

