"""``ScoresolveScheduler``: a scoresolve solver as a diffusers scheduler (tiny components built here, no network).

- the scheduler contract diffusers' own ``SchedulerCommonTest`` checks, in our words: save/load and
  ``from_config`` round trips give identical steps, compatible schedulers' configs round-trip, the tuple and
  dict outputs agree, ``step`` keeps the sample's shape, ``scale_model_input``/``add_noise``/``init_noise_sigma``;
- equivalences with diffusers' own schedulers driven by the exact noise prediction of a Gaussian mixture:
  ``dpmpp_2m`` vs ``DPMSolverMultistepScheduler`` (2M, same sigmas, first-order step to 0) to 1e-5, DDPM's
  ancestral sampler vs ``DDPMScheduler`` step for step with shared noise, Euler in sigma vs
  ``EulerDiscreteScheduler`` to 1e-5; the scheduler vs ``ss.sample(from_diffusers(...))`` from the same noise;
- honest NFE, errors from the solver reaching the pipeline, abandoned runs, restarts;
- tiny ``StableDiffusionPipeline`` and ``DiTPipeline`` end to end.
"""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss

diffusers = pytest.importorskip("diffusers")
from scoresolve.adapters.diffusers import DiscreteTimeMap, ScoresolveScheduler  # noqa: E402

torch.set_num_threads(1)
ANCESTRAL = {"predictor": "ancestral_sampling", "corrector": "none"}
CONTRACT_SOLVERS = [("dpmpp_2m", None), ("unipc", None), ("ipndm", None), ("pc", ANCESTRAL)]


def _mixture_eps(acp: torch.Tensor):
    """The exact noise prediction of a 4-D Gaussian mixture at a (fractional) discrete timestep of ``acp``."""
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=4)
    sde = ss.VPSDE()
    tm = DiscreteTimeMap(acp, sde)

    def eps(x, timestep):
        a = tm.alphas_cumprod_at(torch.as_tensor(timestep, dtype=torch.float64).reshape(1))
        t = sde.t_from_log_snr(0.5 * torch.log(a / (1 - a))).expand(x.shape[0])
        return -sde.marginal_std(t).reshape(-1, 1) * gm.score(x.double(), t, sde)

    return eps


def _loop(sched, eps, x, generator=None):
    for t in sched.timesteps:
        x = sched.step(eps(x, t), t, x, generator=generator).prev_sample
    return x


def _x_T(seed, n=16):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("n", [5, 10, 20])
def test_dpmpp_2m_matches_dpm_solver_multistep(n):
    ref = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                final_sigmas_type="zero", lower_order_final=True)
    ref.set_timesteps(n)
    eps = _mixture_eps(ref.alphas_cumprod)
    expected = _loop(ref, eps, _x_T(n))
    ours = ScoresolveScheduler(solver="dpmpp_2m", final="tweedie")
    ours.set_timesteps(sigmas=ref.sigmas)
    torch.testing.assert_close(ours.timesteps.double(), ref.timesteps.double(), atol=1e-3, rtol=0)
    got = _loop(ours, eps, _x_T(n))
    assert ours.nfe == n and ours.result.nfe == n
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ancestral_matches_ddpm_step_for_step():
    ref = diffusers.DDPMScheduler(clip_sample=False)
    ref.set_timesteps(1000)
    eps = _mixture_eps(ref.alphas_cumprod)
    # DDPMScheduler forms its coefficients (beta_t = 1 - acp_t / acp_prev) in float32: 3e-4 apart by step 997.
    # With the same acp values in float64 the two samplers agree to rounding.
    ref.alphas_cumprod, ref.one = ref.alphas_cumprod.double(), ref.one.double()
    ours = ScoresolveScheduler(solver="pc", solver_options=ANCESTRAL, timestep_mode="nearest")
    ours.set_timesteps(sigmas=torch.cat([((1 - ref.alphas_cumprod) / ref.alphas_cumprod).sqrt().flip(0),
                                         torch.zeros(1)]))
    assert torch.equal(ours.timesteps, ref.timesteps)
    x_ref = x_ours = _x_T(0, n=4)
    g_ref, g_ours = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    worst = 0.0
    for t in ref.timesteps:
        x_ref = ref.step(eps(x_ref, t), t, x_ref, generator=g_ref).prev_sample
        x_ours = ours.step(eps(x_ours, t), t, x_ours, generator=g_ours).prev_sample
        worst = max(worst, float((x_ref - x_ours).abs().max()))
    assert worst < 1e-9, worst


