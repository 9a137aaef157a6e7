"""diffusers' own ``SchedulerCommonTest`` against ``ScoresolveScheduler``, given a diffusers source checkout.

The suite (``tests/schedulers/test_schedulers.py`` in the diffusers repository) is not in the pip package, so it
runs only when ``SCORESOLVE_DIFFUSERS_SRC`` names a diffusers source tree (a checkout at the installed version;
only its ``tests/`` folder is read)::

    SCORESOLVE_DIFFUSERS_SRC=~/src/diffusers python -m pytest -q tests/test_diffusers_common_suite.py

It is subclassed the way diffusers' per-scheduler tests do, once per solver (``dpmpp_2m``, ``unipc``, ``ipndm``,
DDPM's ancestral sampler). Without the variable the module is skipped with that reason; our own contract tests
(``tests/test_diffusers_scheduler.py``) check the same behaviours in the default run.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

SRC = os.environ.get("SCORESOLVE_DIFFUSERS_SRC")
if not SRC:
    pytest.skip("SCORESOLVE_DIFFUSERS_SRC is not set (a diffusers source checkout: its scheduler test suite is not "
                "in the pip package)", allow_module_level=True)
pytest.importorskip("diffusers")
ROOT = Path(SRC).expanduser() / "tests"
if not (ROOT / "schedulers" / "test_schedulers.py").is_file():
    pytest.fail(f"SCORESOLVE_DIFFUSERS_SRC={SRC!r}: no tests/schedulers/test_schedulers.py there", pytrace=False)

from scoresolve.adapters.diffusers import ScoresolveScheduler  # noqa: E402

# the checkout's tests/ as a package of its own name (ours is also called tests), so its relative imports work
_pkg = types.ModuleType("diffusers_repo_tests")
_pkg.__path__ = [str(ROOT)]
sys.modules.setdefault("diffusers_repo_tests", _pkg)
_COMMON = importlib.import_module("diffusers_repo_tests.schedulers.test_schedulers").SchedulerCommonTest

CASES = {
    "dpmpp_2m": None,
    "unipc": None,
    "ipndm": None,
    "pc": {"predictor": "ancestral_sampling", "corrector": "none"},
}


def _case(base: type, solver: str, options: dict | None) -> type:
    def get_scheduler_config(self, **kwargs):
        config = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                  "solver": solver}
        if options:
            config["solver_options"] = dict(options)
        config.update(**kwargs)
        return config

    def test_configs(self):  # what their per-scheduler tests vary, through their check_over_configs
        for time_step in (0, None):  # 0: the last step's Tweedie x0; None: the first timestep, a solver run
            for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
                self.check_over_configs(time_step=time_step, beta_schedule=schedule)
            for prediction_type in ("epsilon", "v_prediction", "sample"):
                self.check_over_configs(time_step=time_step, prediction_type=prediction_type)
            for final in ("zero", "tweedie", "none"):
                self.check_over_configs(time_step=time_step, final=final)
            self.check_over_configs(time_step=time_step, timestep_mode="nearest")

    def full_loop(self, scheduler):
        model, sample = self.dummy_model(), self.dummy_sample_deter
        scheduler.set_timesteps(10)
        generator = torch.manual_seed(0)
        for t in scheduler.timesteps:
            sample = scheduler.step(model(sample, t), t, sample, generator=generator).prev_sample
        return sample

    def test_full_loop(self):  # their per-scheduler full_loop, checked against a saved-and-loaded copy
        scheduler = ScoresolveScheduler(**self.get_scheduler_config())
        with tempfile.TemporaryDirectory() as tmp:
            scheduler.save_pretrained(tmp)
            loaded = ScoresolveScheduler.from_pretrained(tmp)
        out, again = self.full_loop(scheduler), self.full_loop(loaded)
        assert torch.isfinite(out).all()
        assert scheduler.nfe == len(scheduler.timesteps) and scheduler.result is not None
        assert torch.equal(out, again)

    def test_steps(self):
        for n in (1, 5, 10, 50, 100, 1000):
            self.check_over_forward(num_inference_steps=n)

    name = f"TestDiffusersCommon_{solver}"
    return type(name, (base,), {
        "scheduler_classes": (ScoresolveScheduler,),
        "forward_default_kwargs": (("num_inference_steps", 25),),
        "get_scheduler_config": get_scheduler_config,
        "test_configs": test_configs,
        "test_steps": test_steps,
        "full_loop": full_loop,
        "test_full_loop": test_full_loop,
    })


for _solver, _options in CASES.items():
    _cls = _case(_COMMON, _solver, _options)
    globals()[_cls.__name__] = _cls
del _cls, _COMMON  # pytest collects every TestCase subclass in the module's namespace, whatever its name
