"""``ScoresolveScheduler``: any fixed-grid scoresolve solver as a diffusers scheduler (docs/adapters.md).

Swap it into a pipeline in two lines::

    from scoresolve.adapters.diffusers import ScoresolveScheduler
    pipe.scheduler = ScoresolveScheduler.from_scheduler(pipe.scheduler, solver="dpmpp_2m")

The pipeline owns its loop (network, then ``step(model_output, t, x)``) and so does a solver (``score(x, t)``):
the scheduler runs :func:`scoresolve.sample` unchanged in a worker thread whose score function hands ``(x, t)``
to the pipeline and waits, so one ``step`` is one network call. :meth:`set_timesteps` finds the solver's
evaluation times by a dry run (a zero model on one scalar); adaptive solvers are refused. The state is the
pipeline's VP sample on the model's betas schedule (:class:`~scoresolve.adapters.diffusers.DiscreteTimeMap`), so
the scheduler and ``ss.sample(from_diffusers(pipe), ...)`` draw the same samples from the same noise. A ``step``
at another timestep or with another sample than the one returned starts a new run from there.
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
import warnings
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from .._util import one_of
from ..models import ScoreModel
from ..recipes import auto_recipe
from ..registry import SOLVERS
from ..sampling import SampleResult, sample
from .diffusers import (
    _PREDICTION_TYPES,
    DiscreteTimeMap,
    _clipped,
    budget_kwargs,
    from_diffusers,
    vp_sde_for_alphas_cumprod,
)

__all__ = ["ScoresolveScheduler"]

FINALS = ("zero", "tweedie", "none")


class _Abandoned(BaseException):
    """Raised inside a worker's score function to end a run nobody waits for (not an ``Exception``, so no
    solver's error handling catches it)."""


class _Run:
    """One :func:`scoresolve.sample` call in a worker thread, paused at every evaluation of the model.

    ``pending`` is what the worker said last: ``("request", x, ts)`` (it waits for the model output at ``x``
    and timestep ``ts``), ``("done", SampleResult)`` or ``("error", exception)``.
    """

    def __init__(self, make_model: Any, kwargs: dict[str, Any]) -> None:
        self._to_main: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._to_worker: queue.Queue[Tensor | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, args=(make_model(self._evaluate), kwargs), daemon=True)
        self._thread.start()
        self.pending = self._to_main.get()

    def _evaluate(self, x: Tensor, ts: Tensor) -> Tensor:
        self._to_main.put(("request", x, ts))
        out = self._to_worker.get()
        if out is None:
            raise _Abandoned
        return out

    def _work(self, model: ScoreModel, kwargs: dict[str, Any]) -> None:
        try:
            result = sample(model, model.sde, return_result=True, **kwargs)
        except _Abandoned:
            return
        except BaseException as e:  # handed to the pipeline's thread, raised there by step()
            self._to_main.put(("error", e))
            return
        self._to_main.put(("done", result))

    def answer(self, model_output: Tensor) -> tuple[Any, ...]:
        self._to_worker.put(model_output)
        self.pending = self._to_main.get()
        return self.pending

    def abandon(self) -> None:
        if self._thread.is_alive() and self.pending[0] == "request":
            self._to_worker.put(None)
        self._thread.join()


