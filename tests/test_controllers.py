"""Step-size controllers (scoresolve/solvers/controllers.py): the error norm against a hand
computation, accept/reject, the step-size formula, batch norms and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from scoresolve.solvers.controllers import NORMS, Controller, error_norm


def test_error_norm_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    y1 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    err = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 1e-2
    rtol, atol = 0.05, 0.01
    got = error_norm(err, y0, y1, rtol, atol)
    assert got.shape == (3,)
    for b in range(3):
        vals = [
            (float(e) / (atol + rtol * max(abs(float(a)), abs(float(c))))) ** 2
            for e, a, c in zip(err[b].flatten(), y0[b].flatten(), y1[b].flatten(), strict=True)
        ]
        assert float(got[b]) == pytest.approx(math.sqrt(sum(vals) / len(vals)), rel=1e-12)


def test_error_norm_uses_the_larger_of_y0_and_y1():
    err = torch.full((1, 4), 0.1)
    small, big = torch.zeros(1, 4), torch.full((1, 4), 10.0)
    # the relative part comes from max(|y0|, |y1|): order of y0/y1 must not matter
    a = error_norm(err, small, big, rtol=0.1, atol=0.1)
    b = error_norm(err, big, small, rtol=0.1, atol=0.1)
    assert torch.allclose(a, b)
    assert float(a) == pytest.approx(0.1 / (0.1 + 0.1 * 10.0))


def test_error_norm_half_precision_accumulates_in_float32():
    err = torch.full((2, 10000), 1.0, dtype=torch.float16)
    y = torch.zeros(2, 10000, dtype=torch.float16)
    r = error_norm(err, y, y, rtol=0.1, atol=1.0)
    assert r.dtype == torch.float32
    assert torch.allclose(r, torch.ones(2))


def test_error_norm_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        error_norm(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), 0.1, 0.1)


def test_error_norm_scale_replaces_the_state_magnitude():
    g = torch.Generator().manual_seed(1)
    err = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 1e-2
    y = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 100  # ignored when a scale is given
    sigma = torch.tensor([0.5, 0.1, 0.01], dtype=torch.float64)[:, None, None]
    rtol, atol = 0.3, 0.002
    got = error_norm(err, y, y, rtol, atol, scale=sigma)
    for b in range(3):
        ref = (err[b] / (atol + rtol * sigma[b])).pow(2).mean().sqrt()
        assert float(got[b]) == pytest.approx(float(ref), rel=1e-12)
    # a scale of |y| gives back the default rule
    assert torch.allclose(error_norm(err, y, y, rtol, atol, scale=y.abs()), error_norm(err, y, y, rtol, atol))
    ctl = Controller(rtol=rtol, atol=atol, norm="per_sample")
    assert torch.allclose(ctl.ratio(err, y, y, scale=sigma), got)
    with pytest.raises(ValueError, match="scale must be broadcastable"):
        error_norm(err, y, y, rtol, atol, scale=torch.ones(2, 1, 1))
    with pytest.raises(TypeError, match="scale must be a tensor"):
        error_norm(err, y, y, rtol, atol, scale=0.5)


def test_propose_hold_caps_growth_only_where_asked():
    ctl = Controller(rtol=0.1, atol=0.1, safety=0.9, min_factor=0.2, max_factor=10.0)
    ratio = torch.tensor([0.01, 0.01, 4.0, 4.0], dtype=torch.float64)
    hold = torch.tensor([False, True, False, True])
    accept, h = ctl.propose(ratio, 1.0, error_order=1, hold=hold)
    assert accept.tolist() == [True, True, False, False]
    assert float(h[0]) == pytest.approx(9.0)  # 0.9 * 0.01^-1/2
    assert float(h[1]) == pytest.approx(1.0)  # held: no growth
    assert float(h[2]) == pytest.approx(0.45) and float(h[3]) == pytest.approx(0.45)  # shrinking unaffected
    _, h_none = ctl.propose(ratio, 1.0, error_order=1)
    assert float(h_none[1]) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="hold must be a bool tensor"):
        ctl.propose(ratio, 1.0, error_order=1, hold=torch.ones(4))
    with pytest.raises(ValueError, match="hold must be a bool tensor"):
        ctl.propose(ratio, 1.0, error_order=1, hold=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("norm", NORMS)
def test_ratio_per_norm(norm):
    err = torch.tensor([[0.1, 0.1], [0.3, 0.3], [0.0, 0.0]])
    y = torch.zeros(3, 2)
    ctl = Controller(rtol=0.5, atol=0.1, norm=norm)
    r = ctl.ratio(err, y, y)
    per = torch.tensor([1.0, 3.0, 0.0])
    expected = {
        "per_sample": per,
        "batch_rms": per.pow(2).mean().sqrt().expand(3),
        "batch_max": per.max().expand(3),
    }[norm]
    assert r.shape == (3,)
    assert torch.allclose(r, expected)
    assert ctl.per_sample == (norm == "per_sample")


def test_propose_formula_sign_and_clamps():
    ctl = Controller(rtol=0.1, atol=0.1, safety=0.9, min_factor=0.2, max_factor=10.0)
    ratio = torch.tensor([0.5, 1.0, 2.0, 1e6, 0.0, 1e-12], dtype=torch.float64)
    h = torch.full((6,), -0.01, dtype=torch.float64)  # reverse time
    accept, h_next = ctl.propose(ratio, h, error_order=1)
    assert accept.tolist() == [True, True, False, False, True, True]
    assert h_next.dtype == h.dtype
    assert (h_next < 0).all(), "the sign of h (reverse time) must be kept"
    expected = [-0.01 * min(10.0, max(0.2, 0.9 * float(r) ** -0.5)) if r > 0 else -0.1 for r in ratio]
    assert torch.allclose(h_next, torch.tensor(expected, dtype=torch.float64))
    assert float(h_next[3]) == pytest.approx(-0.002)  # clamped at min_factor
    assert float(h_next[4]) == pytest.approx(-0.1)  # ratio 0 → max_factor


def test_propose_error_order_sets_the_exponent():
    ctl = Controller(rtol=0.1, atol=0.1, safety=1.0)
    _, h2 = ctl.propose(torch.tensor([4.0]), 1.0, error_order=1)  # 4^(-1/2)
    _, h3 = ctl.propose(torch.tensor([8.0]), 1.0, error_order=2)  # 8^(-1/3)
    assert float(h2) == pytest.approx(0.5)
    assert float(h3) == pytest.approx(0.5)


def test_propose_rejects_nan_and_shrinks():
    ctl = Controller(rtol=0.1, atol=0.1)
    accept, h = ctl.propose(torch.tensor([float("nan"), float("inf"), 0.5]), 0.1, error_order=1)
    assert accept.tolist() == [False, False, True]
    assert float(h[0]) == pytest.approx(0.1 * ctl.min_factor)
    assert float(h[1]) == pytest.approx(0.1 * ctl.min_factor)


def test_propose_scalar_h_broadcasts_and_bad_shapes():
    ctl = Controller(rtol=0.1, atol=0.1)
    accept, h = ctl.propose(torch.tensor([0.5, 2.0]), torch.tensor(-0.1), error_order=1)
    assert h.shape == (2,) and accept.shape == (2,)
    with pytest.raises(ValueError, match="ratio"):
        ctl.propose(torch.tensor(0.5), 0.1, error_order=1)
    with pytest.raises(ValueError, match="h must"):
        ctl.propose(torch.tensor([0.5, 2.0]), torch.ones(3), error_order=1)
    with pytest.raises(ValueError, match="error_order"):
        ctl.propose(torch.tensor([0.5]), 0.1, error_order=0)


def test_control_loop_meets_tolerance_on_a_known_error_model():
    # error model err = C h^2 (error order 1): the controller must converge to the step size at which
    # the ratio sits just below 1, i.e. h* = sqrt(tol / C), within the safety factor.
    ctl = Controller(rtol=1e-9, atol=1e-3, norm="per_sample", safety=0.9)
    C = torch.tensor([1.0, 100.0], dtype=torch.float64)
    h = torch.full((2,), 0.5, dtype=torch.float64)
    for _ in range(30):
        err = (C * h**2)[:, None].expand(2, 8)
        ratio = ctl.ratio(err, torch.zeros(2, 8, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64))
        accept, h = ctl.propose(ratio, h, error_order=1)
    h_star = torch.sqrt(1e-3 / C)
    assert torch.all(h <= h_star) and torch.all(h >= 0.7 * h_star)
    assert accept.all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rtol": 0.0, "atol": 0.1}, "rtol"),
        ({"rtol": -1.0, "atol": 0.1}, "rtol"),
        ({"rtol": 0.1, "atol": 0.0}, "atol"),
        ({"rtol": 0.1, "atol": float("nan")}, "atol"),
        ({"rtol": 0.1, "atol": 0.1, "norm": "batch_mean"}, "norm must be one of"),
        ({"rtol": 0.1, "atol": 0.1, "norm": "per-sample"}, "Did you mean 'per_sample'"),
        ({"rtol": 0.1, "atol": 0.1, "min_factor": 2.0}, "min_factor"),
        ({"rtol": 0.1, "atol": 0.1, "max_factor": 0.5}, "max_factor"),
        ({"rtol": "a", "atol": 0.1}, "rtol"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Controller(**kwargs)
