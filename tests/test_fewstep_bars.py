"""The few-step acceptance bars on the digits mixture under VP, as the benchmark measures them
(``benchmarks/fewstep.py``): ``solver="auto"`` at 5 and 10 evaluations, n = 2000, noise seeds 0/1/2,
its grid calibrated once on independent noise.

- FD / floor (floor: mean FD of exact samples of the same size, 50 draws) ≤ 1.3 at 5, ≤ 1.1 at 10;
- mean log p0 of the samples within 2 / 0.5 nats of the exact probability-flow ODE's samples from the
  same prior noise (paired: the unpaired mean of 2000 samples moves ±0.3 nats between seeds, so an
  unpaired 0.5-nat bar cannot be resolved at this n; docs/fast_samplers.md);
- at 10: per-sample RMSE against the tight reference solution ≤ 0.025 (mean over samples).
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import exact_floor

import scoresolve as ss
from scoresolve.calibrate import teacher_solution
from scoresolve.metrics import frechet_to_moments

N = 2000
BARS = {5: (1.3, 2.0, None), 10: (1.1, 0.5, 0.025)}


@functools.cache
def _reference(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gm, sde = ss.analytic.digits(), ss.VPSDE()
    x_T = sde.prior_sample((N, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref, _ = teacher_solution(gm.score_model(sde), sde, x_T, sde.default_eps, to_zero=True, steps=200)
    return x_T, ref


@pytest.mark.slow
@pytest.mark.parametrize("budget", sorted(BARS))
def test_auto_meets_the_few_step_bars_on_every_seed(budget):
    gm, sde = ss.analytic.digits(), ss.VPSDE()
    model = gm.score_model(sde)
    mean, cov = gm.moments()
    floor = exact_floor("digits", N)
    fd_bar, logp_bar, rmse_bar = BARS[budget]
    for seed in (0, 1, 2):
        x_T, ref = _reference(seed)
        res = ss.sample(model, sde, solver="auto", nfe=budget, x_T=x_T, return_result=True)
        assert res.nfe == budget
        x = res.samples
        ratio = frechet_to_moments(x.reshape(N, -1).float(), mean, cov) / floor
        gap = float(gm.log_prob(x).mean() - gm.log_prob(ref).mean())
        assert ratio <= fd_bar, f"{budget} NFE seed {seed}: FD / floor {ratio:.3f} > {fd_bar}"
        assert abs(gap) <= logp_bar, f"{budget} NFE seed {seed}: log p0 gap {gap:+.3f} vs the exact ODE"
        if rmse_bar is not None:
            rmse = float((x - ref).reshape(N, -1).pow(2).mean(1).sqrt().mean())
            assert rmse <= rmse_bar, f"{budget} NFE seed {seed}: RMSE {rmse:.4f} > {rmse_bar}"


@functools.cache
def _reference_ve(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gm, sde = ss.analytic.digits(), ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    x_T = sde.prior_sample((N, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref, _ = teacher_solution(gm.score_model(sde), sde, x_T, sde.default_eps, to_zero=True, steps=200)
    return x_T, ref


@pytest.mark.slow
@pytest.mark.parametrize("budget", [5, 10])
def test_auto_under_ve_on_digits(budget):
    """Under VE: FD <= 2x the floor at 5 evaluations, within 1.1x of the exact ODE's FD from the same
    noise at 10 (the 20-evaluation figure, whose calibration takes minutes, is in the benchmark)."""
    gm, sde = ss.analytic.digits(), ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    model = gm.score_model(sde)
    mean, cov = gm.moments()
    floor = exact_floor("digits", N)
    for seed in (0, 1, 2):
        x_T, ref = _reference_ve(seed)
        x = ss.sample(model, sde, solver="auto", nfe=budget, x_T=x_T)
        fd = frechet_to_moments(x.reshape(N, -1).float(), mean, cov)
        if budget == 5:
            assert fd / floor <= 2.0, f"VE 5 NFE seed {seed}: FD / floor {fd / floor:.3f}"
        else:
            fd_ode = frechet_to_moments(ref.reshape(N, -1).float(), mean, cov)
            assert fd / fd_ode <= 1.1, f"VE 10 NFE seed {seed}: FD / FD(exact ODE) {fd / fd_ode:.3f}"
