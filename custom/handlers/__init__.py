"""Ignite handlers of the DyCON workflow."""

from .case_metrics_writer import CaseMetricsHandler, CaseMetricsWriter
from .ema import TeacherEMAHandler, unwrap
from .schedules import ScheduleHandler
from .checkpoint import TrainingCheckpointLoader, TrainingCheckpointSaver, latest_checkpoint, loss_parts
from .ddp import BufferSync, DrawLog, state_sha256
from .pictures import OverlayPNGWriter, ProgressBarHandler, TrainingCurvePNG, mlflow_available, with_lr