def test_euler_in_sigma_matches_euler_discrete():
    # trailing spacing puts its timesteps on trained nodes; between nodes diffusers' Euler interpolates sigma
    # linearly in the timestep where our time map interpolates log-sigma (up to 1e-3 timestep units apart)
    ref = diffusers.EulerDiscreteScheduler(timestep_spacing="trailing")
    ref.set_timesteps(10)
    eps = _mixture_eps(ref.alphas_cumprod)
    x_T = _x_T(3)
    # Euler's state is x / alpha, the network's input x / sqrt(sigma^2 + 1); its init_noise_sigma (sigma_max for
    # this spacing) rounds 1 / alpha = sqrt(sigma_max^2 + 1), which we take exactly
    x = x_T * (ref.sigmas[0].double() ** 2 + 1).sqrt()
    for t in ref.timesteps:
        x = ref.step(eps(ref.scale_model_input(x, t), t), t, x).prev_sample
    ours = ScoresolveScheduler(solver="dpm_solver", solver_options={"order": 1}, final="tweedie")
    ours.set_timesteps(sigmas=ref.sigmas)
    torch.testing.assert_close(_loop(ours, eps, x_T), x, atol=1e-5, rtol=1e-5)


def test_scheduler_draws_what_ss_sample_draws(tmp_path):
    """The scheduler in a hand-written pipeline loop and ``ss.sample(from_diffusers(...))`` from the same noise."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval().double()
    ddpm = diffusers.DDPMScheduler(clip_sample=False)
    # float64: a float32 random UNet amplifies the solvers' own rounding (x = alpha * (x / alpha)) to 1e-4
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for solver, opts in [("unipc", {}), ("pc", ANCESTRAL)]:
        sched = ScoresolveScheduler.from_scheduler(ddpm, solver=solver, solver_options=opts or None)
        sched.set_timesteps(6)
        x = x_T.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
        model = ss.from_diffusers(unet, scheduler=ddpm, clip_x0=False)
        ref = ss.sample(model, solver=solver, grid=sched.result.grid, x_T=x_T.clone(),
                        final="zero" if solver == "unipc" else "tweedie", generator=torch.Generator().manual_seed(5),
                        **opts)
        torch.testing.assert_close(x, ref, atol=1e-6, rtol=1e-6)  # the pipeline passes float32 timesteps
        assert sched.nfe == len(sched.timesteps) == sched.result.nfe


# ----------------------------------------------------------------------------------------- the contract


def _dummy():
    x = torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    return x, 0.1 * x


@pytest.mark.parametrize("solver,opts", CONTRACT_SOLVERS)
def test_save_load_round_trip_gives_identical_steps(tmp_path, solver, opts):
    sched = ScoresolveScheduler(solver=solver, solver_options=opts, beta_schedule="scaled_linear",
                                prediction_type="v_prediction")
    sched.save_pretrained(tmp_path)
    loaded = ScoresolveScheduler.from_pretrained(tmp_path)
    cfg = dict(sched.config)
    cfg.pop("_use_default_values", None)
    assert cfg == dict(loaded.config)
    again = ScoresolveScheduler.from_config(sched.config)
    x, out = _dummy()
    for s in (sched, loaded, again):
        s.set_timesteps(8)
    for t in (sched.timesteps[0], sched.timesteps[3], 1, 0):  # a restart, and timesteps not in the schedule
        a = sched.step(out, t, x, generator=torch.manual_seed(0)).prev_sample
        b = loaded.step(out, t, x, generator=torch.manual_seed(0)).prev_sample
        c = again.step(out, t, x, generator=torch.manual_seed(0), return_dict=False)[0]
        assert a.shape == x.shape and torch.isfinite(a).all()
        assert torch.equal(a, b) and torch.equal(a, c)


def test_compatible_schedulers_round_trip_the_config():
    sched = ScoresolveScheduler(solver="unipc")
    assert sched.compatibles and all(c is not None for c in sched.compatibles)
    for cls in sched.compatibles:
        other = cls.from_config(sched.config)
        back = ScoresolveScheduler.from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in sched.config} == dict(sched.config)


def test_public_api_and_add_noise():
    sched = ScoresolveScheduler()
    ddpm = diffusers.DDPMScheduler()
    x, noise = _dummy()
    assert sched.init_noise_sigma == 1.0 and sched.scale_model_input(x, 3) is x
    ts = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(sched.add_noise(x, noise, ts), ddpm.add_noise(x, noise, ts), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(noise, 0, x)
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps(4, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="decreasing"):
        sched.set_timesteps(sigmas=[1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="largest noise level"):
        sched.set_timesteps(sigmas=[1e4, 1.0, 0.0])
    with pytest.raises(ValueError, match="adaptive"):
        ScoresolveScheduler(solver="ode")
    with pytest.raises(TypeError, match="unknown option"):
        ScoresolveScheduler(solver="dpmpp_2m", solver_options={"snr": 0.1})
    with pytest.raises(ValueError, match="final"):
        ScoresolveScheduler(final="last")


def test_custom_sigmas_pass_through_and_order():
    sched = ScoresolveScheduler(solver="dpmpp_2m", final="zero")
    sigmas = [14.6, 7.0, 3.1, 1.2, 0.4, 0.1, 0.0]
    sched.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(sched.sigmas, torch.tensor(sigmas, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    assert len(sched.timesteps) == 6 and sched.order == 1
    heun = ScoresolveScheduler(solver="ode_heun")
    heun.set_timesteps(5)
    assert heun.order == 2 and len(heun.timesteps) == 2 * 5 + 1  # two calls per interval + Tweedie at the end


def test_solver_errors_reach_the_pipeline_and_abandoned_runs_end():
    sched = ScoresolveScheduler(solver="unipc")
    sched.set_timesteps(6)
    x, out = _dummy()
    y = sched.step(out, sched.timesteps[0], x).prev_sample
    with pytest.raises(ss.NonFiniteScoreError):
        sched.step(torch.full_like(out, float("nan")), sched.timesteps[1], y)
    # a half-finished run is abandoned by a new set_timesteps; a full run then equals a fresh scheduler's
    sched.set_timesteps(6)
    y = sched.step(out, sched.timesteps[0], x).prev_sample
    sched.set_timesteps(6)
    fresh = ScoresolveScheduler(solver="unipc")
    fresh.set_timesteps(6)
    a, b = x, x
    for t in sched.timesteps:
        a = sched.step(0.1 * a, t, a).prev_sample
        b = fresh.step(0.1 * b, t, b).prev_sample
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------- pipelines


def _stable_diffusion():
    transformers = pytest.importorskip("transformers")  # the test extra
    CLIPTextConfig, CLIPTextModel = transformers.CLIPTextConfig, transformers.CLIPTextModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=1, vocab_size=100, bos_token_id=0, eos_token_id=2,
                                        pad_token_id=1))
    ddim = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, set_alpha_to_one=False)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=ddim,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # no tokenizer offline: prompt embeddings from the text encoder directly
        ids = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(0))
        cond, uncond = text(ids)[0], text(torch.ones_like(ids))[0]
    return pipe, cond, uncond


def test_stable_diffusion_pipeline_with_classifier_free_guidance():
    """Two-line swap into a (tiny) StableDiffusionPipeline; with diffusers' DPM-Solver++(2M) sigmas it draws
    what DPMSolverMultistepScheduler draws (guidance 7.5: both branches batched in one call per step)."""
    pipe, cond, uncond = _stable_diffusion()
    args = dict(prompt_embeds=cond, negative_prompt_embeds=uncond, height=16, width=16, guidance_scale=7.5,
                output_type="np")
    ref_sched = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, final_sigmas_type="zero")
    pipe.scheduler = ref_sched
    ref = pipe(num_inference_steps=6, generator=torch.Generator().manual_seed(0), **args).images
    pipe.scheduler = ScoresolveScheduler.from_scheduler(ref_sched, solver="dpmpp_2m", final="tweedie")
    ref_sched.set_timesteps(6)
    ours = pipe(sigmas=ref_sched.sigmas.tolist(), generator=torch.Generator().manual_seed(0), **args).images
    assert ours.shape == (1, 16, 16, 3) and pipe.scheduler.nfe == 6
    assert abs(ours - ref).max() < 1e-4
    pipe.scheduler = ScoresolveScheduler.from_scheduler(ref_sched, solver="unipc")  # our defaults: steps, grid
    img = pipe(num_inference_steps=5, generator=torch.Generator().manual_seed(0), **args).images
    assert img.shape == (1, 16, 16, 3) and pipe.scheduler.nfe == 5


class _FixedSigmas(ScoresolveScheduler):
    """DiTPipeline calls set_timesteps(n) only: this test's subclass plans the given sigmas instead."""

    fixed: list[float] = []

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None):
        super().set_timesteps(device=device, sigmas=self.fixed)


