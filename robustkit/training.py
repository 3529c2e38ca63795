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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks import eval_mode
from robustkit.attacks._steps import random_start, steepest_direction
from robustkit.errors import ConfigError, did_you_mean
from robustkit.outputs import output_dir, write_text
from robustkit.predict import model_device, predict
from robustkit.pubdef import DynamicWeights, check_surrogates, stacked_transfer_inputs
from robustkit.threat import canonical_norm, project

METHODS = ("standard", "noise", "pgd", "fgsm", "trades", "pubdef")
ATTACKED = ("pgd", "fgsm", "trades", "pubdef")  # methods that train against an eps-ball
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "cyclic")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1}
DEFAULT_STEPS = {"pgd": 10, "trades": 10, "pubdef": 10}
TRADES_INIT_STD = 0.001


@dataclass
class TrainConfig:
    """Every setting of a training run (also written, verbatim, into the model card's ``training`` text)."""

    method: str = "standard"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None              # None: 1e-3 for adam, 0.1 for sgd
    momentum: float = 0.9                # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "constant"        # constant | cosine | cyclic (0 -> lr at 2/5 of training -> 0)
    seed: int = 0
    norm: str = "Linf"                   # threat model of pgd / fgsm / trades
    eps: float | None = None
    steps: int | None = None             # pgd / trades attack steps (default 10)
    step_size: float | None = None       # default 2.5 * eps / steps (pgd, trades), 1.25 * eps (fgsm)
    beta: float = 6.0                    # trades
    sigma: float | None = None           # noise
    temperature: float = 1.0             # distillation: loss on logits / T
    eps_warmup: int = 0                  # pgd / fgsm / trades: epochs over which eps (and step) ramp up from 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, key: str, expected: str) -> None:
            if not cond:
                raise ConfigError(f"training {key}: expected {expected}, got {getattr(self, key)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        self.method = str(self.method).lower()
        if self.method not in METHODS:
            raise ConfigError(f"training method: expected one of {', '.join(METHODS)}, got {self.method!r}"
                              f"{did_you_mean(self.method, METHODS)}")
        self.optimizer = str(self.optimizer).lower()
        need(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS))
        self.lr_schedule = str(self.lr_schedule).lower()
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", ", ".join(LR_SCHEDULES))
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(is_int(self.seed), "seed", "an integer")
        need(self.lr is None or (is_num(self.lr) and self.lr > 0), "lr", "a number > 0")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(is_num(self.temperature) and self.temperature > 0, "temperature", "a number > 0")
        self.norm = canonical_norm(self.norm)
        adversarial = self.method in ATTACKED
        if adversarial:
            need(self.norm in ("Linf", "L2"), "norm", "Linf or L2")
            need(self.eps is not None and is_num(self.eps) and self.eps > 0, "eps",
                 f"a number > 0 (method {self.method} trains against an eps-ball)")
            if self.norm == "Linf":
                need(self.eps <= 1, "eps", "a number <= 1 for Linf (inputs are in [0, 1])")
        elif self.eps is not None:
            raise ConfigError(f"training eps: only used by methods {', '.join(ATTACKED)}, not {self.method}")
        need(self.steps is None or (is_int(self.steps) and self.steps >= 1), "steps", "an integer >= 1")
        if self.steps is not None and self.method not in ("pgd", "trades", "pubdef"):
            raise ConfigError(f"training steps: only used by methods pgd, trades and pubdef, not {self.method}")
        need(self.step_size is None or (is_num(self.step_size) and self.step_size > 0), "step_size", "a number > 0")
        if self.step_size is not None and not adversarial:
            raise ConfigError(f"training step_size: only used by methods {', '.join(ATTACKED)}, not {self.method}")
        need(is_num(self.beta) and self.beta >= 0, "beta", "a number >= 0")
        need(is_int(self.eps_warmup) and 0 <= self.eps_warmup <= self.epochs, "eps_warmup",
             "an integer number of epochs in [0, epochs]")
        if self.eps_warmup and (not adversarial or self.method == "pubdef"):
            raise ConfigError(f"training eps_warmup: only used by methods pgd, fgsm and trades, not {self.method}")
        if self.method == "noise":
            need(self.sigma is not None and is_num(self.sigma) and self.sigma > 0, "sigma",
                 "a number > 0 (the noise std of method noise)")
        elif self.sigma is not None:
            raise ConfigError(f"training sigma: only used by method noise, not {self.method}")

    # resolved defaults -----------------------------------------------------------------------------
    @property
    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.optimizer])

    @property
    def resolved_steps(self) -> int:
        return int(self.steps if self.steps is not None else DEFAULT_STEPS.get(self.method, 1))

    @property
    def resolved_step_size(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        assert self.eps is not None
        if self.method == "fgsm":
            return 1.25 * float(self.eps)
        return 2.5 * float(self.eps) / self.resolved_steps

    def describe(self) -> str:
        """One line for a model card: method, threat model and every setting that shaped the weights."""
        parts = [f"method={self.method}"]
        if self.method in ATTACKED:
            parts.append(f"norm={self.norm} eps={self.eps:g} step_size={self.resolved_step_size:g}")
            if self.method != "fgsm":
                parts.append(f"steps={self.resolved_steps}")
            if self.method == "trades":
                parts.append(f"beta={self.beta:g}")
            if self.eps_warmup:
                parts.append(f"eps_warmup={self.eps_warmup}")
        if self.method == "noise":
            parts.append(f"sigma={self.sigma:g}")
        if self.temperature != 1:
            parts.append(f"temperature={self.temperature:g}")
        parts.append(f"epochs={self.epochs} batch_size={self.batch_size} optimizer={self.optimizer} "
                     f"lr={self.resolved_lr:g} lr_schedule={self.lr_schedule} weight_decay={self.weight_decay:g}")
        if self.optimizer == "sgd":
            parts.append(f"momentum={self.momentum:g}")
        parts.append(f"seed={self.seed}")
        return " ".join(parts)


@dataclass
class TrainResult:
    """Per-epoch history (``loss``, ``train_acc`` on the inputs actually trained on, ``lr``, ``seconds``)."""

    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "history": self.history}


