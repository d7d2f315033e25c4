"""MultiTaskUNet web demo: upload an image or a study, see the tumor outlined and the diagnosis.

A shell around the one inference API (``scripts.inference.Predictor``): the model is loaded once
at start, each upload goes through ``Predictor.predict`` and the page shows what it returned, drawn by
the bundle's one overlay renderer (``scripts.inference.overlay``, each segment in its terminology colour).
The web-only helpers (upload checks, the summary text, the examples) are the ``mtunet_web`` package
beside this file, which the bundle never imports.

    python app.py [--bundle monai_bundle] [--checkpoint FILE] [--tta] [--host 127.0.0.1] [--port 7860]

With flip TTA (``--tta`` or the bundle's ``configs/inference.json``) each run also writes the
voxel-wise uncertainty map, and a *Show uncertainty* toggle draws it instead of the tumour overlay.

Binds to 127.0.0.1 unless ``--host`` (or ``GRADIO_SERVER_NAME``) says otherwise; never a share link.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# before gradio is imported: no analytics, no telemetry, no outbound connection attempts
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

REPO = Path(__file__).resolve().parent
for _root in (REPO / "monai_bundle", REPO):  # the bundle's scripts, then this shell's mtunet_web
    if str(_root) not in sys.path:
        sys.path.insert(0, str(_root))

import gradio as gr  # noqa: E402

from mtunet_web import examples as web_examples  # noqa: E402
from mtunet_web import text, uploads  # noqa: E402
from scripts.inference import overlay  # noqa: E402
from scripts.core.model_card import WEIGHTS_FILE  # noqa: E402

log = logging.getLogger("webdemo")
EXAMPLES = "data/webdemo_examples"  # inside the bundle; data/ is generated, never committed
TRAIN_HINT = ("train one first (`python -m monai.bundle run training --config_file monai_bundle/configs/train.json`)"
              " or pass --checkpoint")


class Demo:
    """The page's callbacks around one Predictor (``None`` when there is no trained model)."""

    def __init__(self, predictor: Any, problem: str, workdir: Path) -> None:
        self.predictor, self.problem, self.workdir = predictor, problem, workdir

    def run(self, upload: str | None, opacity: float, progress: gr.Progress = gr.Progress()) -> tuple:
        """Predict one upload; returns overlay, slice slider, probabilities, summary, files, view, status.

        Raises:
            gr.Error: no model, no file, or a bad upload (the message names the file and the problem).
        """
        if self.predictor is None:
            # the same words as the page's banner
            raise gr.Error(self.problem, duration=None, print_exception=False)
        if not upload:
            raise gr.Error("Upload a file first (or pick an example).", duration=None, print_exception=False)
        uploads.prune_runs(self.workdir)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.workdir))
        log.info("run: %s upload of %d bytes", "".join(Path(upload).suffixes[-2:]), Path(upload).stat().st_size)
        try:
            source = uploads.check_upload(upload)  # a zip of a DICOM series is unpacked by the Predictor's reader
            pred = self.predictor.predict(source, output_dir=run_dir / "out", seg_format="auto",
                                          progress=lambda pct, stage: progress(pct / 100, desc=stage),
                                          uncertainty_map=self.predictor.settings.tta)
        except ValueError as e:  # InputError and UploadError: the user's file, said plainly
            log.info("run refused: %s", type(e).__name__)
            # print_exception off: the message names the user's file, which must not reach the log
            raise gr.Error(uploads.plain_error(str(e), upload), duration=None, print_exception=False) from e
        from scripts.inference.result import read_result

        result = read_result(pred.paths["result"])  # the file the user downloads, read through the result contract
        log.info("run: diagnosis %s", result.diagnosis.label)
        image, label = overlay.display_arrays(pred.image, pred.label, pred.view)  # heads upright, slices last
        # each segment in the colour its result gives it (the terminology table's, as in Slicer and the CLI's PNG)
        view = {"image": image, "label": label, "colors": overlay.result_colors(result.segmentation.segments)}
        if pred.uncertainty is not None:
            view["uncertainty"] = overlay.display_map(pred.uncertainty, pred.view)
        index = overlay.best_slice(label)
        n = overlay.num_slices(label)
        slider = gr.Slider(minimum=0, maximum=max(n - 1, 1), value=index, step=1, visible=n > 1)
        files = [str(pred.paths[key]) for key in ("segmentation", "result", "uncertainty_map") if key in pred.paths]
        return (overlay.render_overlay(image, label, index, opacity, colors=view["colors"]), slider,
                text.probabilities(result), text.summary_markdown(result), files, view, "Done.")

    @staticmethod
    def redraw(view: dict | None, index: float, opacity: float, uncertainty: bool = False) -> Any:
        """Draw another slice or opacity of the last prediction, or its uncertainty map, without running
        the model again."""
        if not view:
            return None
        if uncertainty and "uncertainty" in view:
            return overlay.render_uncertainty(view["image"], view["uncertainty"], int(index))
        return overlay.render_overlay(view["image"], view["label"], int(index), float(opacity), colors=view["colors"])

    @staticmethod
    def cleared(status: str) -> tuple:
        """Empty outputs, so a result never sits beside a file it does not belong to."""
        return None, gr.Slider(visible=False), None, "", None, None, status


