"""Half-precision networks under a float32 sampler, and the CPU side of the accelerator path."""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss
from scoresolve.io import load
from scoresolve.models import cpu_facing, model_device
from scoresolve.train.nets import TimeEmbedding


def test_time_embedding_keeps_float32_frequencies_under_half_casts() -> None:
    emb = TimeEmbedding(64, "sinusoidal", time_scale=1000.0)
    t = torch.linspace(1e-3, 1.0, 50)
    exact = emb(t)
    for dt in (torch.float16, torch.bfloat16):
        emb.to(dt)
        assert emb.freqs.dtype == torch.float32
        assert torch.equal(emb(t), exact)  # rounded frequencies would move 1000 t w by radians
    emb.to(torch.float64)
    assert emb.freqs.dtype == torch.float64


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.03), (torch.float16, 0.005)])
def test_half_precision_network_samples_near_float32(dtype: torch.dtype, tol: float) -> None:
    # the state stays float32; x is cast to the network's dtype and the score back (measured RMSE:
    # bfloat16 0.009, float16 0.0008 on the digits network at 10 NFE; samples' sd about 0.6)
    x_T = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = ss.sample(load("digits"), solver="dpmpp_2m", nfe=10, x_T=x_T, progress=False)
    out = ss.sample(load("digits", dtype=dtype), solver="dpmpp_2m", nfe=10, x_T=x_T, progress=False)
    assert out.dtype == torch.float32
    rmse = float((out - ref).pow(2).mean().sqrt())
    assert 0 < rmse < tol


def test_nfe_for_a_solver_without_declared_cost_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="nfe="):
        ss.sample(lambda x, t: -x, ss.VPSDE(), solver="sde", nfe=10, shape=(4, 2), progress=False)


def test_cpu_facing_score_is_the_model_itself_on_the_cpu() -> None:
    model = load("digits")
    assert model_device(model) == torch.device("cpu")
    assert model_device(lambda x, t: -x) is None
    assert cpu_facing(model, model_device(model)) is model
    assert cpu_facing(model, None) is model
