"""Segmentation nodes from the worker's label map, and the files written from them.

Arrays from ``slicer.util.arrayFromVolume`` are ``(K, J, I)`` (slice, row, column): VTK's memory
order reversed. Label values of segments are kept in a segment tag, so an export writes the model's
values back even after the reviewer renamed or reordered segments.

Terminology goes through the segment tag ``vtkSegment.GetTerminologyEntryTagName()`` rather than
``vtkSegment.SetTerminology``/``GetTerminology`` (added in Slicer 5.10): the tag is what those
methods read and write, and it is what Slicer's DICOM SEG exporter reads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import slicer
import vtk

from MultiTaskUNetLib.structured_report import ExportedSegment
from MultiTaskUNetLib.terminology import SegmentTerminology

#: segment tag holding the label value the model gave the segment
LABEL_VALUE_TAG = "MultiTaskUNet.LabelValue"
#: segment tags Slicer's DICOM SEG exporter reads for Segment Algorithm Type / Name (default: MANUAL)
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"
#: reference volume attribute that marks a volume loaded from DICOM (its SOP instance UIDs)
DICOM_INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
DICOM_SEG_UNAVAILABLE = (
    "DICOM SEG export needs 3D Slicer 5.12 or later, or the QuantitativeReporting extension on Slicer 5.10 "
    "(install it from the Extensions Manager and restart Slicer). .seg.nrrd and NIfTI export work without it.")
_GEOMETRY_TOLERANCE = 1e-3  # mm; NIfTI stores float32 geometry, so exact equality is too strict


def register_converter_rules() -> None:
    """Register the labelmap <-> closed surface converter rules unless already there.

    3D Slicer's Segmentations module does this at start-up; plain ``slicer-core`` does not, and
    ``AddEmptySegment`` / 3D display need the rules.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for cls in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if cls.__name__ not in present:
            factory.RegisterConverterRule(cls())


def _remove(scene, node, keep_colors: Optional[set] = None) -> None:
    """Remove a temporary node with its display and storage nodes; with ``keep_colors`` (IDs of the
    color nodes that existed before), also the color table made for it (Slicer's labelmap export
    creates one per labelmap node and leaves it in the scene)."""
    colors = []
    for i in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(i)
        color = display.GetColorNode() if display is not None and hasattr(display, "GetColorNode") else None
        if color is not None and keep_colors is not None and color.GetID() not in keep_colors:
            colors.append(color)
        scene.RemoveNode(display)
    if node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)
    for color in colors:
        scene.RemoveNode(color)


def _color_node_ids(scene) -> set:
    nodes = scene.GetNodesByClass("vtkMRMLColorNode")
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def read_volume(scene, path: str | os.PathLike, name: str, labelmap: bool = False):
    """Read a volume file (NRRD, NIfTI, ...) into a new scalar or labelmap volume node.

    Raises:
        ValueError: the file is missing or cannot be read (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)  # a DICOM-like series scan of the folder would pick up unrelated files
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise ValueError(f"{path}: cannot read the volume")
    return node


def _ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def check_same_geometry(node, reference, source: str) -> None:
    """Raise ValueError naming ``source`` unless ``node`` has ``reference``'s grid (size, spacing,
    origin, direction)."""
    dims, ref_dims = node.GetImageData().GetDimensions(), reference.GetImageData().GetDimensions()
    if dims != ref_dims:
        raise ValueError(f"{source}: label map size {dims} differs from the input volume's {ref_dims}")
    if not np.allclose(_ijk_to_ras(node), _ijk_to_ras(reference), atol=_GEOMETRY_TOLERANCE):
        raise ValueError(f"{source}: label map spacing/origin/direction differ from the input volume's")


def place_under_study(scene, node, reference) -> None:
    """Put ``node`` in the subject hierarchy beside ``reference`` (under its study), which DICOM SEG
    export requires."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ref_item = sh.GetItemByDataNode(reference)
    if not ref_item:  # plain slicer-core adds no items by itself
        ref_item = sh.CreateItem(sh.GetSceneItemID(), reference)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(sh.GetSceneItemID(), node)
    sh.SetItemParent(item, sh.GetItemParent(ref_item))


