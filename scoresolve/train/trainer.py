r"""A small, exactly resumable trainer for score models (Song et al. 2021, arXiv:2011.13456, App. D).

Optimisation as in the paper's configurations: Adam (lr 2e-4, β=(0.9, 0.999), eps 1e-8) with a linear
learning-rate warm-up over ``warmup`` steps, gradient-norm clipping at ``grad_clip``, and an EMA of the
weights (decay 0.999/0.9999, with the :math:`\min(d, (1+n)/(10+n))` ramp of the released code so
short runs are not dominated by the initialisation). Mixed precision (bfloat16 autocast) on CUDA only.

Exact resumption: every random draw of a step (batch indices, times, noise) comes from one
``torch.Generator`` owned by the trainer, and a checkpoint stores the model, the EMA, the optimiser,
the step, that generator's state and the global torch RNG states (dropout). Training ``n`` steps, or
``k`` steps, saving, reloading into a fresh trainer and training to ``n``, gives bit-identical weights
on the same device with deterministic kernels. Checkpoints are written atomically (temporary file +
``os.replace``) and are readable with ``torch.load(weights_only=True)`` and :func:`scoresolve.io.load`
(which picks the EMA weights).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._util import one_of
from ..io.checkpoint import CheckpointError, atomic_write, make_config, save, torch_load_safe
from ..io.image import save_grid
from ..models import ScoreModel
from ..progress import Progress
from ..sampling import sample
from ..sde import SDE
from .data import batch as get_batch
from .losses import ddpm_loss, dsm_loss, flow_matching_loss, sliced_score_matching_loss

__all__ = ["Trainer", "TrainConfig", "LOSSES"]

LOSSES = ("dsm", "ddpm", "ssm", "cfm")
_CKPT_FORMAT = "scoresolve-train"


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (recorded in every checkpoint).

    Attributes:
        parameterization: what the network predicts (``eps`` is the robust default).
        loss: ``"dsm"`` (continuous denoising score matching), ``"ddpm"`` (discrete ε-loss, VP only),
            ``"ssm"`` (sliced score matching, small problems) or ``"cfm"`` (conditional flow matching of a
            ``velocity`` network, usually with ``RectifiedFlow``).
        weighting: ``"sigma2"`` (λ = σ², the paper's) or ``"likelihood"`` (λ = g²), for ``dsm``.
        reduce: ``"mean"`` or ``"sum"`` over data dimensions.
        batch_size, lr, warmup, grad_clip, ema_decay, weight_decay: optimisation (paper: 128, 2e-4,
            5000, 1.0, 0.9999 (0.999 for VE), 0).
        eps: smallest training time.
        seed: seeds the trainer's generator (batches, times, noise) and the initial RNG state.
        amp: bfloat16 autocast (CUDA only; ``None``: on for CUDA).
        log_every: record the mean loss every this many steps.
    """

    parameterization: str = "eps"
    loss: str = "dsm"
    weighting: str = "sigma2"
    reduce: str = "mean"
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    weight_decay: float = 0.0
    eps: float = 1e-5
    seed: int = 0
    amp: bool | None = None
    log_every: int = 50
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Train ``net`` as a score model of ``sde`` on ``data``.

    Args:
        net: a network ``net(x, t)`` with ``arch_name``/``config`` (e.g. :class:`~scoresolve.train.nets.UNet`)
            so that it can be saved in scoresolve's format.
        sde: the forward SDE.
        data: a tensor ``(N, *sample_shape)`` or a map-style ``Dataset`` (items tensors or ``(x, y)``).
        config: a :class:`TrainConfig`; keyword arguments override its fields.
        data_range: recorded in saved models (e.g. ``(-1, 1)``).
        device: where to train (default: the network's device).

    Example::

        tr = Trainer(MLP((2,)), ss.VPSDE(), x, batch_size=256, warmup=100)
        tr.train(2000)
        model = tr.score_model()          # EMA weights, a ScoreModel
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        data: Any,
        config: TrainConfig | None = None,
        *,
        data_range: tuple[float, float] | None = None,
        device: torch.device | str | None = None,
        **overrides: Any,
    ) -> None:
        cfg = copy.deepcopy(config) if config is not None else TrainConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"Trainer: unknown option {k!r}; options: {', '.join(asdict(cfg))}")
            setattr(cfg, k, v)
        one_of(cfg.loss, LOSSES, "Trainer: loss")
        if cfg.loss == "ddpm" and cfg.parameterization != "eps":
            raise ValueError("Trainer: loss='ddpm' trains an eps network (parameterization='eps')")
        if cfg.loss == "cfm" and cfg.parameterization != "velocity":
            raise ValueError("Trainer: loss='cfm' trains a flow-matching network (parameterization='velocity')")
        if cfg.batch_size < 1 or cfg.warmup < 0 or cfg.lr <= 0 or not 0 <= cfg.ema_decay < 1:
            raise ValueError(f"Trainer: bad optimisation settings {cfg}")
        if len(data) < 1:
            raise ValueError("Trainer: data is empty")
        self.cfg, self.sde, self.data, self.data_range = cfg, sde, data, data_range
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net = net.to(self.device)
        self.ema = copy.deepcopy(self.net).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(
            self.net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
        )
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.losses: list[float] = []  # mean loss over each log_every window
        self._window: list[float] = []
        self.amp = (self.device.type == "cuda") if cfg.amp is None else bool(cfg.amp and self.device.type == "cuda")
        first = get_batch(data, torch.zeros(1, dtype=torch.long))
        self.sample_shape = tuple(first.shape[1:])

    # --- one step -----------------------------------------------------------------------------
    def loss(self, x0: Tensor) -> Tensor:
        """The configured loss on a batch (randomness from the trainer's generator)."""
        c = self.cfg
        if c.loss == "dsm":
            return dsm_loss(self.net, self.sde, x0, parameterization=c.parameterization, weighting=c.weighting,
                            reduce=c.reduce, eps=c.eps, generator=self.gen)
        if c.loss == "ddpm":
            return ddpm_loss(self.net, self.sde, x0, reduce=c.reduce, generator=self.gen)
        if c.loss == "cfm":
            return flow_matching_loss(self.net, self.sde, x0, reduce=c.reduce, eps=c.eps, generator=self.gen)
        return sliced_score_matching_loss(self.net, self.sde, x0, parameterization=c.parameterization,
                                          reduce=c.reduce, eps=c.eps, generator=self.gen)

    def train_step(self) -> float:
        """One optimisation step; returns the loss."""
        c = self.cfg
        self.net.train()
        idx = torch.randint(len(self.data), (c.batch_size,), generator=self.gen)
        x0 = get_batch(self.data, idx).to(self.device, torch.float32)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss(x0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        n = self.step + 1
        lr = c.lr * min(1.0, n / c.warmup) if c.warmup > 0 else c.lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        self.opt.step()
        self._update_ema(n)
        self.step = n
        value = float(loss.detach())
        self._window.append(value)
        if len(self._window) >= c.log_every:
            self.losses.append(sum(self._window) / len(self._window))
            self._window = []
        return value

    @torch.no_grad()
    def _update_ema(self, n: int) -> None:
        d = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for pe, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
            pe.lerp_(p.detach(), 1 - d)
        for be, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            be.copy_(b)

    # --- the loop -----------------------------------------------------------------------------
    def train(
        self,
        steps: int,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 0,
        sample_every: int = 0,
        sample_fn: Callable[[Trainer], None] | None = None,
        progress: bool | None = None,
        stop_at: int | None = None,
    ) -> list[float]:
        """Train until :attr:`step` reaches ``steps`` (so a resumed trainer continues where it stopped).

        Args:
            steps: the total number of steps.
            checkpoint: path of the resumable checkpoint, written every ``checkpoint_every`` steps
                and at the end.
            sample_every, sample_fn: call ``sample_fn(self)`` every this many steps (e.g.
                :func:`save_sample_grid`).
            progress: tqdm bar with the loss, and a loss line every 5 % of the run when stderr is not a terminal
                (``None``: shown unless ``SCORESOLVE_PROGRESS=0``; :mod:`scoresolve.progress`).
            stop_at: stop early at this step (simulates an interruption in tests).

        Returns:
            The logged window-mean losses so far.
        """
        bar = Progress(steps, "train", progress=progress, initial=self.step)
        end = steps if stop_at is None else min(steps, stop_at)
        every = max(1, steps // 20)
        try:
            while self.step < end:
                loss = self.train_step()
                bar.update(1, **({"loss": f"{loss:.4f}"} if self.step % 10 == 0 else {}))
                if not bar.interactive and self.step % every == 0:
                    bar.write(f"train: step {self.step}/{steps}, loss {loss:.4f}")
                if checkpoint is not None and checkpoint_every and self.step % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint)
                if sample_fn is not None and sample_every and self.step % sample_every == 0:
                    sample_fn(self)
        finally:
            bar.close(steps=self.step, **({"loss": f"{self.losses[-1]:.4f}"} if self.losses else {}))
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return self.losses

    # --- models and checkpoints ---------------------------------------------------------------
    def score_model(self, ema: bool = True) -> ScoreModel:
        """The trained model (EMA weights by default) as a :class:`~scoresolve.ScoreModel`."""
        return ScoreModel(self.ema if ema else self.net, self.sde, sample_shape=self.sample_shape,
                          parameterization=self.cfg.parameterization, data_range=self.data_range)

    def save_model(self, path: str | os.PathLike[str], ema: bool = True, **kwargs: Any) -> Path:
        """Save the model in scoresolve's format (see :func:`scoresolve.io.save`)."""
        extra = {"step": self.step, "train": self._train_config(), **kwargs.pop("extra", {})}
        return save(self.score_model(ema), path, weights="ema" if ema else "model", extra=extra, **kwargs)

    def _train_config(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.cfg)))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (plain tensors and containers: ``weights_only``-safe)."""
        cfg = make_config(self.net, self.sde, parameterization=self.cfg.parameterization,
                          sample_shape=self.sample_shape, data_range=self.data_range, weights="ema",
                          extra={"step": self.step, "train": self._train_config()})
        rng: dict[str, Any] = {"trainer": self.gen.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": _CKPT_FORMAT,
            "config": json.dumps(cfg),
            "train_config": json.dumps(self._train_config()),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "rng": rng,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "window": torch.tensor(self._window, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the network architecture must match)."""
        if state.get("format") != _CKPT_FORMAT:
            raise CheckpointError("not a scoresolve training checkpoint (format != 'scoresolve-train')")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"the checkpoint's step must be an integer >= 0, got {step!r}")
        try:
            theirs = json.loads(state["train_config"])
            their_model = json.loads(state["config"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"the checkpoint's configuration cannot be read ({e})") from e
        if not isinstance(theirs, dict) or not isinstance(their_model, dict):
            raise CheckpointError("the checkpoint's configuration is malformed")
        # every setting that shapes the run: optimiser and loss (train config), SDE and its parameters,
        # network architecture and size, parameterisation, data range and shape (model config)
        mine_model = make_config(self.net, self.sde, parameterization=self.cfg.parameterization,
                                 sample_shape=self.sample_shape, data_range=self.data_range, weights="ema")
        diff = [f"{k}: checkpoint {theirs.get(k)!r}, now {v!r}" for k, v in self._train_config().items()
                if k != "log_every" and theirs.get(k) != v]
        diff += [f"{k}: checkpoint {their_model.get(k)!r}, now {v!r}" for k, v in mine_model.items()
                 if k not in ("extra", "weights", "format_version") and their_model.get(k) != v]
        if diff:
            raise CheckpointError(
                "refusing to resume: the checkpoint was trained with other settings (" + "; ".join(diff) + "). "
                "Use another output folder, or restore the settings."
            )
        try:
            self.net.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except RuntimeError as e:
            raise CheckpointError(f"the checkpoint's weights do not match this network: {e}") from e
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.gen.set_state(state["rng"]["trainer"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.losses = [float(v) for v in state["losses"]]
        self._window = [float(v) for v in state["window"]]

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state_dict` atomically (the previous checkpoint survives any failure)."""
        p = Path(path)
        state = self.state_dict()
        with atomic_write(p) as tmp:
            torch.save(state, tmp)
        return p

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Resume from a checkpoint written by :meth:`save_checkpoint` (``weights_only`` loading)."""
        state = torch_load_safe(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a training checkpoint")
        self.load_state_dict(state)


def save_sample_grid(
    trainer: Trainer, path: str | os.PathLike[str] | None = None, n: int = 64, steps: int = 100, seed: int = 0
) -> Tensor:
    """Sample ``n`` images from the EMA model (PC sampler, ``steps`` steps, its own generator: the
    training RNG is untouched) and write a PNG grid to ``path`` (default ``samples_<step>.png``)."""
    model = trainer.score_model()
    x = sample(model, trainer.sde, "pc", steps, batch_size=n, generator=torch.Generator().manual_seed(seed),
               device=trainer.device, progress=False)
    if x.ndim == 4:
        save_grid(x, path or f"samples_{trainer.step:07d}.png", data_range=trainer.data_range or (-1, 1), scale=4)
    return x


