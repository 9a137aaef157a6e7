"""Sample-quality metrics: Fréchet distance to exact moments and its floor, mode weights, and FID in
the feature space of the bundled digits classifier (Inception FID through torch-fidelity, opt-in)."""

from .fid import DigitsFID, classifier_fid, inception_fid
from .frechet import frechet_distance, frechet_floor, frechet_to_moments, gaussian_moments, mode_weights

__all__ = [
    "frechet_distance",
    "frechet_floor",
    "frechet_to_moments",
    "gaussian_moments",
    "mode_weights",
    "DigitsFID",
    "classifier_fid",
    "inception_fid",
]
