"""Python calls and file jumps before the first model evaluation of one ``ss.sample`` call.

    python benchmarks/setup_calls.py                 # solver="auto", a 10-evaluation budget
    python benchmarks/setup_calls.py --solver pc --steps 1000
    python benchmarks/setup_calls.py --sde ve                # or subvp, flow (default vp)

Counts, with ``sys.setprofile``, the Python-level calls made inside ``scoresolve`` from entering
``ss.sample`` until the score model is first called, the number of times consecutive calls change
file ("jumps") and the distinct files visited. Calibration is off (``calibrate=False``) so the count
is the sampler's own setup, not the calibration's.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings

import torch

import scoresolve as ss


class _Stop(Exception):
    pass


SDES = {"vp": ss.VPSDE, "ve": ss.VESDE, "subvp": ss.SubVPSDE, "flow": ss.RectifiedFlow}


def trace(solver: str = "auto", steps: int = 10, sde: str = "vp") -> list[str]:
    """The files of the scoresolve calls made from entering ``ss.sample`` until the model's first evaluation."""
    process = SDES[sde]()
    calls: list[str] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sys.setprofile(None)  # the first evaluation: what runs after it (cleanup of the aborted run) is not setup
        raise _Stop

    def prof(frame, event, arg):  # noqa: ANN001
        if event == "call" and "scoresolve" in frame.f_code.co_filename:
            calls.append(frame.f_code.co_filename)

    kw: dict = {"calibrate": False} if solver == "auto" else {}
    budget = "nfe" if solver == "auto" and "nfe" in inspect.signature(ss.sample).parameters else "steps"
    kw[budget] = steps
    x_T = torch.randn(4, 2)
    sys.setprofile(prof)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ss.sample(model, process, solver=solver, x_T=x_T, progress=False, **kw)
    except _Stop:
        pass
    finally:
        sys.setprofile(None)
    return calls


def count(calls: list[str]) -> tuple[int, int, list[str]]:
    """``(calls, file jumps, files)`` of a :func:`trace`."""
    jumps = sum(a != b for a, b in zip(calls, calls[1:], strict=False))
    return len(calls), jumps, sorted({c.split("scoresolve/", 1)[-1] for c in calls})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sde", choices=sorted(SDES), default="vp")
    args = ap.parse_args()
    calls = trace(args.solver, args.steps, args.sde)
    budget = "nfe" if args.solver == "auto" else "steps"
    for label, seq in (("", calls), (" (without the SDE's own methods, sde.py)", [c for c in calls
                                                                                  if not c.endswith("/sde.py")])):
        n, jumps, files = count(seq)
        print(f"solver={args.solver} {budget}={args.steps} sde={args.sde}{label}: {n} calls, {jumps} file jumps, "
              f"{len(files)} files before the first model evaluation")
    print("  files: " + ", ".join(count(calls)[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
