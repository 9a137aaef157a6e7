"""Sampling across processes and machines with PyTorch's own distributed runtime (docs/distributed.md).

Launch with ``torchrun`` (gloo on CPUs, NCCL on GPUs); every process runs the same script::

    ssd.init()                                   # reads torchrun's RANK / WORLD_SIZE / MASTER_ADDR
    x = ssd.sample_distributed(model, n=50_000, out_dir="shards/", solver="pc", steps=500, seed=0)

Sample ``i`` has seed ``seed + i``; shards of ``shard_size`` consecutive seeds go to rank ``k mod world_size``
and are drawn in one :func:`scoresolve.sample` call with ``seeds=``, so the samples are the same bit for bit on
any number of processes. Shards are written atomically, skipped when resumed, tied to ``config.json`` (another
configuration is refused) and merged by rank 0, which checks that every seed appears once.
:func:`gather_moments` all-reduces feature sums (float64) for FID statistics over all ranks.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._util import atomic_write, check_int, to_json
from ._version import __version__
from .digest import content_digest, update_digest
from .io.checkpoint import CheckpointError, sweep_temporaries
from .models import ScoreModel
from .progress import Progress
from .sampling import sample

__all__ = [
    "init",
    "shutdown",
    "rank_and_world",
    "ShardConfigError",
    "shard_ranges",
    "sample_distributed",
    "merge_shards",
    "gather_moments",
    "DistributedResult",
]

CONFIG_NAME = "config.json"
MERGED_NAME = "merged.safetensors"


class ShardConfigError(ValueError):
    """The shard folder holds a run with a different configuration (nothing is overwritten)."""


def init(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) if it is not initialised yet; returns ``(rank, world_size)``.

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise. Without ``WORLD_SIZE`` in
    the environment (a plain ``python script.py``) nothing is initialised and ``(0, 1)`` is returned.
    On CUDA each process uses the GPU ``LOCAL_RANK``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    # a process that exits with a live gloo group can abort in the group's threads ("terminate called
    # without an active exception"): tear the group down at exit unless the caller did
    atexit.register(shutdown)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Wait for every rank, then destroy the process group (a no-op when none is initialised).

    :func:`init` registers this to run at interpreter exit; call it earlier to free the group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _dist_on() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if _dist_on() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _barrier() -> None:
    if _dist_on():
        import torch.distributed as dist

        dist.barrier()


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _dist_on():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` offsets of the shards of ``n`` samples (the last may be shorter)."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def model_fingerprint(model: Any) -> str:
    """The identity of ``model`` from its **content**: its class and metadata, and a SHA-256 of every
    weight it computes with — the parameters and buffers of its networks and any tensor held by its
    wrappers, closures, bound methods or attributes (so two ``from_diffusers`` networks, or two
    checkpoints saved at the same path, differ) — together with the conversion (parameterisation,
    the functions that wrap the network).

    A plain callable holding no tensor (e.g. ``lambda x, t: -x``) has no content to fingerprint: its
    fingerprint ends in ``/no-weights`` and :func:`sample_distributed` refuses to resume such a run
    without an explicit ``model_id=``.
    """
    net = model.fn if isinstance(model, ScoreModel) else model
    parts = [type(net).__name__]
    if isinstance(model, ScoreModel):
        parts += [model.parameterization, str(model.sample_shape), str(model.metadata.get("name", ""))]
        if getattr(model, "data_fit", None) is not None:  # the moments change what solver="auto" runs
            parts.append("moments:" + model.data_fit.digest)
        digest, weights = content_digest((model.fn, model.time_fn, model.parameterization))
    else:
        digest, weights = content_digest(model)
    parts.append(digest[:32] if weights else "no-weights")
    return "/".join(parts)


NO_WEIGHTS = "/no-weights"


@dataclass
class DistributedResult:
    """What :func:`sample_distributed` did on this rank (``samples`` only on rank 0 when merging)."""

    samples: Tensor | None
    seeds: Tensor | None
    shards_done: list[int]
    shards_skipped: list[int]
    nfe: int
    seconds: float
    out_dir: Path


def _shard_digest(samples: Tensor, seeds: Tensor, config_json: str, shard: str) -> str:
    """SHA-256 of a shard's samples, seeds, configuration and index (stored in its metadata)."""
    h = hashlib.sha256()
    for t in (samples, seeds):
        update_digest(h, t)
    h.update(config_json.encode())
    h.update(shard.encode())
    return h.hexdigest()


