"""Tests of ``app.py`` without a browser: options, the no-model page, errors of the run callback."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app


def test_binds_to_localhost_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.checkpoint is None and args.max_file_size == "500mb"
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "10.0.0.5")
    assert app.parse_args([]).host == "10.0.0.5"


def test_analytics_and_telemetry_are_off() -> None:
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


def test_no_trained_model_is_said_not_served(tmp_path: Path) -> None:
    predictor, problem = app.load(tmp_path, None, "cpu")
    assert predictor is None
    assert problem.startswith(f"No trained model: {tmp_path / 'models' / 'model.pt'} does not exist")
    demo = app.Demo(predictor, problem, tmp_path)
    with pytest.raises(gr.Error, match="No trained model"):
        demo.run(str(tmp_path / "x.png"), 0.4)
    page = app.build(demo, [])
    assert any(getattr(b, "elem_id", None) == "problem" for b in page.blocks.values())


def test_missing_checkpoint_named(tmp_path: Path) -> None:
    _, problem = app.load(tmp_path, tmp_path / "other.pt", "cpu")
    assert f"{tmp_path / 'other.pt'} does not exist" in problem


def test_run_without_a_file(tmp_path: Path) -> None:
    demo = app.Demo(object(), "", tmp_path)
    with pytest.raises(gr.Error, match="Upload a file first"):
        demo.run(None, 0.4)


def test_bad_upload_becomes_a_page_error(tmp_path: Path) -> None:
    demo = app.Demo(object(), "", tmp_path)  # never reached: the upload is refused first
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(gr.Error, match=r"notes\.txt: unsupported file type"):
        demo.run(str(bad), 0.4)


def test_redraw_and_clear() -> None:
    assert app.Demo.redraw(None, 0, 0.4) is None
    view = {"image": np.zeros((1, 8, 8, 3), np.float32), "label": np.ones((8, 8, 3), np.uint8), "colors": {1: (1, 2, 3)}}
    drawn = app.Demo.redraw(view, 2, 0.0)
    assert drawn.shape[2] == 3 and (drawn == (1, 2, 3)).all(axis=-1).any()  # the outline in the run's segment colour
    cleared = app.Demo.cleared("why")
    assert cleared[-1] == "why" and cleared[0] is None


def test_unusable_checkpoint_is_said(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    predictor, problem = app.load(tmp_path, bad, "cpu")
    assert predictor is None and problem.startswith(f"The model cannot be loaded: {bad}: not a readable PyTorch checkpoint")


def test_main_binds_localhost_without_share_and_logs_a_missing_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    launched: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda page, **kw: launched.update(kw, page=page))
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    with caplog.at_level(logging.WARNING, logger="webdemo"):
        app.main(["--bundle", str(tmp_path), "--no-examples"])
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False and launched["ssr_mode"] is False
    assert launched["max_file_size"] == "500mb"
    assert "No trained model" in caplog.text
    (banner,) = [b for b in launched["page"].blocks.values() if getattr(b, "elem_id", None) == "problem"]
    assert "No trained model" in banner.value


class Recorder:
    """Stands in for ``gr.Progress``: keeps every (fraction, stage) it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, desc: str | None = None) -> None:
        self.calls.append((fraction, desc))


def test_progress_comes_from_the_predictor(tiny_bundle: Path, tmp_path: Path) -> None:
    from scripts.inference import Predictor

    demo = app.Demo(Predictor.from_bundle(tiny_bundle, device="cpu"), "", tmp_path)
    progress = Recorder()
    overlay, _, probs, summary, files, view, status = demo.run(str(tiny_bundle / app.EXAMPLES / "example_glioma.png"),
                                                               0.4, progress=progress)
    assert progress.calls[0] == (0.0, "read") and progress.calls[-1] == (1.0, "done")
    assert [f for f, _ in progress.calls] == sorted(f for f, _ in progress.calls)
    assert status == "Done." and set(probs) == {"glioma", "meningioma", "no_tumor", "pituitary"}
    assert all(Path(f).is_file() and Path(f).is_relative_to(tmp_path) for f in files)
    assert overlay.shape[2] == 3 and view["label"].shape == (32, 32)


def test_the_page_shows_the_result_file_read_through_the_contract(tiny_bundle: Path, tmp_path: Path) -> None:
    """Diagnosis and summary come from the ``_result.json`` offered for download, read by
    ``scripts.inference.result`` (the reader of the CLI and the Slicer module): pixels for a 2D image,
    which has no area in mm² to show, millilitres for a volume."""
    from mtunet_web import text
    from scripts.inference import Predictor, read_result

    demo = app.Demo(Predictor.from_bundle(tiny_bundle, device="cpu"), "", tmp_path)
    for example, size in (("example_glioma.png", "area {} pixels"), ("example_glioma_volume.nii.gz", "mL ({} voxels)")):
        _, _, probs, summary, files, _, status = demo.run(str(tiny_bundle / app.EXAMPLES / example), 0.4,
                                                          progress=Recorder())
        result = read_result(next(f for f in files if f.endswith("_result.json")))
        assert status == "Done." and summary == text.summary_markdown(result)
        assert probs == result.diagnosis.probabilities
        assert size.format(result.segmentation.tumor_voxels) in summary and "mm²" not in summary
        assert "segmentation uncertainty: not measured (flip TTA off)" in summary  # tta false, uncertainty null


def test_with_tta_the_run_keeps_the_uncertainty_map_and_redraw_shows_it(tiny_bundle: Path, tmp_path: Path) -> None:
    from scripts.inference import Predictor, overlay
    from scripts.inference.terminology import segment_term

    predictor = Predictor.from_bundle(tiny_bundle, device="cpu", tta=True)
    example = str(tiny_bundle / app.EXAMPLES / "example_glioma.png")
    drawn, _, _, summary, files, view, status = app.Demo(predictor, "", tmp_path).run(example, 0.4, progress=Recorder())
    expected = predictor.predict(example, uncertainty_map=True)
    assert status == "Done." and "segmentation uncertainty (flip TTA)" in summary
    assert [Path(f).name for f in files] == ["example_glioma_seg.png", "example_glioma_result.json",
                                            "example_glioma_uncertainty.png"]
    np.testing.assert_array_equal(view["uncertainty"], expected.uncertainty)
    assert view["colors"] == {1: segment_term("tumor", 1).color}  # the result's colour: the terminology table's
    np.testing.assert_array_equal(drawn, overlay.render_overlay(expected.image, expected.label, 0, 0.4,  # opens on the tumour
                                                                colors=view["colors"]))
    np.testing.assert_array_equal(app.Demo.redraw(view, 0, 0.4, True),
                                  overlay.render_uncertainty(expected.image, expected.uncertainty, 0))
    no_map = {k: v for k, v in view.items() if k != "uncertainty"}  # a run without TTA: the toggle draws the overlay
    np.testing.assert_array_equal(app.Demo.redraw(no_map, 0, 0.4, True), drawn)


def test_tta_flag_reaches_the_predictor(tiny_bundle: Path) -> None:
    assert app.parse_args([]).tta is None and app.parse_args(["--tta"]).tta is True
    assert app.parse_args(["--no-tta"]).tta is False
    for flag in (True, False):
        predictor, problem = app.load(tiny_bundle, None, "cpu", flag)
        assert problem == "" and predictor.settings.tta is flag
