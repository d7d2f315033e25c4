"""The words beside the web demo's picture, read from the result JSON through the result contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the page reads results through scripts.inference.result (its import loads the whole API)
    from scripts.inference.result import Result


def probabilities(result: Result) -> dict[str, float]:
    """``{class name: probability}`` of a result, for ``gr.Label``."""
    return dict(result.diagnosis.probabilities)


def summary_markdown(result: Result) -> str:
    """What a person reads beside the image: diagnosis, tumor size, model, device and warnings.

    Args:
        result: a study's result as the contract reads it (:func:`scripts.inference.result.read_result`
            of the ``<name>_result.json`` the Predictor wrote). A segment's size is what the result holds:
            its volume in mL and voxels for a volume, its pixels for a 2D image (which has no volume).
    """
    diag = result.diagnosis
    lines = [f"**Diagnosis: {diag.label}** ({100 * diag.probability:.1f} %)", ""]
    for seg in result.segmentation.segments:
        if seg.volume_ml is not None:
            lines.append(f"- {seg.name}: volume {seg.volume_ml:.2f} mL ({seg.voxels} voxels)")
        else:
            lines.append(f"- {seg.name}: area {seg.voxels} pixels")
    u = result.segmentation.uncertainty
    if u is not None:
        lines.append(f"- segmentation uncertainty (flip TTA): {u:.2f} of 1")
    elif result.tta is False:  # tta absent (None): a result older than the measurement, nothing to say
        lines.append("- segmentation uncertainty: not measured (flip TTA off)")
    model, times = result.model, result.timings_s or {}
    model_text = f"{model.name} {model.version}" if model is not None else "?"
    lines += ["", f"Model {model_text} on {result.device or '?'}, "
              f"{sum(times.values()):.2f} s (read, infer, write)"]
    lines += [f"- ⚠ {w}" for w in result.warnings or ()]
    return "\n".join(lines)