def test_dit_pipeline_class_conditional_latents():
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                          num_attention_heads=2, in_channels=4, out_channels=8,
                                          num_embeds_ada_norm=1000).eval()  # eval: no label dropout
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
                                  norm_num_groups=4)
    ref_sched = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="zero")
    pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=ref_sched)
    pipe.set_progress_bar_config(disable=True)
    args = dict(class_labels=[1, 3], num_inference_steps=5, guidance_scale=4.0, output_type="np")
    ref = pipe(generator=torch.Generator().manual_seed(0), **args).images
    ref_sched.set_timesteps(5)
    _FixedSigmas.fixed = ref_sched.sigmas.tolist()
    pipe.scheduler = _FixedSigmas.from_scheduler(ref_sched, solver="dpmpp_2m", final="tweedie")
    ours = pipe(generator=torch.Generator().manual_seed(0), **args).images
    assert ours.shape == (2, 8, 8, 3) and pipe.scheduler.nfe == 5
    assert abs(ours - ref).max() < 1e-4


def test_trained_betas_config_attributes_and_errors_of_attribute_access(tmp_path):
    sched = ScoresolveScheduler(trained_betas=[0.1, 0.3, 0.5])
    sched.save_pretrained(tmp_path)
    assert ScoresolveScheduler.from_pretrained(tmp_path).betas.tolist() == sched.betas.tolist()
    sched.set_timesteps(2)
    x, noise = _dummy()
    assert sched.add_noise(x, noise, sched.timesteps[1][None]).shape == x.shape
    sched.register_to_config(test_attribute=5)
    with pytest.warns(FutureWarning):
        assert sched.test_attribute == 5  # config attributes read through the object: diffusers' deprecation
    with pytest.raises(AttributeError, match="'ScoresolveScheduler' object has no attribute 'nope'"):
        sched.nope  # noqa: B018