def build(demo: Demo, examples: list[Path]) -> gr.Blocks:
    """The page: upload + examples + controls on the left, overlay and diagnosis on the right."""
    with gr.Blocks(title="MultiTaskUNet", delete_cache=(3600, 3600)) as page:
        gr.Markdown("# MultiTaskUNet\nTumor segmentation and diagnosis in one network. "
                    "Research demo, not for clinical use.")
        if demo.problem:
            gr.Markdown(f"### ⚠ The demo cannot run\n{demo.problem}", elem_id="problem")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image or study: PNG/JPG, NIfTI, NRRD, DICOM file, or zip of a DICOM series",
                                 file_types=list(uploads.SUPPORTED_SUFFIXES), elem_id="upload")
                run = gr.Button("Segment & classify", variant="primary", elem_id="run")
                status = gr.Markdown("Upload a file or pick an example, then press the button.", elem_id="status")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples (synthetic)")
                opacity = gr.Slider(0, 1, value=0.4, step=0.05, label="Overlay opacity", elem_id="opacity")
                index = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                tta = demo.predictor is not None and demo.predictor.settings.tta
                show = gr.Checkbox(False, label="Show uncertainty (where the image and its mirror disagree)",
                                   visible=tta, elem_id="show-uncertainty")
            with gr.Column(scale=2):
                picture = gr.Image(label="Tumor overlay (original resolution)", type="numpy", format="png",
                                   interactive=False, elem_id="overlay")
                with gr.Row():
                    diagnosis = gr.Label(label="Diagnosis", elem_id="diagnosis")
                    summary = gr.Markdown(elem_id="summary")
                downloads = gr.File(label="Downloads: segmentation, result JSON (and uncertainty map)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        view = gr.State(None)
        outputs = [picture, index, diagnosis, summary, downloads, view, status]
        upload.change(lambda f: Demo.cleared("Ready: press the button." if f else ""), upload, outputs,
                      api_visibility="private")
        event = run.click(demo.run, [upload, opacity], outputs, api_name="run", concurrency_limit=1)
        failed = "The last upload could not be processed: see the error message at the top right."
        event.failure(lambda: Demo.cleared(failed), None, outputs, api_visibility="private")
        event.then(lambda: False, None, show, api_visibility="private")  # a new result opens on its tumour overlay
        for control in (index, opacity, show):
            control.input(Demo.redraw, [view, index, opacity, show], picture, api_visibility="private",
                          trigger_mode="always_last", concurrency_id="redraw")
    return page


def load(bundle: Path, checkpoint: Path | None, device: str | None, tta: bool | None = None) -> tuple[Any, str]:
    """The Predictor, or ``None`` and the reason shown on the page: no trained model, or an unusable one.

    Random weights are never served: without ``model.pt`` the page says so and refuses to run.
    """
    weights = checkpoint or bundle / WEIGHTS_FILE
    if not weights.is_file():
        return None, f"No trained model: {weights} does not exist; {TRAIN_HINT}."
    from scripts.inference import InputError, Predictor

    try:
        predictor = Predictor.from_bundle(bundle, device=device, checkpoint=checkpoint, tta=tta)
    except InputError as e:
        return None, f"The model cannot be loaded: {e}"
    log.info("model %s %s loaded on %s", predictor.card.get("name"), predictor.card.get("version"), predictor.device)
    return predictor, ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the host defaults to 127.0.0.1 (``GRADIO_SERVER_NAME`` overrides)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "monai_bundle", help="bundle root")
    ap.add_argument("--checkpoint", type=Path, help="weights file (default: BUNDLE/models/model.pt)")
    ap.add_argument("--device", help="auto | cpu | cuda (default: the bundle's configs/inference.json)")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction,
                    help="flip test-time augmentation (2x time) and the uncertainty map "
                         "(default: the bundle's configs/inference.json)")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="address to bind; 0.0.0.0 exposes the demo to the network")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--max-file-size", default="500mb", help="upload size limit (Gradio syntax, e.g. 500mb)")
    ap.add_argument("--no-examples", action="store_true", help="do not generate the synthetic examples")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Load the model once, write the examples, serve the page until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    predictor, problem = load(args.bundle.resolve(), args.checkpoint, args.device, args.tta)
    if problem:
        log.warning("%s", problem)
    example_dir = args.bundle.resolve() / EXAMPLES
    examples = [] if args.no_examples else web_examples.write_examples(example_dir)
    workdir = Path(tempfile.mkdtemp(prefix="mtunet-webdemo-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    page = build(Demo(predictor, problem, workdir), examples)
    page.queue(default_concurrency_limit=1)  # one CPU-bound inference at a time
    page.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False,
                max_file_size=args.max_file_size, allowed_paths=[str(example_dir)], footer_links=["api"])


if __name__ == "__main__":
    main()
