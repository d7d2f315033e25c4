"""MRML-level helpers: label map -> segmentation node with terminology, attributes, files.

This package imports the real ``slicer`` package, so it runs inside 3D Slicer and under plain Python
with ``slicer-core`` (Qt-free MRML, used by the test suite). It never touches ``slicer.app``,
``slicer.modules`` or widgets; every function takes the scene it works on. It lives in its own
package rather than a ``.py`` file beside ``MultiTaskUNet.py`` because Slicer's scripted-module
factory scans the top-level ``.py`` files of that folder for modules.
"""

from MultiTaskUNetMRML.segmentation import (  # noqa: F401  (the package's public names)
    ALGORITHM_NAME_TAG,
    ALGORITHM_TYPE_TAG,
    DICOM_INSTANCE_UIDS_ATTRIBUTE,
    DICOM_SEG_UNAVAILABLE,
    LABEL_VALUE_TAG,
    dicom_seg_available,
    export_dicom_seg,
    export_label_map,
    exported_segments,
    get_attributes,
    import_label_map,
    label_map_array,
    non_empty_segment_ids,
    place_under_study,
    read_segmentation,
    read_volume,
    register_converter_rules,
    segment_tag,
    segment_terminology,
    set_attributes,
    set_segment_algorithm,
    set_segment_terminology,
    show_in_3d,
    write_segmentation,
)
from MultiTaskUNetMRML.study import (  # noqa: F401
    EXPORT_FORMATS,
    REVIEW_ATTRIBUTE,
    export_study,
    get_result,
    get_review,
    import_study,
    refresh_edit_state,
    restore_study,
    set_review,
)
from MultiTaskUNetMRML.uncertainty import (  # noqa: F401
    import_uncertainty_map,
    link_uncertainty_map,
    linked_uncertainty_map,
)