def segment_tag(segment, tag: str) -> str:
    """A segment tag's value ('' when absent); VTK returns it through an output argument."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else ""


def segment_terminology(segment) -> str:
    """The segment's terminology entry string ('' when it has none); works on every Slicer 5.x."""
    return segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())


def set_segment_terminology(segment, text: str) -> None:
    """Set the terminology entry string through its tag (``SetTerminology`` exists only from Slicer 5.10)."""
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), text)


def _apply_terminology(segment, term: SegmentTerminology, value: int) -> None:
    segment.SetName(term.name)
    segment.SetColor(*term.color)
    set_segment_terminology(segment, term.to_slicer_string())
    segment.SetTag(LABEL_VALUE_TAG, str(value))


def set_segment_algorithm(segmentation_node, algorithm_type: str, algorithm_name: str) -> None:
    """Mark the model's segments (those with a label value tag) with the DICOM algorithm type and name;
    segments the reviewer added are marked ``MANUAL``."""
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        if segment_tag(segment, LABEL_VALUE_TAG):
            segment.SetTag(ALGORITHM_TYPE_TAG, algorithm_type)
            segment.SetTag(ALGORITHM_NAME_TAG, algorithm_name)
        else:
            segment.SetTag(ALGORITHM_TYPE_TAG, "MANUAL")
            segment.RemoveTag(ALGORITHM_NAME_TAG)


def attach_to_reference(seg, reference) -> None:
    """Give ``seg`` display nodes and ``reference``'s geometry, and reference that volume (the role the
    Segment Editor and the exporters look up)."""
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(), reference.GetID())


def import_label_map(scene, label_path: str | os.PathLike, reference, terms: dict[int, SegmentTerminology],
                     name: str, segmentation_node=None):
    """Import the worker's label map as a segmentation of ``reference`` (the input volume).

    Every value in ``terms`` becomes a segment with that name, color and terminology, also when the
    model found no voxels for it (an empty segment the reviewer can draw into).

    Raises:
        ValueError: the file cannot be read, its grid differs from ``reference``, or it holds a
            label value not in ``terms`` (all name the file).
    """
    label = read_volume(scene, label_path, name + "_label", labelmap=True)
    try:
        check_same_geometry(label, reference, str(label_path))
        values = set(np.unique(slicer.util.arrayFromVolume(label)).tolist()) - {0}
        unknown = sorted(values - set(terms))
        if unknown:
            raise ValueError(f"{label_path}: label values {unknown} are not among the result's segments {sorted(terms)}")
        seg = segmentation_node or scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        attach_to_reference(seg, reference)
        segmentation = seg.GetSegmentation()
        segmentation.RemoveAllSegments()
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, seg):
            raise ValueError(f"{label_path}: importing the label map into a segmentation failed")
    finally:
        _remove(scene, label)
    imported = {segmentation.GetNthSegment(i).GetLabelValue(): segmentation.GetNthSegmentID(i)
                for i in range(segmentation.GetNumberOfSegments())}
    register_converter_rules()
    for value, term in sorted(terms.items()):
        segment_id = imported.get(value) or segmentation.AddEmptySegment("", term.name)
        _apply_terminology(segmentation.GetSegment(segment_id), term, value)
    place_under_study(scene, seg, reference)
    return seg


def show_in_3d(segmentation_node) -> None:
    """Build the closed-surface representation so the segments show in the 3D view."""
    register_converter_rules()
    segmentation_node.CreateClosedSurfaceRepresentation()


def set_attributes(node, attributes: dict[str, str]) -> None:
    """Store string attributes on a node (they are saved with the scene)."""
    for key, value in attributes.items():
        node.SetAttribute(key, value)


