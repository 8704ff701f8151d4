from .case_metrics import METRIC_UNITS, CaseMetrics, summarize_case_metrics
from .spacing import spacing_from_affine, spacing_from_meta, spacings_from_batch
from .surface import CASE_METRIC_NAMES, asd, assd, case_metrics, dice, hd95, iou, surface_distances
