from .case_metrics import (
    EMPTY_RULES,
    INTEGER_METRICS,
    LESION_METRIC_UNITS,
    METRIC_UNITS,
    CaseMetrics,
    metric_names,
    summarize_case_metrics,
)
from .lesion import (
    LESION_METRIC_NAMES,
    count_lesions,
    label_lesions,
    lesion_count_difference,
    lesion_detection,
    lesion_f1,
    lesion_metrics,
    volume_difference_ml,
)
from .spacing import spacing_from_affine, spacing_from_meta, spacings_from_batch
from .surface import CASE_METRIC_NAMES, asd, assd, case_metrics, dice, hd95, iou, surface_distances