def make_config(config: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` from keyword options (unknown names are one-line errors)."""
    known = [f.name for f in fields(TrainConfig)]
    for key in options:
        if key not in known:
            raise ConfigError(f"training: unknown option {key!r}{did_you_mean(key, known)}; known: {', '.join(known)}")
    if config is None:
        return TrainConfig(**options)
    merged = {**asdict(config), **options}
    return TrainConfig(**merged)


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
    else:
        factor = lambda t: 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.cross_entropy(logits / temperature, target)


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
                 step_size: float, generator: torch.Generator | None, start: bool = True) -> torch.Tensor:
    """Madry et al.'s training attack: PGD on the cross-entropy, last iterate (no best-iterate search)."""
    eps_t = torch.full((x.shape[0],), float(eps), device=x.device)
    x_adv = random_start(x, eps_t, norm, generator) if start else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project(x, x_adv.detach() + step_size * steepest_direction(grad, norm), eps_t, norm)
    return x_adv.detach()


def trades_examples(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, steps: int, step_size: float,
                    generator: torch.Generator | None) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')) from x + 0.001 * N(0, I)."""
    eps_t = torch.full((x.shape[0],), float(eps), device=x.device)
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), dim=1)
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
    x_adv = project(x, x + TRADES_INIT_STD * noise.to(x.device, x.dtype), eps_t, norm)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = project(x, x_adv.detach() + step_size * steepest_direction(grad, norm), eps_t, norm)
    return x_adv.detach()


def _batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig,
                generator: torch.Generator, eps_scale: float = 1.0,
                pubdef: DynamicWeights | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of the inputs trained on) for one batch, by method; ``eps_scale`` < 1 during warm-up."""
    if pubdef is not None:  # xb: (B, 1 + K, C, H, W), clean then each surrogate's transfer examples
        return pubdef.loss(model, xb, yb)
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


# --------------------------------------------------------------------------------------------- zoo entries
@dataclass
class ZooEntryResult:
    """What :func:`train_zoo_entry` wrote: the card and checkpoint paths, the card itself and the history."""

    card_path: Any
    checkpoint_path: Any
    card: dict[str, Any]
    history: Any  # list of per-epoch entries; {"teacher": [...], "student": [...]} for distillation


def _fill_shape_kwargs(arch: str, arch_kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
    """Add ``in_channels`` / ``input_size`` from the data when the architecture takes them and none were given."""
    import inspect

    from robustkit.zoo import ARCHS

    try:
        params = inspect.signature(ARCHS.get(arch)).parameters
    except (TypeError, ValueError):
        return dict(arch_kwargs)
    out = dict(arch_kwargs)
    if "in_channels" in params and "in_channels" not in out:
        out["in_channels"] = int(x.shape[1])
    if "input_size" in params and "input_size" not in out and x.shape[2] == x.shape[3]:
        out["input_size"] = int(x.shape[2])
    return out


def train_zoo_entry(*, arch: str, dataset: Any, out: Any, config: TrainConfig, name: str | None = None,
                    arch_kwargs: dict[str, Any] | None = None, normalization: Any = None,
                    n_examples: int | None = None, eval_examples: int = 0, distillation_temperature: float | None = None,
                    device: str = "auto", on_epoch: Callable[[dict[str, float]], None] | None = None,
                    surrogates: dict[str, nn.Module] | None = None) -> ZooEntryResult:
    """Train a zoo architecture on a dataset and write ``<name>.safetensors`` + the model card ``<name>.yaml``
    (+ ``<name>.train.json`` with the full config and per-epoch history) into ``out``.

    Training uses the first ``n_examples`` examples (all when None); the card's ``reported_clean_acc`` is
    measured on the *last* ``eval_examples`` examples, which must not overlap them. With
    ``distillation_temperature`` the model is trained by defensive distillation (teacher and student at that
    temperature, ``config`` used for both) and the card describes the deployed student. ``surrogates`` (name ->
    model) are method pubdef's public models; the card's training line names them. The checkpoint holds
    the bare network's weights; the normalization is recorded in the card (the zoo re-attaches it).
    """
    import json

    import yaml

    from robustkit import __version__
    from robustkit.data import load_dataset
    from robustkit.engine.devices import resolve_device
    from robustkit.zoo import build_arch, save_safetensors, sha256_file, with_normalization
    from robustkit.zoo.normalize import parse_normalization

    data = load_dataset(dataset) if not hasattr(dataset, "x") else dataset
    total = len(data)
    n_train = total - eval_examples if n_examples is None else n_examples
    if isinstance(eval_examples, bool) or not isinstance(eval_examples, int) or eval_examples < 0:
        raise ConfigError(f"eval_examples: expected an integer >= 0, got {eval_examples!r}")
    if n_train < 1 or n_train + eval_examples > total:
        raise ConfigError(f"n_examples ({n_train}) + eval_examples ({eval_examples}) must fit in the {total} examples "
                          f"of dataset {data.name!r} without overlapping")
    x, y = data.x[:n_train], data.y[:n_train]
    norm = parse_normalization(normalization, field="normalization")
    kwargs = _fill_shape_kwargs(arch, arch_kwargs or {}, x)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_arch(arch, num_classes=data.num_classes, **kwargs)
    model = with_normalization(net, norm).to(dev)
    if distillation_temperature is not None:
        from robustkit.defenses.distillation import DefensiveDistillation

        if config.method != "standard":
            raise ConfigError(f"distillation trains teacher and student with standard training, not {config.method}")
        options = {k: v for k, v in asdict(config).items() if k not in ("method", "temperature", "seed")}
        distilled = DefensiveDistillation(model, temperature=distillation_temperature)
        distilled.fit(x, y, on_epoch=on_epoch, seed=config.seed, **options)
        how = (f"defensive distillation (Papernot et al. 2016), temperature {distillation_temperature:g}, student "
               f"deployed at T=1; teacher and student each: {config.describe()}")
        history: Any = distilled.training_history
    else:
        models = None if surrogates is None else [m.to(dev).eval() for m in surrogates.values()]
        history = train(model, x, y, config, on_epoch=on_epoch, surrogates=models).history
        how = config.describe()
        if surrogates:
            how += f" surrogates={','.join(surrogates)}"
    model.eval()
    clean = round(100.0 * accuracy(model, data.x[total - eval_examples:], data.y[total - eval_examples:]), 2) \
        if eval_examples else None
    name = name or f"{data.name}-{arch}-{'distillation' if distillation_temperature else config.method}"
    folder = output_dir(out)
    ckpt = save_safetensors(net.state_dict(), folder / f"{name}.safetensors",
                            # one key: safetensors writes a multi-key metadata map in a random order, and
                            # the same seed must give the same file bytes (and sha256)
                            metadata={"robustkit": json.dumps({"version": __version__, "training": how},
                                                              sort_keys=True)})
    split = data.spec.get("split") if isinstance(data.spec, dict) else None
    where = f"{data.name}{f' {split} split' if split else ''} examples 0..{n_train - 1} (content hash " \
            f"{_hash_prefix(x, y)})"
    evaluated = f"; clean accuracy on examples {total - eval_examples}..{total - 1}" if eval_examples else ""
    threat = f"{config.norm} {config.eps:g}" if config.method in ATTACKED else None
    if config.method == "pubdef":  # PubDef defends against transfer attacks from these public models only
        threat = f"transfer from public models ({', '.join(surrogates or {})}), {threat}"
    card = {
        "name": name, "arch": arch, "arch_kwargs": kwargs, "num_classes": int(data.num_classes),
        "dataset": data.name,
        "normalization": None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])},
        "checkpoint": {"path": ckpt.name, "sha256": sha256_file(ckpt)},
        "training": f"robustkit train: {how}; data: {where}{evaluated}",
        "threat_model": threat,
        "source": f"trained with robustkit {__version__} (robustkit train)",
        "reported_clean_acc": clean,
        "licence": None,
    }
    card_path = folder / f"{name}.yaml"
    write_text(card_path, yaml.safe_dump(card, sort_keys=False))
    write_text(folder / f"{name}.train.json",
               json.dumps({"config": asdict(config), "distillation_temperature": distillation_temperature,
                           "n_train": n_train, "eval_examples": eval_examples, "history": history}, indent=2))
    return ZooEntryResult(card_path=card_path, checkpoint_path=ckpt, card=card, history=history)


def _hash_prefix(x: torch.Tensor, y: torch.Tensor) -> str:
    from robustkit.data import content_hash

    return content_hash(x.contiguous(), y.contiguous())[:12]
