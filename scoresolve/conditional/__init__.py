r"""Conditional generation with an unconditional score model (Song et al. 2021, arXiv:2011.13456, Sec. 5).

- :func:`inpaint`: missing entries given observed ones; ``method="smc"`` (asymptotically exact
  particle filter, the default) or ``"replace"`` (the paper's replacement baseline, not consistent).
- :func:`linear_inverse`: any linear observation ``y = A x (+ noise)``, through the SVD of ``A``.
- :func:`super_resolution`: ``factor x factor`` average pooling observed (:func:`avg_pool_matrix`).
- :func:`calibration_check`: simulation-based calibration on a model with no closed form.
- :func:`colorize`: gray → colour through an orthogonal colour transform (the paper's App. I.3).
- :func:`guided`: classifier guidance; :func:`classifier_free`: classifier-free guidance — both
  return score models usable with every solver.

See docs/conditional.md for the math and the measured accuracy against exact conditionals.
"""

from .api import METHODS, inpaint
from .guidance import classifier_free, guided
from .linear import avg_pool_matrix, color_basis, colorize, linear_inverse, super_resolution
from .sbc import CalibrationCheck, calibration_check

__all__ = ["inpaint", "linear_inverse", "colorize", "color_basis", "guided", "classifier_free", "METHODS",
           "super_resolution", "avg_pool_matrix", "calibration_check", "CalibrationCheck"]