class ScoresolveScheduler(SchedulerMixin, ConfigMixin):
    r"""A scoresolve solver as a diffusers scheduler (``SchedulerMixin`` + ``ConfigMixin``).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the model's discrete noise
            schedule, as in diffusers' DDPM-family schedulers (``alphas_cumprod`` is built by
            ``DDPMScheduler``'s own rules).
        prediction_type: what the network predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        solver: a registered fixed-grid solver (``ss.solvers()``): ``"dpmpp_2m"``, ``"unipc"``, ``"ipndm"``,
            ``"pc"`` (with ``solver_options={"predictor": "ancestral_sampling", "corrector": "none"}``: DDPM's
            ancestral sampler), ...
        solver_options: the solver's options (JSON-serialisable: they are saved with the config).
        grid: a registered grid name for ``set_timesteps(n)`` (default: the solver's own).
        final: how the last step ends: ``"zero"`` (scoresolve's step to :math:`\sigma = 0`), ``"tweedie"``
            (Tweedie's :math:`\hat x_0` at the last time, the step diffusers' first-order final steps take) or
            ``"none"`` (stop at the last time). A ``sigmas=`` list without a trailing 0 stops at its last sigma.
        timestep_mode: ``"fractional"`` (the network receives the exact fractional timestep) or ``"nearest"``
            (the nearest trained timestep, as int64: for networks that look timesteps up in an embedding).
        clip_sample, clip_sample_range: clamp Tweedie's :math:`\hat x_0` to ``[-range, range]`` at every
            evaluation (diffusers' ``clip_sample``; from :meth:`from_scheduler` it is the source's setting).
        calibrated_sigmas: grids calibrated for the model by :meth:`calibrate`, by budget (``{"10": [...]}``);
            ``set_timesteps(n)`` uses the one for ``n``. Saved with the config.

    A solver cannot calibrate its grid against the model inside a pipeline, which shows the scheduler one
    evaluation at a time: :meth:`calibrate` does it outside and stores the grid. ``auto`` runs the row of its
    table for the budget without the Gaussian first step (no moments to estimate them from), on that grid or,
    without one, on the row's uncalibrated default grid (with a warning).

    Cost: ``len(timesteps)`` network calls, one per ``step`` (``nfe``); :meth:`set_timesteps` runs the solver
    once on a scalar with a zero model (twice with ``num_inference_steps``) to learn its evaluation times.
    """

    _compatibles = [
        "DDPMScheduler",
        "DDIMScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DEISMultistepScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        solver: str = "dpmpp_2m",
        solver_options: dict[str, Any] | None = None,
        grid: str | None = None,
        final: str = "zero",
        timestep_mode: str = "fractional",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        calibrated_sigmas: dict[str, list[float]] | None = None,
    ) -> None:
        from diffusers import DDPMScheduler

        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}"
            )
        one_of(final, FINALS, "final")
        if solver_options is not None and not isinstance(solver_options, dict):
            raise TypeError(f"solver_options must be a dict of the solver's options, got {type(solver_options)}")
        if solver_options and "calibrate" in solver_options:
            raise ValueError(
                "solver_options: 'calibrate' cannot run inside a pipeline; call scheduler.calibrate(pipe, steps), "
                "which stores the calibrated grid for set_timesteps(steps)"
            )
        if getattr(SOLVERS.get(solver, argument="solver"), "adaptive", False):
            raise ValueError(
                f"solver {solver!r} is adaptive: its evaluation times depend on the model's values, so a "
                "scheduler cannot list them as timesteps; choose a fixed-grid solver"
            )
        ddpm = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
        )
        self.betas = ddpm.betas
        self.alphas_cumprod = ddpm.alphas_cumprod
        self.sde = vp_sde_for_alphas_cumprod(self.alphas_cumprod, beta_schedule, beta_start, beta_end)
        self.time_map = DiscreteTimeMap(self.alphas_cumprod, self.sde, timestep_mode)  # type: ignore[arg-type]
        self.init_noise_sigma = 1.0
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self.nfe = 0
        self.result: SampleResult | None = None
        self._grid: Tensor | None = None
        self._eval_t: Tensor | None = None
        self._starts: dict[int, int] = {}
        self._run: _Run | None = None
        self._next = 0
        self._handed: Tensor | None = None
        self._final = final
        self._solver: Any = self._resolve(4)
        self._dry_run(budget_kwargs(self._solver, 4), final)  # unknown or adaptive options fail here, not mid-pipeline

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_scheduler(cls, scheduler: Any, solver: str = "dpmpp_2m", **kwargs: Any) -> ScoresolveScheduler:
        """A scheduler for the model that ``scheduler`` (a diffusers scheduler or its config) serves: its betas,
        ``prediction_type`` and ``clip_sample`` are read from the config; ``kwargs`` set the rest."""
        cfg = dict(getattr(scheduler, "config", scheduler))
        if not any(k in cfg for k in ("beta_schedule", "trained_betas", "beta_start")):
            raise ValueError(
                f"from_scheduler: {cfg.get('_class_name', type(scheduler).__name__)} has no betas schedule "
                "(beta_schedule/beta_start/trained_betas); only DDPM-family (alphas_cumprod) models are supported"
            )
        if cfg.get("rescale_betas_zero_snr"):
            raise ValueError("from_scheduler: rescale_betas_zero_snr=True (zero terminal SNR) is not supported")
        params = inspect.signature(cls.__init__).parameters
        own = {k: v for k, v in cfg.items() if k in params and k != "self"}
        return cls(**{**own, "solver": solver, **kwargs})

    # ------------------------------------------------------------------ diffusers API

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The identity: the state is already the network's input."""
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        r""":math:`\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon` at (possibly fractional) timesteps."""
        ac = self.time_map.alphas_cumprod_at(torch.as_tensor(timesteps).reshape(-1))
        ac = ac.to(device=original_samples.device, dtype=original_samples.dtype)
        ac = ac.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return ac.sqrt() * original_samples + (1 - ac).sqrt() * noise

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Any = None,
    ) -> None:
        r"""Plan a run: ``num_inference_steps`` (the solver's ``steps``, on ``grid`` or its own grid) or a custom
        ``sigmas`` list (EDM noise levels :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`, decreasing; a trailing
        0 means the last step goes to :math:`\sigma = 0` as ``final`` says), used as given. Sets ``timesteps``
        (one per network call), ``sigmas`` (the grid's, with the trailing 0 when there is one) and ``order``.
        """
        self._abandon()
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("set_timesteps: pass exactly one of num_inference_steps= and sigmas=")
        cfg = self.config
        final = cfg.final
        if sigmas is not None:
            sig = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().reshape(-1)
            if sig.numel() < 2 or not torch.isfinite(sig).all() or (sig[:-1] <= 0).any() or sig[-1] < 0:
                raise ValueError(f"sigmas must be finite, positive (a final 0 allowed), >= 2 entries; got {sig}")
            if not (sig[1:] < sig[:-1]).all():
                raise ValueError("sigmas must be strictly decreasing")
            if sig[-1] > 0:
                final = "none"
            else:
                sig = sig[:-1]
                if final == "none":
                    final = "tweedie"  # a trailing 0 asks for a step to sigma = 0
            grid = self.sde.t_from_sigma(sig)
            over = grid > self.sde.T
            if (grid[over] > self.sde.T * (1 + 1e-6)).any():
                s_max = float(self.sde.sigma(torch.tensor(self.sde.T, dtype=torch.float64)))
                raise ValueError(f"sigmas exceed the schedule's largest noise level {s_max:.6g}: got {float(sig[0])}")
            grid[over] = self.sde.T
            kwargs = {"grid": grid}
            self._solver = self._resolve(sig.numel() - (final == "none"))
        else:
            steps = int(num_inference_steps)  # type: ignore[arg-type]
            if steps < 1:
                raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
            calibrated = (cfg.calibrated_sigmas or {}).get(str(steps))
            if steps == 1 and final != "none":
                kwargs = {"steps": 1}  # one network call (below), whatever the solver
            elif calibrated is not None:
                kwargs = {"grid": self.sde.t_from_sigma(torch.tensor(calibrated, dtype=torch.float64))}
                kwargs["grid"][0] = min(float(kwargs["grid"][0]), self.sde.T)
                self._solver = self._resolve(len(calibrated) - (final == "none"))
            else:
                if cfg.solver == "auto":
                    warnings.warn(
                        f"solver 'auto' has no grid calibrated for {steps} steps: call scheduler.calibrate(pipe, "
                        f"{steps}) first; running its uncalibrated grid",
                        UserWarning,
                        stacklevel=2,
                    )
                self._solver = self._resolve(steps)
                kwargs = budget_kwargs(self._solver, steps)
                grid_name = cfg.grid or (auto_recipe(steps, gaussian=False).grid if cfg.solver == "auto" else None)
                if grid_name is not None:
                    kwargs["grid"] = grid_name
                kwargs["grid"] = self._dry_run(kwargs, final).grid  # the grid that steps/grid name give
        self._final = final
        if isinstance(kwargs.get("grid"), Tensor) and kwargs["grid"].numel() == 1 or (
            kwargs.get("steps") == 1 and final != "none"
        ):
            # one network call: Tweedie's x0 at the only noise level (what a solver's one step to 0 is)
            t0 = kwargs["grid"].reshape(1) if "grid" in kwargs else torch.tensor([self.sde.T], dtype=torch.float64)
            self._plan(t0.to(torch.float64), t0.to(torch.float64), final, device)
            return
        times: list[Tensor] = []
        result = self._dry_run(kwargs, final, times)
        self._plan(result.grid.to(torch.float64), torch.stack(times).to(torch.float64), final, device)

    def _plan(self, grid: Tensor, eval_t: Tensor, final: str, device: Any) -> None:
        """Set ``timesteps``, ``sigmas``, ``order`` and the restart points from a run's grid and evaluation times."""
        self._grid, self._eval_t = grid, eval_t
        ts = self.time_map(eval_t.float())  # what a float32 run (the usual pipeline) computes
        self.timesteps = ts.to(device) if device is not None else ts
        self.num_inference_steps = len(ts)
        n_int = grid.numel() - 1
        self.order = max(1, len(ts) // max(n_int, 1))
        sig_grid = self.sde.sigma(grid)
        self.sigmas = torch.cat([sig_grid, sig_grid.new_zeros(1)]) if final != "none" else sig_grid
        # evaluation index -> grid point, where the solver can be restarted
        self._starts = {}
        for g in range(n_int):
            near = torch.isclose(eval_t, grid[g], rtol=1e-9, atol=0.0).nonzero()
            if len(near):
                self._starts[int(near[0])] = g
        self._next = 0

    def step(
        self,
        model_output: Tensor,
        timestep: int | float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Deliver the network's output at ``(sample, timestep)``; returns the point of the next network call
        (``prev_sample``), or the final sample after the last one."""
        if self.timesteps is None:
            raise ValueError("ScoresolveScheduler: call set_timesteps(...) before step()")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}"
            )
        k = self._index_for(timestep)
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        out = model_output.to(dtype)
        continuing = (
            self._run is not None and k == self._next and self._handed is not None
            and self._handed.shape == sample.shape and torch.equal(self._handed, sample)
        )
        self.nfe += 1
        if not continuing:
            self._abandon()
            if k == len(self.timesteps) - 1 and k not in self._starts:
                prev = self._tweedie(sample.to(dtype), out, k)
                self._next = len(self.timesteps)
                return self._output(prev.to(sample.dtype), return_dict)
            if k not in self._starts:
                raise ValueError(
                    f"step() at timestep {float(torch.as_tensor(timestep))} (evaluation {k}): the solver "
                    f"{self.config.solver!r} can start only at a grid point; step through timesteps in order"
                )
            self._start(sample.to(dtype), self._starts[k], generator)
        assert self._run is not None
        msg = self._run.answer(out)
        if msg[0] == "error":
            self._run = None
            raise msg[1]
        if msg[0] == "done":
            self._run = None
            self.result = msg[1]
            self._next = len(self.timesteps)
            prev = msg[1].samples
        else:
            self._next = k + 1
            self._expect(msg[2], self._next)
            prev = msg[1]
        prev = prev.to(sample.dtype).clone()
        self._handed = prev.clone()  # a pipeline may change its latents in place
        return self._output(prev, return_dict)

    # ------------------------------------------------------------------ internals

    def _model(self, fn: Any) -> ScoreModel:
        param = _PREDICTION_TYPES[self.config.prediction_type]
        model = ScoreModel(fn, self.sde, parameterization=param, time_fn=self.time_map)  # type: ignore[arg-type]
        if self.config.clip_sample:
            r = float(self.config.clip_sample_range)
            model = _clipped(model, (-r, r))
        return model

    def _resolve(self, budget: int) -> Any:
        """The solver a run uses: the configured one, or for ``auto`` the row of its table for ``budget``
        evaluations without a Gaussian first step (:func:`scoresolve.recipes.auto_recipe`), as an instance.
        ``auto`` inside a pipeline cannot calibrate (it sees one evaluation at a time) and a restart in mid-run
        must continue with the same solver, so the row is chosen once per :meth:`set_timesteps`; its rows take
        one evaluation per grid point, so ``budget`` is the grid's points (intervals with ``final="none"``)."""
        if self.config.solver != "auto":
            return self.config.solver
        return auto_recipe(budget, gaussian=False).instance

    def _solve_kwargs(self, final: str) -> dict[str, Any]:
        return {"solver": self._solver, **(self.config.solver_options or {}), "final": final}

    def calibrate(
        self,
        pipeline_or_unet: Any,
        steps: int,
        *,
        sample_shape: tuple[int, ...] | None = None,
        generator: torch.Generator | None = None,
        **model_options: Any,
    ) -> list[float]:
        """Calibrate the solver's grid for this model and ``steps`` network calls with scoresolve's calibration
        (:func:`scoresolve.calibrate.calibrate_grid`, as ``ss.sample(..., calibrate=True)`` does), outside the
        pipeline; the grid is kept in ``config.calibrated_sigmas`` (saved with the scheduler) and used by
        ``set_timesteps(steps)``. Unconditional calibration: the network is called as
        :func:`~scoresolve.adapters.diffusers.from_diffusers` calls it (``model_options`` are its options, e.g.
        ``class_labels=``; ``sample_shape`` when the network's config does not give it). Returns the sigmas.
        Cost: the calibration's (``ss.sample``'s ``info["calibration"]``), thousands of calls at small batches."""
        cfg = self.config
        r = float(cfg.clip_sample_range)
        model = from_diffusers(pipeline_or_unet, scheduler=self, sde=self.sde, timestep_mode=cfg.timestep_mode,
                               clip_x0=bool(cfg.clip_sample), data_range=(-r, r), **model_options)
        # by name (auto: its recipe's calibration), without the Gaussian first step a pipeline run cannot take
        kwargs = {"solver": cfg.solver, **(cfg.solver_options or {}), "final": self._final, "calibrate": True,
                  "gaussian_prior": None}
        shape = None if sample_shape is None else (1, *sample_shape)
        res = sample(model, model.sde, **budget_kwargs(cfg.solver, int(steps)), shape=shape,
                     batch_size=None if shape else 1,
                     generator=generator, return_result=True, **kwargs)
        assert isinstance(res, SampleResult) and res.grid is not None
        sig = [float(v) for v in self.sde.sigma(res.grid.to(torch.float64))]
        self.register_to_config(calibrated_sigmas={**(cfg.calibrated_sigmas or {}), str(int(steps)): sig})
        return sig

    def _dry_run(self, kwargs: dict[str, Any], final: str, times: list[Tensor] | None = None) -> SampleResult:
        """Run the solver on one scalar sample with a zero network output, recording its evaluation times."""

        def zero(x: Tensor, ts: Tensor) -> Tensor:
            return torch.zeros_like(x)

        model = self._model(zero)

        def recorded(x: Tensor, t: Tensor) -> Tensor:
            if times is not None:
                times.append(t[0].detach().clone())
            return model(x, t)

        x_T = torch.zeros(1, 1, dtype=torch.float64)
        res = sample(recorded, self.sde, x_T=x_T, generator=torch.Generator().manual_seed(0), return_result=True,
                     **kwargs, **self._solve_kwargs(final))
        assert isinstance(res, SampleResult)
        if res.grid is None:
            raise ValueError(f"solver {self.config.solver!r} reported no grid; a scheduler needs a fixed grid")
        return res

    def _start(self, x: Tensor, g: int, generator: torch.Generator | None) -> None:
        assert self._grid is not None
        grid = self._grid[g:]
        kwargs = {"grid": grid, "x_T": x, "generator": generator, **self._solve_kwargs(self._final)}
        if grid.numel() < 2:
            raise ValueError("cannot restart on the last grid point")
        self._run = _Run(self._model, kwargs)
        if self._run.pending[0] == "error":
            err = self._run.pending[1]
            self._run = None
            raise err
        self._expect(self._run.pending[2], self._index_of_start(g))

    def _index_of_start(self, g: int) -> int:
        return next(k for k, gg in self._starts.items() if gg == g)

    def _expect(self, ts: Tensor, k: int) -> None:
        """Check that the worker asks for the timestep planned for evaluation ``k``."""
        assert self.timesteps is not None
        want = float(self.timesteps[k]) if k < len(self.timesteps) else math.nan
        got = float(ts.reshape(-1)[0])
        if not math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-3):
            self._abandon()
            raise RuntimeError(
                f"ScoresolveScheduler: the solver asked for timestep {got} at evaluation {k}, planned {want}; "
                "its evaluation times depend on the model's values, which a scheduler cannot serve"
            )

    def _index_for(self, timestep: Any) -> int:
        """Position of ``timestep`` in ``timesteps``: the next one if it matches, else its first occurrence,
        else the last (diffusers' convention for a timestep not in the schedule)."""
        assert self.timesteps is not None
        ts = self.timesteps.detach().cpu().to(torch.float64)
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        close = torch.isclose(ts, torch.tensor(value, dtype=torch.float64), rtol=1e-6, atol=1e-4)
        if self._next < len(ts) and close[self._next]:
            return self._next
        hits = close.nonzero()
        return int(hits[0]) if len(hits) else len(ts) - 1

    def _tweedie(self, x: Tensor, model_output: Tensor, k: int) -> Tensor:
        assert self._eval_t is not None
        t = self._eval_t[k].to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        model = self._model(lambda x_, ts: model_output)
        return model.x0(x, t)

    def _abandon(self) -> None:
        if self._run is not None:
            self._run.abandon()
            self._run = None
        self._handed = None

    @staticmethod
    def _output(prev: Tensor, return_dict: bool) -> SchedulerOutput | tuple[Tensor]:
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __del__(self) -> None:
        try:
            self._abandon()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