def _write_shard(path: Path, samples: Tensor, seeds: Tensor, config_json: str, shard: int) -> None:
    from safetensors.torch import save_file

    samples, seeds = samples.detach().cpu().contiguous(), seeds.to(torch.int64).contiguous()
    digest = _shard_digest(samples, seeds, config_json, str(shard))
    with atomic_write(path) as tmp:
        save_file({"samples": samples, "seeds": seeds}, tmp,
                  metadata={"config": config_json, "shard": str(shard), "sha256": digest})


def _read_shard(path: Path) -> tuple[Tensor, Tensor, dict[str, str]] | None:
    """The shard's tensors and metadata, or ``None`` if it cannot be read (then it is redone)."""
    from safetensors import safe_open

    sweep_temporaries(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return f.get_tensor("samples"), f.get_tensor("seeds"), meta
    except Exception:  # noqa: BLE001 - a damaged shard is resampled, never trusted
        return None


def _shard_intact(got: tuple[Tensor, Tensor, dict[str, str]]) -> bool:
    """Whether a shard's content matches the SHA-256 in its metadata (a flipped byte or a forged shard does not)."""
    samples, seeds, meta = got
    return meta.get("sha256") == _shard_digest(samples, seeds, meta.get("config", ""), meta.get("shard", ""))


def _check_config(out_dir: Path, config: dict[str, Any]) -> None:
    """On rank 0: create the folder and its config, or check that the existing one is the same."""
    path = out_dir / CONFIG_NAME
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ShardConfigError(f"{path} cannot be read ({e}); use a new folder") from None
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            details = "; ".join(f"{k}: folder has {old.get(k)!r}, this run {config.get(k)!r}" for k in diff)
            raise ShardConfigError(
                f"the shard folder {out_dir} holds a run with a different configuration ({details}). "
                "Refusing to mix them: use another out_dir, or delete the folder to start over."
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    stray = [p.name for p in out_dir.glob("shard_*.safetensors")]
    if stray:
        raise ShardConfigError(f"{out_dir} holds shards but no {CONFIG_NAME}; refusing to mix them with this run")
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def sample_distributed(
    model: Any,
    sde: Any = None,
    *,
    n: int,
    out_dir: str | os.PathLike[str],
    solver: str = "pc",
    steps: int | None = None,
    seed: int = 0,
    shard_size: int = 256,
    shape: Sequence[int] | None = None,
    eps: float | None = None,
    grid: str | None = None,
    denoise: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    model_id: str | None = None,
    merge: bool = True,
    progress: bool | None = None,
    on_shard: Callable[[int], None] | None = None,
    **solver_options: Any,
) -> DistributedResult:
    """Draw ``n`` samples with seeds ``seed … seed + n - 1`` across the ranks of the process group,
    as resumable shards in ``out_dir`` (see the module docstring).

    Args:
        model, sde, solver, steps, eps, grid, denoise, solver_options: as :func:`scoresolve.sample`.
        n: total number of samples; must be at least the world size.
        out_dir: the shard folder (created; must be shared by all ranks, e.g. a network filesystem
            across machines).
        seed: seed of the first sample.
        shard_size: samples per shard (one :func:`scoresolve.sample` call each).
        shape: one sample's shape, when the model does not carry ``sample_shape``.
        device: default ``cuda:LOCAL_RANK`` under NCCL, else the model's device / CPU.
        dtype: precision of the state (part of the configuration).
        model_id: a name for the model, recorded in the configuration beside :func:`model_fingerprint`
            (which is always recorded). Required to resume a run of a plain callable holding no
            weights, whose identity cannot be read from its content.
        merge: rank 0 merges the shards at the end (``merged.safetensors``) and returns them.
        progress: a tqdm bar over this rank's shards and one over the steps of each shard (``None``: shown
            unless ``SCORESOLVE_PROGRESS=0``; :mod:`scoresolve.progress`).
        on_shard: called with the shard index after each shard is written (e.g. for logging).

    Returns:
        A :class:`DistributedResult`; ``samples``/``seeds`` are the merged ones on rank 0 when ``merge``.

    Raises:
        ValueError: ``n`` smaller than the world size, bad ``shard_size``.
        ShardConfigError: ``out_dir`` belongs to a run with a different configuration (another
            model's weights included), or resuming a plain callable without ``model_id=``.
    """
    rank, world = rank_and_world()
    check_int(n, "n")
    if world > n:
        raise ValueError(f"the world size ({world} processes) is larger than the number of samples n={n}")
    check_int(shard_size, "shard_size")
    if sde is None:
        sde = getattr(model, "sde", None)
        if sde is None:
            raise ValueError("sde is required (the model does not carry one)")
    sample_shape = tuple(shape) if shape is not None else getattr(model, "sample_shape", None)
    if sample_shape is None:
        raise ValueError("shape= (one sample's shape) is required when the model has no sample_shape")
    if device is None and _comm_device().type == "cuda":
        device = _comm_device()
    out = Path(out_dir)
    fingerprint = model_fingerprint(model)
    config = to_json({
        "model": fingerprint,
        "model_id": model_id,
        "sde": repr(sde),
        "solver": solver,
        "steps": steps,
        "solver_options": dict(sorted(solver_options.items())),
        "seed": seed,
        "n": n,
        "shard_size": shard_size,
        "sample_shape": list(sample_shape),
        "eps": eps,
        "grid": grid,
        "denoise": denoise,
        "dtype": str(dtype),
        "scoresolve": __version__,
    })
    config_json = json.dumps(config, sort_keys=True)

    # rank 0 checks/creates the folder; every rank gets the same verdict (no rank hangs on an error)
    err = None
    if rank == 0:
        try:
            if model_id is None and fingerprint.endswith(NO_WEIGHTS) and (out / CONFIG_NAME).exists():
                raise ShardConfigError(
                    f"{out} holds a run, and this model is a plain callable with no weights to fingerprint "
                    f"({fingerprint}): its identity cannot be checked, so resuming could mix two models' samples. "
                    "Pass model_id= (a name that changes whenever the model does) or use another out_dir."
                )
            _check_config(out, config)
        except (ShardConfigError, OSError) as e:
            err = (type(e).__name__, str(e))
    err = _broadcast(err)
    if err is not None:
        raise (ShardConfigError if err[0] == "ShardConfigError" else OSError)(err[1])

    ranges = shard_ranges(n, shard_size)
    mine = [k for k in range(len(ranges)) if k % world == rank]
    done, skipped, nfe, t0 = [], [], 0, time.perf_counter()
    bar = Progress(len(mine), f"rank {rank} shards", progress=progress, unit="shard")
    for k in mine:
        path = out / f"shard_{k:06d}.safetensors"
        lo, hi = ranges[k]
        want = torch.arange(seed + lo, seed + hi, dtype=torch.int64)
        if path.exists():
            got = _read_shard(path)
            if (got is not None and got[2].get("config") == config_json and torch.equal(got[1], want)
                    and _shard_intact(got)):
                skipped.append(k)
                bar.update(1)
                continue
        res = sample(
            model, sde, solver=solver, steps=steps, shape=(hi - lo, *sample_shape), seeds=want.tolist(), eps=eps,
            grid=grid, final=None if denoise is None else ("tweedie" if denoise else "none"), device=device,
            dtype=dtype, progress=progress, return_result=True,
            **solver_options,
        )
        _write_shard(path, res.samples, want, config_json, k)
        nfe += res.nfe
        done.append(k)
        bar.update(1)
        if on_shard is not None:
            on_shard(k)
    bar.close(evaluations=nfe, shards_sampled=len(done))
    _barrier()
    samples = seeds = None
    if merge and rank == 0:
        samples, seeds = merge_shards(out)
    _barrier()
    return DistributedResult(samples, seeds, done, skipped, nfe, time.perf_counter() - t0, out)


def merge_shards(out_dir: str | os.PathLike[str], write: bool = True) -> tuple[Tensor, Tensor]:
    """Concatenate the shards of ``out_dir`` in seed order, checking that every seed of the run is
    present exactly once; write ``merged.safetensors`` (atomically) when ``write``.

    Raises:
        ShardConfigError: missing config, a shard from another configuration, gaps or duplicates.
        CheckpointError: a shard whose content does not match the SHA-256 in its metadata (a flipped
            byte, a truncated write that still parses, or a forged shard), naming the shard.
    """
    out = Path(out_dir)
    cfg_path = out / CONFIG_NAME
    if not cfg_path.exists():
        raise ShardConfigError(f"{out} has no {CONFIG_NAME}: not a shard folder")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    config_json = json.dumps(config, sort_keys=True)
    n, seed, shard_size = int(config["n"]), int(config["seed"]), int(config["shard_size"])
    ranges = shard_ranges(n, shard_size)
    xs, ss = [], []
    missing = []
    for k in range(len(ranges)):
        got = _read_shard(out / f"shard_{k:06d}.safetensors")
        if got is None:
            missing.append(k)
            continue
        if got[2].get("config") != config_json:
            raise ShardConfigError(f"shard {k} in {out} was written by a different configuration")
        if not _shard_intact(got):
            raise CheckpointError(
                f"shard {k} ({out / f'shard_{k:06d}.safetensors'}) fails its integrity check: its content does not "
                "match the SHA-256 in its metadata (corrupted or altered). Delete it and run the sampling again."
            )
        xs.append(got[0])
        ss.append(got[1])
    if missing:
        raise ShardConfigError(f"{out}: shards {missing} are missing or unreadable; run the sampling again to resume")
    samples, seeds = torch.cat(xs), torch.cat(ss)
    expected = torch.arange(seed, seed + n, dtype=torch.int64)
    if seeds.numel() != n or not torch.equal(seeds, expected):
        dup = int(seeds.numel() - torch.unique(seeds).numel())
        raise ShardConfigError(f"{out}: seeds do not cover {seed}..{seed + n - 1} exactly once ({dup} duplicates)")
    if write:
        from safetensors.torch import save_file

        samples = samples.contiguous()
        digest = _shard_digest(samples, seeds, config_json, "merged")
        with atomic_write(out / MERGED_NAME) as tmp:
            save_file({"samples": samples, "seeds": seeds}, tmp,
                      metadata={"config": config_json, "shard": "merged", "sha256": digest})
    return samples, seeds


def gather_moments(features: Tensor) -> tuple[Tensor, Tensor, int]:
    r"""Mean ``(D,)``, unbiased covariance ``(D, D)`` and count of features spread over the ranks.

    Each rank passes its own ``(n_r, D)`` features; the sums :math:`\sum f`, :math:`\sum f f^\top` and
    :math:`n` are all-reduced in float64 (on the GPU under NCCL), so the result equals the moments of
    the concatenated features up to float64 rounding — the statistics FID needs, without moving the
    features. Without a process group this is the local computation.
    """
    f = features.reshape(features.shape[0], -1).to(torch.float64)
    dev = _comm_device() if _dist_on() else f.device
    f = f.to(dev)
    # centre on a shared shift (rank 0's first row) for accuracy of the second moment
    shift = f[0].clone() if f.shape[0] else torch.zeros(f.shape[1], dtype=torch.float64, device=dev)
    if _dist_on():
        import torch.distributed as dist

        dist.broadcast(shift, src=0)
    c = f - shift
    s1 = c.sum(0)
    s2 = c.T @ c
    cnt = torch.tensor([float(f.shape[0])], dtype=torch.float64, device=dev)
    if _dist_on():
        import torch.distributed as dist

        for t in (s1, s2, cnt):
            dist.all_reduce(t)
    total = int(cnt.item())
    if total < 2:
        raise ValueError(f"need at least 2 feature vectors in total, got {total}")
    mean_c = s1 / total
    cov = (s2 - total * torch.outer(mean_c, mean_c)) / (total - 1)
    return (mean_c + shift).cpu(), (0.5 * (cov + cov.T)).cpu(), total


def expected_shards(n: int, shard_size: int) -> int:
    """Number of shards of a run."""
    return math.ceil(n / shard_size)
