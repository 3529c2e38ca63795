"""Training loops for robust models: standard, Gaussian-noise augmentation, PGD adversarial training,
FGSM with random start, and TRADES.

They exist to build zoo entries and to fit defenses, so they favour being exact, small and reproducible
over every training trick:

* ``standard`` -- cross-entropy on clean inputs (optionally at a temperature T, for defensive
  distillation: the loss is ``CE(logits / T, target)``, and targets may be soft labels).
* ``noise`` -- cross-entropy on ``x + sigma * N(0, I)``, not clipped: the base classifier of randomized
  smoothing must be trained on the very noise it is smoothed with (Cohen et al. 2019).
* ``pgd`` -- Madry et al. (ICLR 2018): every step trains on the last iterate of a PGD attack with a
  uniform random start in the eps-ball, ``steps`` steps of size ``step_size`` (default ``2.5 * eps / steps``)
  on the cross-entropy. MNIST in the paper: eps 0.3, 40 steps of 0.01; CIFAR-10: 8/255, 7 steps of 2/255.
* ``fgsm`` -- "Fast is better than free" (Wong, Rice & Kolter, ICLR 2020): one FGSM step of size
  ``step_size`` (default ``1.25 * eps``) from a uniform random start, projected back into the ball.
  Use it with ``lr_schedule="cyclic"`` as in the paper.
* ``pubdef`` -- Sitawarin et al. (ICLR 2024): clean images plus transfer examples made once by PGD (``eps``,
  ``steps``, ``step_size``) on each of the ``surrogates``, weighted by the defender's mixed strategy
  (:mod:`robustkit.pubdef`).
* ``trades`` -- Zhang et al. (ICML 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` where ``x'`` maximises
  the KL term by PGD from ``x + 0.001 * N(0, I)``; ``beta`` default 6 as in the paper.

Adversarial examples are generated with the model in eval mode (BatchNorm statistics are not polluted by
attack iterates; dropout is off), as in the TRADES reference code, and the update is made in train mode.

Reproducibility: one seeded CPU ``torch.Generator`` draws the data order, random starts and noise (so the
same seed gives the same draws on every device), and the global RNG is seeded inside a forked RNG state
for anything a model draws itself (dropout), so ``train`` leaves the caller's random state untouched.
On CPU two runs with the same seed give bit-identical weights.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import ConfigError
from robustkit.pgd_loop import ascend, input_gradient
from robustkit.predict import eval_mode, model_device, predict
from robustkit.pubdef import DynamicWeights, check_surrogates, stacked_transfer_inputs
from robustkit.steps import normal_noise, random_start
from robustkit.threat import project
from robustkit.train_config import TRADES_INIT_STD, TrainConfig, TrainResult, make_config


def _check_data(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> None:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() < 2:
        raise ConfigError("training data: x must be a floating-point tensor of images (N, C, H, W) in [0, 1]")
    if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
        raise ConfigError(f"training data: y must be a tensor with one target per image ({x.shape[0]})")
    if x.shape[0] == 0:
        raise ConfigError("training data: no examples")
    if y.dtype.is_floating_point:
        if y.dim() != 2:
            raise ConfigError("training data: soft targets must have shape (N, num_classes)")
        if cfg.method not in ("standard", "noise"):
            raise ConfigError(f"training data: soft targets work with methods standard and noise, not {cfg.method}")
    elif y.dim() != 1:
        raise ConfigError("training data: integer labels must have shape (N,)")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("training: the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.resolved_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.resolved_lr, weight_decay=cfg.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_schedule == "cosine":
        factor: Callable[[int], float] = lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps))
    elif cfg.lr_schedule == "cyclic":  # Wong et al. 2020: linear 0 -> lr over the first 2/5, then -> 0
        factor = lambda t: float(np.interp(t, [0, total_steps * 2 / 5, total_steps], [0.0, 1.0, 0.0]))
    elif cfg.lr_schedule == "onecycle":  # Smith & Topin 2019, torch's implementation (it also cycles momentum)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.resolved_lr, total_steps=total_steps)
    else:
        factor = lambda t: 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.cross_entropy(logits / temperature, target)


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by -1, 0 or +1 pixel along each axis (zero padding), offsets drawn from ``generator``.

    Why: small images written by other hands (the digits test split) sit a pixel off; this cheap augmentation
    buys about one point of clean accuracy there.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 3, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
                 step_size: float, generator: torch.Generator | None, start: bool = True) -> torch.Tensor:
    """Madry et al.'s training attack: PGD on the cross-entropy, last iterate (no best-iterate search).

    It runs on the one PGD loop (:func:`robustkit.pgd_loop.ascend`), as the ``pgd`` attack does.
    """
    eps_t = torch.full((x.shape[0],), float(eps), device=x.device)
    x_start = random_start(x, eps_t, norm, generator) if start else x.clone()
    ce = input_gradient(model, lambda logits: F.cross_entropy(logits, y, reduction="none"))
    return ascend(x, x_start, eps_t, torch.full_like(eps_t, float(step_size)), norm, ce, steps=steps)


def trades_examples(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, steps: int, step_size: float,
                    generator: torch.Generator | None) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')) from x + 0.001 * N(0, I)."""
    eps_t = torch.full((x.shape[0],), float(eps), device=x.device)
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), dim=1)
    x_start = project(x, x + TRADES_INIT_STD * normal_noise(x.shape, x, generator), eps_t, norm)
    kl = input_gradient(model, lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_clean,
                                                        reduction="none").flatten(1).sum(dim=1))
    return ascend(x, x_start, eps_t, torch.full_like(eps_t, float(step_size)), norm, kl, steps=steps)