def test_calibrated_sigmas_are_used_and_saved(tmp_path):
    """``calibrate`` stores a grid for a budget; ``set_timesteps(n)`` then runs on it (here a hand-made one)."""
    sched = ScoresolveScheduler(solver="unipc", calibrated_sigmas={"4": [150.0, 9.0, 1.0, 0.05]})
    sched.set_timesteps(4)
    torch.testing.assert_close(sched.sigmas, torch.tensor([150.0, 9.0, 1.0, 0.05, 0.0], dtype=torch.float64))
    sched.save_pretrained(tmp_path)
    assert ScoresolveScheduler.from_pretrained(tmp_path).config.calibrated_sigmas == {"4": [150.0, 9.0, 1.0, 0.05]}
    with pytest.warns(UserWarning, match="calibrate"):
        ScoresolveScheduler(solver="auto").set_timesteps(10)
    with pytest.raises(ValueError, match="calibrate"):
        ScoresolveScheduler(solver="auto", solver_options={"calibrate": True})


def test_calibrate_then_the_scheduler_runs_the_calibrated_grid():
    """``calibrate`` runs scoresolve's calibration (as ``ss.sample(..., calibrate=True)``) outside the pipeline and
    the scheduler then draws what ``ss.sample`` draws on that grid from the same noise."""
    sched = ScoresolveScheduler(solver="unipc", final="zero")
    eps = _mixture_eps(sched.alphas_cumprod)
    sig = sched.calibrate(lambda x, ts: eps(x, ts[0]).to(x.dtype), 6, sample_shape=(4,),
                          generator=torch.Generator().manual_seed(0))
    assert len(sig) == 6 and sched.config.calibrated_sigmas["6"] == sig
    default = ScoresolveScheduler(solver="unipc")
    default.set_timesteps(6)
    sched.set_timesteps(6)
    assert not torch.allclose(sched.sigmas, default.sigmas)  # calibration moved the grid
    torch.testing.assert_close(sched.sigmas[:-1], torch.tensor(sig, dtype=torch.float64))
    x = _loop(sched, eps, _x_T(1))
    ref = ss.sample(ss.from_diffusers(lambda x_, ts: eps(x_, ts[0]).to(x_.dtype), scheduler=sched, sde=sched.sde),
                    solver="unipc", grid=sched.result.grid, x_T=_x_T(1), final="zero")
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)  # the pipeline passes float32 timesteps


