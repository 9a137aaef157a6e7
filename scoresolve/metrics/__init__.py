"""Sample-quality metrics."""

from .frechet import frechet_distance, frechet_floor, frechet_to_moments, gaussian_moments, mode_weights

__all__ = ["frechet_distance", "frechet_floor", "frechet_to_moments", "gaussian_moments", "mode_weights"]
