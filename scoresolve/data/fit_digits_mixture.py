"""Refit the 64-D digits mixture shipped as ``digits_gmm.safetensors`` (needs scikit-learn for its EM; the
data are the digits shipped in ``digits.safetensors``).

    python -m scoresolve.data.fit_digits_mixture

EM on the shipped 8×8 digits (scikit-learn's ``load_digits`` images) scaled to [-1, 1], 10 full-covariance components,
``reg_covar=1e-3`` (keeps the always-blank border pixels from giving zero-variance directions),
``random_state=0``. Written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from scoresolve._util import atomic_write
from scoresolve.data import load_digits


def fit(n_components: int = 10, reg_covar: float = 1e-3, seed: int = 0) -> dict[str, torch.Tensor]:
    from sklearn.mixture import GaussianMixture

    x = load_digits()[0].reshape(-1, 64).numpy().astype(np.float64) / 8.0 - 1.0
    gm = GaussianMixture(
        n_components, covariance_type="full", reg_covar=reg_covar, random_state=seed, max_iter=1000, tol=1e-6
    ).fit(x)
    return {
        "weights": torch.from_numpy(gm.weights_),
        "means": torch.from_numpy(gm.means_),
        "covs": torch.from_numpy(gm.covariances_),
    }


def main() -> None:
    out = Path(__file__).with_name("digits_gmm.safetensors")
    params = fit()
    with atomic_write(out) as tmp:
        save_file(
            params,
            tmp,
            metadata={
                "source": "sklearn.datasets.load_digits / 8 - 1",
                "n_components": "10",
                "reg_covar": "1e-3",
                "seed": "0",
            },
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