def get_attributes(node, prefix: str) -> dict[str, str]:
    """All attributes of ``node`` whose name starts with ``prefix``."""
    return {n: node.GetAttribute(n) for n in node.GetAttributeNames() if n.startswith(prefix)}


def _segment_masks(scene, segmentation_node, reference):
    """``(segment_id, segment, mask or None)`` per segment, masks ``(K, J, I)`` bool on ``reference``'s
    grid (None: empty segment). Leaves no node behind (temporary labelmap, its display node and the
    color table Slicer's export makes for it)."""
    segmentation = segmentation_node.GetSegmentation()
    colors_before = _color_node_ids(scene)
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MultiTaskUNet_export__")
    try:
        out = []
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id, segment = segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            mask = None
            if slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, temp, reference):
                mask = slicer.util.arrayFromVolume(temp) > 0
                if not mask.any():
                    mask = None
            out.append((segment_id, segment, mask))  # export fails for an empty segment: nothing to export
        return out
    finally:
        _remove(scene, temp, keep_colors=colors_before)


def label_map_array(scene, segmentation_node, reference) -> np.ndarray:
    """The segmentation as a ``(K, J, I)`` uint8 label map on ``reference``'s grid, each segment
    painted with its model label value (later segments win where segments overlap)."""
    out = np.zeros(tuple(reversed(reference.GetImageData().GetDimensions())), np.uint8)
    for i, (_, segment, mask) in enumerate(_segment_masks(scene, segmentation_node, reference)):
        if mask is not None:
            out[mask] = int(segment_tag(segment, LABEL_VALUE_TAG) or segment.GetLabelValue() or i + 1)
    return out


def exported_segments(scene, segmentation_node, reference) -> list[ExportedSegment]:
    """The segments a DICOM SEG export writes (those with voxels, in segment order: the exporter numbers
    them 1..n in this order), with the model's label value (None for a segment the reviewer added),
    voxel count and volume in mL on ``reference``'s grid."""
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    out = []
    for _, segment, mask in _segment_masks(scene, segmentation_node, reference):
        if mask is not None:
            value = segment_tag(segment, LABEL_VALUE_TAG)
            voxels = int(np.count_nonzero(mask))
            out.append(ExportedSegment(segment.GetName(), int(value) if value else None, voxels, voxels * voxel_ml))
    return out


def non_empty_segment_ids(scene, segmentation_node, reference) -> list[str]:
    """IDs of the segments that hold at least one voxel, in segment order."""
    return [segment_id for segment_id, _, mask in _segment_masks(scene, segmentation_node, reference) if mask is not None]


