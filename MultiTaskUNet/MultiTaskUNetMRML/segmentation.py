"""Segmentation nodes from the worker's label map, and the files written from them.

Arrays from ``slicer.util.arrayFromVolume`` are ``(K, J, I)`` (slice, row, column): VTK's memory
order reversed. Label values of segments are kept in a segment tag, so an export writes the model's
values back even after the reviewer renamed or reordered segments.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import slicer
import vtk

from MultiTaskUNetLib.terminology import SegmentTerminology

#: segment tag holding the label value the model gave the segment
LABEL_VALUE_TAG = "MultiTaskUNet.LabelValue"
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


def _remove(scene, node) -> None:
    for i in range(node.GetNumberOfDisplayNodes()):
        scene.RemoveNode(node.GetNthDisplayNode(i))
    if node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


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


def _apply_terminology(segment, term: SegmentTerminology, value: int) -> None:
    segment.SetName(term.name)
    segment.SetColor(*term.color)
    segment.SetTerminology(term.to_slicer_string())
    segment.SetTag(LABEL_VALUE_TAG, str(value))


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
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        seg.SetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole(), reference.GetID())
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


def label_map_array(scene, segmentation_node, reference) -> np.ndarray:
    """The segmentation as a ``(K, J, I)`` uint8 label map on ``reference``'s grid, each segment
    painted with its model label value (later segments win where segments overlap)."""
    segmentation = segmentation_node.GetSegmentation()
    out = np.zeros(tuple(reversed(reference.GetImageData().GetDimensions())), np.uint8)
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MultiTaskUNet_export__")
    try:
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id, segment = segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)
            value = int(segment_tag(segment, LABEL_VALUE_TAG) or segment.GetLabelValue() or i + 1)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, temp, reference):
                continue  # an empty segment has nothing to export
            out[slicer.util.arrayFromVolume(temp) > 0] = value
    finally:
        _remove(scene, temp)
    return out


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


def export_dicom_seg(scene, segmentation_node, out_dir: str | os.PathLike) -> Optional[Path]:
    """Export through Slicer's DICOM SEG exporter (3D Slicer only: core in >= 5.12, else the
    QuantitativeReporting extension). The segmentation must sit under a DICOM study.

    Raises:
        RuntimeError: no DICOM SEG exporter is available, or the segmentation is not under a
            DICOM study (the message says what to do).
    """
    try:
        import DICOMSegmentationPlugin  # a Slicer DICOM plugin: present only inside the application
    except ImportError as e:
        raise RuntimeError("DICOM SEG export needs 3D Slicer 5.12 or later, or the QuantitativeReporting "
                           "extension on older versions") from e
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(segmentation_node)
    exporter = DICOMSegmentationPlugin.DICOMSegmentationPluginClass()
    exportables = exporter.examineForExport(item)
    if not exportables:
        raise RuntimeError("DICOM SEG export needs the input volume loaded from DICOM (the segmentation is "
                           "placed under its study); save as .seg.nrrd or NIfTI instead")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for exportable in exportables:
        exportable.directory = str(out_dir)
    error = exporter.export(exportables)
    if error:
        raise RuntimeError(f"DICOM SEG export failed: {error}")
    return out_dir
