"""The worker's voxel-wise uncertainty map (flip-TTA disagreement, 0..1) as a scalar volume for a second layer.

The map is shown as the slice views' foreground over the input: a colour map from low (blue) to high
(red) uncertainty, a fixed 0..1 window so that maps of different studies compare, and voxels below
:data:`SHOW_FROM` left transparent (the threshold), so only where the model wavers is coloured.
"""

from __future__ import annotations

import os

import slicer

from MultiTaskUNetMRML.segmentation import check_same_geometry, place_under_study, read_volume

#: uncertainty below this is not drawn (the display node's lower threshold)
SHOW_FROM = 0.05
#: colour table of the map: Slicer's procedural reverse rainbow, blue (0) to red (1)
COLOR_TABLE_TYPE = slicer.vtkMRMLColorTableNode.ReverseRainbow
#: node reference role from a segmentation to the uncertainty map shown with it
UNCERTAINTY_MAP_REFERENCE = "MultiTaskUNet.uncertaintyMap"


def color_node_id() -> str:
    """The ID Slicer's colour logic gives the map's colour table (the same in Slicer and in slicer-core)."""
    return slicer.vtkMRMLColorLogic.GetColorTableNodeID(COLOR_TABLE_TYPE)


def import_uncertainty_map(scene, path: str | os.PathLike, reference, name: str):
    """Read the map at ``path`` as a scalar volume on ``reference``'s grid, styled for a foreground layer.

    Returns:
        the ``vtkMRMLScalarVolumeNode`` (under ``reference``'s study in the subject hierarchy).

    Raises:
        ValueError: the file is missing or unreadable, or its grid differs from ``reference``'s (names the file).
    """
    node = read_volume(scene, path, name)
    try:
        check_same_geometry(node, reference, str(path))
    except ValueError:
        scene.RemoveNode(node)
        raise
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node_id())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetThreshold(SHOW_FROM, 1.0)
    display.ApplyThresholdOn()
    place_under_study(scene, node, reference)
    return node


def link_uncertainty_map(segmentation_node, map_node) -> None:
    """Remember ``map_node`` as the uncertainty map shown with ``segmentation_node`` (a node reference)."""
    segmentation_node.SetNodeReferenceID(UNCERTAINTY_MAP_REFERENCE, map_node.GetID())


def linked_uncertainty_map(segmentation_node):
    """The uncertainty map linked to ``segmentation_node``, or None."""
    return segmentation_node.GetNodeReference(UNCERTAINTY_MAP_REFERENCE)