def test_auto_runs_its_recipe_on_a_calibrated_grid_and_on_custom_sigmas():
    """``auto`` in a pipeline cannot calibrate: on the grid ``calibrate`` stored (here a hand-made one), or on
    ``sigmas=``, it runs the row of its table for the budget (10: UniPC bh2, step to 0), exactly what
    ``ss.sample`` draws with that solver on that grid from the same noise."""
    sig = [150.0, 40.0, 12.0, 4.0, 1.5, 0.6, 0.25, 0.1, 0.04, 0.015]
    sched = ScoresolveScheduler(solver="auto", calibrated_sigmas={"10": sig})
    eps = _mixture_eps(sched.alphas_cumprod)
    model = ss.from_diffusers(lambda x_, ts: eps(x_, ts[0]).to(x_.dtype), scheduler=sched, sde=sched.sde)
    for plan in ({"num_inference_steps": 10}, {"sigmas": [*sig, 0.0]}):
        sched.set_timesteps(**plan)
        assert len(sched.timesteps) == 10
        torch.testing.assert_close(sched.sigmas[:-1], torch.tensor(sig, dtype=torch.float64))
        x = _loop(sched, eps, _x_T(1))
        assert sched.result.nfe == 10
        ref = ss.sample(model, solver="unipc", order=2, variant="bh2", grid=sched.result.grid, x_T=_x_T(1),
                        final="zero")
        torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("solver,opts", CONTRACT_SOLVERS)
def test_any_number_of_steps_from_one(solver, opts):
    sched = ScoresolveScheduler(solver=solver, solver_options=opts)
    x, out = _dummy()
    for n in (1, 2, 5, 100):
        sched.set_timesteps(n)
        assert len(sched.timesteps) >= n and torch.isfinite(sched.timesteps).all()
        y = sched.step(out, sched.timesteps[0], x).prev_sample
        assert y.shape == x.shape and torch.isfinite(y).all()
    sched.set_timesteps(1)  # one call: Tweedie's x0 at T
    t = torch.full((4,), sched.sde.T, dtype=torch.float64)
    expected = (x.double() - sched.sde.marginal_std(t)[0] * out.double()) / sched.sde.alpha(t)[0]
    torch.testing.assert_close(sched.step(out, sched.timesteps[0], x).prev_sample.double(), expected,
                               atol=1e-4, rtol=1e-5)


def test_a_pipeline_saved_with_the_scheduler_loads_it_back(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.scheduler = ScoresolveScheduler.from_scheduler(pipe.scheduler, solver="unipc", grid="karras")
    pipe.save_pretrained(tmp_path)
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is ScoresolveScheduler and loaded.scheduler.config.grid == "karras"
    assert loaded.scheduler.config.clip_sample  # DDPMScheduler's clip_sample=True came along
    loaded.set_progress_bar_config(disable=True)
    images = loaded(batch_size=2, num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and loaded.scheduler.nfe == 4