def _atomic_target(path: Path, suffix: str) -> tuple[Path, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # the name stays unique; the MRML writer creates the file itself (and warns if it exists)
    return path, Path(tmp)


def _write_node(scene, node, path: str | os.PathLike, storage_class: str, suffix: str) -> Path:
    path, tmp = _atomic_target(Path(path), suffix)
    storage = scene.AddNewNodeByClass(storage_class)
    try:
        storage.SetFileName(str(tmp))
        storage.SetUseCompression(True)
        if not storage.WriteData(node) or not tmp.is_file():  # some writers report success for an empty node
            raise ValueError(f"{path}: writing {node.GetName()} failed")
        os.replace(tmp, path)
    finally:
        scene.RemoveNode(storage)
        tmp.unlink(missing_ok=True)
    return path


def export_label_map(scene, segmentation_node, reference, path: str | os.PathLike) -> Path:
    """Write the label map (model label values, ``reference``'s geometry) to NIfTI/NRRD, atomically.

    Raises:
        ValueError: the file could not be written (names it).
    """
    array = label_map_array(scene, segmentation_node, reference)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MultiTaskUNet_label__")
    try:
        node.CopyOrientation(reference)
        slicer.util.updateVolumeFromArray(node, array)
        suffix = ".nii.gz" if str(path).endswith(".nii.gz") else Path(path).suffix
        return _write_node(scene, node, path, "vtkMRMLVolumeArchetypeStorageNode", suffix)
    finally:
        _remove(scene, node)


def write_segmentation(scene, segmentation_node, path: str | os.PathLike) -> Path:
    """Write a ``.seg.nrrd`` (segments, names, colors, terminology, label values), atomically.

    Raises:
        ValueError: the file could not be written (names it).
    """
    return _write_node(scene, segmentation_node, path, "vtkMRMLSegmentationStorageNode", ".seg.nrrd")


def read_segmentation(scene, path: str | os.PathLike, name: str):
    """Read a ``.seg.nrrd`` into a new segmentation node.

    Raises:
        ValueError: the file is missing or unreadable (names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok:
        scene.RemoveNode(node)
        raise ValueError(f"{path}: cannot read the segmentation")
    return node


def dicom_seg_exporter():
    """Slicer's DICOM SEG exporter class (``DICOMSegmentationPlugin.DICOMSegmentationExporter``).

    The plugin is part of 3D Slicer from 5.12 and of the QuantitativeReporting extension before;
    both define the exporter with the same ``export(outputDirectory, segFileName, metadata,
    segmentIDs, skipEmpty)``.

    Raises:
        RuntimeError: no DICOM SEG exporter in this Slicer (:data:`DICOM_SEG_UNAVAILABLE`).
    """
    try:
        import DICOMSegmentationPlugin  # a Slicer DICOM plugin: present only inside the application
    except ImportError as e:
        raise RuntimeError(DICOM_SEG_UNAVAILABLE) from e
    exporter = getattr(DICOMSegmentationPlugin, "DICOMSegmentationExporter", None)
    if exporter is None:
        raise RuntimeError(DICOM_SEG_UNAVAILABLE)
    return exporter


def dicom_seg_available() -> bool:
    """Whether this Slicer can write DICOM SEG (see :func:`dicom_seg_exporter`)."""
    try:
        dicom_seg_exporter()
    except RuntimeError:
        return False
    return True


def export_dicom_seg(scene, segmentation_node, reference, path: str | os.PathLike, content_creator: str = "") -> Path:
    """Write one DICOM SEG file through Slicer's DICOM SEG exporter (3D Slicer only).

    Only segments with voxels are written (the exporter cannot store empty ones; called this way it
    never asks the "skip empty segments?" question). The segments' algorithm type and name come from
    their ``DICOM.SegmentAlgorithm*`` tags (:func:`set_segment_algorithm`).

    Raises:
        RuntimeError: no DICOM SEG exporter, the input was not loaded from DICOM, every segment is
            empty, or the exporter failed (the message says what to do).
    """
    exporter_class = dicom_seg_exporter()
    if not reference.GetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE):
        raise RuntimeError("DICOM SEG export needs the input volume loaded from DICOM (through the DICOM module); "
                           "save as .seg.nrrd or NIfTI instead")
    segment_ids = non_empty_segment_ids(scene, segmentation_node, reference)
    if not segment_ids:
        raise RuntimeError("DICOM SEG export: every segment is empty, and DICOM SEG cannot store an empty "
                           "segmentation; save as .seg.nrrd or NIfTI instead")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = exporter_class(segmentation_node, content_creator or None)
    metadata = {"SeriesDescription": segmentation_node.GetName()}
    if content_creator:
        metadata["ContentCreatorName"] = content_creator
    try:
        exporter.export(str(path.parent), path.name, metadata, segmentIDs=segment_ids, skipEmpty=True)
    except Exception as e:  # the exporter raises ValueError/RuntimeError/...: one message for the user
        raise RuntimeError(f"DICOM SEG export failed: {e}") from e
    finally:
        exporter.cleanup()
    if not path.is_file():
        raise RuntimeError(f"DICOM SEG export failed: {path} was not written")
    database = getattr(slicer, "dicomDatabase", None)
    if database is not None:  # as Slicer's DICOM export does: the new series shows in the DICOM browser
        database.insert(str(path))
    return path
