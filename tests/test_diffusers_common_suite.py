"""diffusers' own ``SchedulerCommonTest`` against ``ScoresolveScheduler``, given a diffusers source checkout.

The suite (``tests/schedulers/test_schedulers.py`` in the diffusers repository) is not in the pip package, so it
runs only when ``SCORESOLVE_DIFFUSERS_SRC`` names a checkout whose version matches the installed diffusers::

    SCORESOLVE_DIFFUSERS_SRC=~/src/diffusers python -m pytest -q tests/test_diffusers_common_suite.py

It is subclassed the way diffusers' per-scheduler tests do, once per solver (``dpmpp_2m``, ``unipc``, ``ipndm``,
DDPM's ancestral sampler). Without the variable the module is skipped with that reason; our own contract tests
(``tests/test_diffusers_scheduler.py``) check the same behaviours in the default run.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest

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
SchedulerCommonTest = importlib.import_module("diffusers_repo_tests.schedulers.test_schedulers").SchedulerCommonTest

CASES = {
    "dpmpp_2m": None,
    "unipc": None,
    "ipndm": None,
    "pc": {"predictor": "ancestral_sampling", "corrector": "none"},
}


def _case(solver: str, options: dict | None) -> type:
    def get_scheduler_config(self, **kwargs):
        config = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                  "solver": solver}
        if options:
            config["solver_options"] = dict(options)
        config.update(**kwargs)
        return config

    def test_configs(self):  # what their per-scheduler tests vary, through their check_over_configs
        for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            self.check_over_configs(beta_schedule=schedule)
        for prediction_type in ("epsilon", "v_prediction", "sample"):
            self.check_over_configs(prediction_type=prediction_type)
        for final in ("zero", "tweedie", "none"):
            self.check_over_configs(final=final)
        self.check_over_configs(timestep_mode="nearest")

    def test_steps(self):
        for n in (1, 5, 10, 50, 100, 1000):
            self.check_over_forward(num_inference_steps=n)

    name = f"TestDiffusersCommon_{solver}"
    return type(name, (SchedulerCommonTest,), {
        "scheduler_classes": (ScoresolveScheduler,),
        "forward_default_kwargs": (("num_inference_steps", 25),),
        "get_scheduler_config": get_scheduler_config,
        "test_configs": test_configs,
        "test_steps": test_steps,
    })


for _solver, _options in CASES.items():
    _cls = _case(_solver, _options)
    globals()[_cls.__name__] = _cls
