"""Ignite engines of the DyCON workflow."""

from .mean_teacher import MeanTeacherTrainer
