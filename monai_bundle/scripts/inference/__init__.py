"""The one inference API (``docs/contracts.md``): ``Predictor.from_bundle(...).predict(...)``.

Used by the CLI (``scripts.infer``), the Slicer worker (the same CLI), the web demo and the bundle's
``configs/inference.json``; none of them re-implements pre- or post-processing.

Modules: :mod:`.predictor` (the API), :mod:`.settings` (its knobs, read from
``configs/inference.json``), :mod:`.engine` (2D slice-wise / 3D sliding-window inference,
the diagnosis rule, device and out-of-memory fallback), :mod:`.readers` and :mod:`.dicom` (input
with its geometry), :mod:`.archive` (a zip of a DICOM series, unpacked safely), :mod:`.dicomweb` (DICOMweb study and series
URLs in, the DICOM SEG and SR pushed out), :mod:`.writers` and :mod:`.dicom_seg` (atomic outputs), :mod:`.overlay` (the one renderer of a label map over its image, in the
terminology colours: the overlay PNG and the web demo's picture), :mod:`.batch` (many
studies), :mod:`.distributed` (the same batch on Ray actors, on one machine or a cluster), :mod:`.terminology` (segment codes and colours), :mod:`.result` (the result JSON's
contract: ``configs/result.schema.json`` and the typed :class:`~.result.Result` every reader reads it through).
"""

from scripts.imageio import Geometry
from scripts.inference.batch import BatchRunner, Outcome, expand_inputs
from scripts.inference.engine import resolve_device
from scripts.inference.errors import InputError
from scripts.inference.predictor import SEG_SUFFIXES, Prediction, Predictor
from scripts.inference.readers import read_study
from scripts.inference.study import Study
from scripts.inference.result import Result, ResultError, parse_result, read_result
from scripts.inference.settings import InferenceSettings, load_settings

__all__ = ["BatchRunner", "Geometry", "InferenceSettings", "InputError", "Outcome", "Prediction", "Predictor",
           "Result", "ResultError", "SEG_SUFFIXES", "Study", "expand_inputs", "load_settings", "parse_result",
           "read_result", "read_study", "resolve_device"]
