"""Ignite handlers of the DyCON workflow."""

from .case_metrics_writer import CaseMetricsHandler, CaseMetricsWriter
from .checkpoint import TrainingCheckpointLoader, TrainingCheckpointSaver, latest_checkpoint, loss_parts
from .ddp import BufferSync, DrawLog, state_sha256
from .ema import TeacherEMAHandler, unwrap
from .pictures import OverlayPNGWriter, ProgressBarHandler, TrainingCurvePNG, mlflow_available, with_lr
from .schedules import ScheduleHandler