def _batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig,
                generator: torch.Generator, eps_scale: float = 1.0,
                pubdef: DynamicWeights | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of the inputs trained on) for one batch, by method; ``eps_scale`` < 1 during warm-up."""
    if pubdef is not None:  # xb: (B, 1 + K, C, H, W), clean then each surrogate's transfer examples
        return pubdef.loss(model, xb, yb)
    if cfg.augment == "shift":
        xb = random_shift(xb, generator)
    if cfg.method in ("pgd", "fgsm"):
        with eval_mode(model):
            steps = cfg.resolved_steps if cfg.method == "pgd" else 1
            inputs = pgd_examples(model, xb, yb, eps=float(cfg.eps) * eps_scale, norm=cfg.norm, steps=steps,
                                  step_size=cfg.resolved_step_size * eps_scale, generator=generator)
    elif cfg.method == "trades":
        with eval_mode(model):
            x_adv = trades_examples(model, xb, eps=float(cfg.eps) * eps_scale, norm=cfg.norm,
                                    steps=cfg.resolved_steps, step_size=cfg.resolved_step_size * eps_scale,
                                    generator=generator)
        logits = model(xb)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, yb) + cfg.beta * robust, logits
    elif cfg.method == "noise":
        noise = torch.randn(xb.shape, generator=generator, device=generator.device)
        inputs = xb + float(cfg.sigma) * noise.to(xb.device, xb.dtype)
    else:
        inputs = xb
    logits = model(inputs)
    return _loss(logits, yb, cfg.temperature), logits


def _eps_scale(cfg: TrainConfig, epoch: int, batch: int, batches_per_epoch: int) -> float:
    """Linear eps ramp over the first ``eps_warmup`` epochs, per batch.

    Why: PGD training of a small CNN at the full MNIST eps 0.3 from random weights often collapses to a constant
    prediction (we saw 11% on 5000 images); ramping eps from 0 is the usual remedy (e.g. Gowal et al. 2018).
    """
    if not cfg.eps_warmup:
        return 1.0
    return min(1.0, (epoch * batches_per_epoch + batch + 1) / (cfg.eps_warmup * batches_per_epoch))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig | None = None, *,
          on_epoch: Callable[[dict[str, float]], None] | None = None, surrogates: Sequence[nn.Module] | None = None,
          **options: Any) -> TrainResult:
    """Train ``model`` in place on ``(x, y)`` with ``config`` (or keyword options of :class:`TrainConfig`).

    ``x``: float images (N, C, H, W) in [0, 1] (normalization belongs inside the model); ``y``: int64 labels,
    or soft targets (N, num_classes) for methods standard and noise. The data stays where it is; batches are
    moved to the model's device. The model is left in eval mode. ``on_epoch`` receives each history entry.
    ``surrogates``: the public models of method pubdef (only).
    """
    cfg = make_config(config, **options)
    _check_data(x, y, cfg)
    device = model_device(model)
    n = x.shape[0]
    batches_per_epoch = math.ceil(n / cfg.batch_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = None
    if cfg.method == "pubdef":
        attack = lambda m, xb, yb: pgd_examples(m, xb, yb, eps=float(cfg.eps), norm=cfg.norm,  # noqa: E731
                                                steps=cfg.resolved_steps, step_size=cfg.resolved_step_size,
                                                generator=generator)
        models = check_surrogates(surrogates)
        x = stacked_transfer_inputs(x, y, models, attack, cfg.batch_size)
        weights = DynamicWeights(x.shape[1])
    elif surrogates:
        raise ConfigError(f"training surrogates: only used by method pubdef, not {cfg.method}")
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, cfg, cfg.epochs * batches_per_epoch)
    result = TrainResult(config=cfg)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            total_loss, correct, seen = 0.0, 0, 0
            lr = optimizer.param_groups[0]["lr"]
            for b in range(batches_per_epoch):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                xb = x[idx].to(device=device, dtype=torch.float32)
                yb = y[idx].to(device)
                model.train()
                loss, logits = _batch_loss(model, xb, yb, cfg, generator, _eps_scale(cfg, epoch, b, batches_per_epoch),
                                           weights)
                if not loss.requires_grad:
                    raise ConfigError("training: the loss does not depend on the model's parameters through "
                                      "autograd (a BPDA or non-differentiable step in front of every parameter?)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                hard = yb.argmax(dim=1) if yb.dtype.is_floating_point else yb
                total_loss += float(loss.detach()) * idx.shape[0]
                correct += int((logits.detach().argmax(dim=1) == hard).sum())
                seen += idx.shape[0]
            entry = {"epoch": epoch + 1, "loss": total_loss / seen, "train_acc": correct / seen, "lr": lr,
                     "seconds": time.perf_counter() - t0}
            if not math.isfinite(entry["loss"]):
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {entry['loss']}); lower the lr")
            result.history.append(entry)
            if on_epoch is not None:
                on_epoch(entry)
    model.eval()
    return result


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Clean accuracy in [0, 1] in eval mode (majority vote for randomized models, see robustkit.predict)."""
    device = model_device(model)
    correct = 0
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device=device, dtype=torch.float32)
            pred = predict(model, xb)
            correct += int((pred.cpu() == y[start:start + batch_size].cpu()).sum())
    return correct / max(1, x.shape[0])
