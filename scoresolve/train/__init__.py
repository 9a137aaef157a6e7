"""Training score models: losses, reference networks, a resumable trainer, data sets.

The sampling core never imports this package. ``python -m scoresolve.train --help`` for the CLI;
``python -m scoresolve.train.bundled`` reproduces the bundled digits model.
"""

from __future__ import annotations

from .losses import ddpm_loss, ddpm_schedule, dsm_loss, flow_matching_loss, sliced_score_matching_loss
from .nets import MLP, ScoreNet, TimeEmbedding, UNet
from .trainer import TrainConfig, Trainer, save_sample_grid

__all__ = [
    "dsm_loss",
    "ddpm_loss",
    "flow_matching_loss",
    "ddpm_schedule",
    "sliced_score_matching_loss",
    "MLP",
    "UNet",
    "ScoreNet",
    "TimeEmbedding",
    "Trainer",
    "TrainConfig",
    "save_sample_grid",
]
