"""Adaptive smoothing (Bai, Anderson, Kim & Sojoudi, "Improving the Accuracy-Robustness Trade-Off of Classifiers
via Adaptive Smoothing", SIAM J. Mathematics of Data Science 2024), with its adaptive attack declared.

Two members, an *accurate* classifier g (members[0]) and a *robust* classifier h (members[1]), mixed in
probability space with a weight alpha in [0, 1]:

    log((1 - alpha(x)) * softmax(g(x)) + alpha(x) * softmax(h(x))).

* ``alpha`` fixed (``mixing: fixed``, parameter ``alpha``): the paper's first, input-independent smoothing.
* ``mixing: network``: alpha(x) = ``alpha_min + (alpha_max - alpha_min) * sigmoid(gamma(x))``, where the
  *mixing network* gamma looks at the input and decides how much to trust the robust member (the paper's
  alpha range is (0.2, 0.95): ``alpha_min``/``alpha_max``). Trained with ``robustkit train --method
  mixing-network`` (:meth:`AdaptiveSmoothing.fit`, the paper's loss: on clean images the mixing network is
  pushed towards the accurate member (BCE target 0), on adversarial images -- made by attacking the whole
  mixture, mixing network included -- towards the robust member (target 1), plus the mixture's cross-entropy
  and their product: ``1 * BCE + 0.5 * CE + 0.1 * BCE * CE``, clean part weighted 2, adversarial part 1).

  Deviation from the paper, said here because it matters: the paper's mixing network reads the members'
  *intermediate features*; robustkit's members are arbitrary models, so its mixing network
  (:class:`MixingNetwork`) reads the input image and both members' logits.

Adaptive attack (the paper's): attack the mixture end to end, gradients flowing through both members *and*
the mixing network -- every part is differentiable, so every gradient attack does exactly that here; the
defense declares AutoAttack as its adaptive attack (added to any suite that lacks it).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from robustkit.attacks import eval_mode
from robustkit.errors import ConfigError, RobustkitError
from robustkit.predict import model_device
from robustkit.training import make_config, pgd_examples

from .base import Defense, register_defense

MIXINGS = ("fixed", "network")
# the paper's composite loss constants (configs/cifar10_*.yaml of Bai-YT/AdaptiveSmoothing)
LOSS_BCE, LOSS_CE, LOSS_PROD = 1.0, 0.5, 0.1
SCALE_CLEAN, SCALE_ADV = 2.0, 1.0


class MixingNetwork(nn.Module):
    """gamma(x): a small CNN on the image, joined with both members' logits, to one scalar per sample."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(2 * width + 2 * num_classes, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        z = logits.flatten(1)
        z = (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-6)  # scale-free logits
        return self.head(torch.cat([self.features(x), z], dim=1)).squeeze(1)


@register_defense("adaptive-smoothing")
class AdaptiveSmoothing(Defense):
    """Mixture of ``[accurate, robust]`` with a fixed ``alpha`` or a trained mixing network; see the module docstring.

    Parameters: ``mixing`` (fixed | network), ``alpha`` (fixed weight of the robust member, 0.5),
    ``alpha_min``/``alpha_max`` (range of the network's alpha, 0.2 / 0.95 as in the paper), ``mixing_network``
    (a safetensors file with the trained network's weights, for ``mixing: network``), ``width`` (16).
    """

    name: ClassVar[str] = "adaptive-smoothing"
    takes_members: ClassVar[bool] = True
    adaptive_attacks: ClassVar[tuple[Any, ...]] = ({"name": "autoattack"},)
    defaults: ClassVar[dict[str, Any]] = {"mixing": "fixed", "alpha": 0.5, "alpha_min": 0.2, "alpha_max": 0.95,
                                          "mixing_network": None, "width": 16, "num_classes": 10, "in_channels": 3}

    def validate(self) -> None:
        prm = self.params
        if len(self.members) != 2:
            raise ConfigError(f"{self.who}: takes exactly two members, [accurate, robust]; got {len(self.members)}")
        if prm["mixing"] not in MIXINGS:
            raise ConfigError(f"{self.who}: mixing: expected one of {', '.join(MIXINGS)}, got {prm['mixing']!r}")
        for key in ("alpha", "alpha_min", "alpha_max"):
            if not 0 <= prm[key] <= 1:
                raise ConfigError(f"{self.who}: {key}: expected a number in [0, 1], got {prm[key]}")
        if prm["alpha_min"] > prm["alpha_max"]:
            raise ConfigError(f"{self.who}: alpha_min ({prm['alpha_min']}) must not exceed alpha_max ({prm['alpha_max']})")
        self.mixer: MixingNetwork | None = None
        if prm["mixing"] == "network":
            self.mixer = MixingNetwork(prm["in_channels"], prm["num_classes"], prm["width"])
            if prm["mixing_network"] is not None:
                self.load_mixing_network(prm["mixing_network"])

    def load_mixing_network(self, path: Any) -> None:
        """Load the mixing network's weights from a safetensors file (written by ``robustkit train``)."""
        try:
            state = load_file(str(path))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"{self.who}: mixing_network: cannot read {path}: {exc}") from None
        assert self.mixer is not None
        missing, unexpected = self.mixer.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{self.who}: mixing_network {path}: does not match the mixing network (width "
                              f"{self.params['width']}, {self.params['num_classes']} classes, {self.params['in_channels']} "
                              f"channels): missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.mixing_trained = True

    def save_mixing_network(self, path: Any) -> None:
        """Write the mixing network's weights as safetensors (what ``mixing_network`` loads)."""
        assert self.mixer is not None
        save_file({k: v.detach().cpu().contiguous() for k, v in self.mixer.state_dict().items()}, str(path))

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log mixed probabilities, gamma: the mixing network's output, zeros when alpha is fixed) for a batch;
        everything differentiable."""
        z = torch.stack([self.members[0](x).float(), self.members[1](x).float()], dim=1)
        prm = self.params
        gamma = self.mixer(x, z) if self.mixer is not None else torch.zeros(x.shape[0], device=x.device)
        if self.mixer is None:
            alpha = torch.full((x.shape[0],), float(prm["alpha"]), device=x.device)
        else:
            alpha = prm["alpha_min"] + (prm["alpha_max"] - prm["alpha_min"]) * torch.sigmoid(gamma)
        a = alpha.unsqueeze(1)
        return torch.log((1 - a) * F.softmax(z[:, 0], dim=1) + a * F.softmax(z[:, 1], dim=1)), gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer is not None and not getattr(self, "mixing_trained", False):
            raise RobustkitError(f"{self.who}: the mixing network is untrained: give mixing_network (a file from "
                                 f"robustkit train --method mixing-network) or call fit(x, y, eps=...)")
        return self.mix(x)[0]

    # ------------------------------------------------------------------------------------------ training
    def fit(self, x: torch.Tensor, y: torch.Tensor, **options: Any) -> "AdaptiveSmoothing":
        """Train the mixing network (members frozen) with the paper's composite loss on clean images and on
        adversarial images made by PGD on the whole mixture (``options``: those of :func:`robustkit.training.train`:
        eps, norm, steps, step_size, epochs, lr, batch_size, seed, on_epoch)."""
        if self.mixer is None:
            raise ConfigError(f"{self.who}: fit trains the mixing network; build the defense with mixing: network")
        on_epoch = options.pop("on_epoch", None)
        cfg = make_config(method="pgd", **options)
        device = model_device(self.members[0])
        self.mixer.to(device)
        for p in self.members.parameters():
            p.requires_grad_(False)
        optimizer = torch.optim.Adam(self.mixer.parameters(), lr=cfg.resolved_lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.mixing_trained = True
        self.training_history = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            for epoch in range(cfg.epochs):
                t0 = time.perf_counter()
                order = torch.randperm(x.shape[0], generator=generator)
                total, seen, correct = 0.0, 0, 0
                for start in range(0, x.shape[0], cfg.batch_size):
                    idx = order[start:start + cfg.batch_size]
                    xb, yb = x[idx].to(device, torch.float32), y[idx].to(device)
                    with eval_mode(self):  # the attack sees the deployed mixture, mixing network included
                        x_adv = pgd_examples(self, xb, yb, eps=float(cfg.eps), norm=cfg.norm, steps=cfg.resolved_steps,
                                             step_size=cfg.resolved_step_size, generator=generator)
                    self.mixer.train()
                    clean_loss, clean_out = self._composite(xb, yb, 0.0)
                    loss = SCALE_CLEAN * clean_loss + SCALE_ADV * self._composite(x_adv, yb, 1.0)[0]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * idx.numel()
                    correct += int((clean_out.detach().argmax(1) == yb).sum())
                    seen += idx.numel()
                self.mixer.eval()
                entry = {"epoch": epoch + 1, "loss": total / seen, "train_acc": correct / seen, "lr": cfg.resolved_lr,
                         "seconds": time.perf_counter() - t0}
                self.training_history.append(entry)
                if on_epoch is not None:
                    on_epoch(entry)
        self.eval()
        return self

    def _composite(self, x: torch.Tensor, y: torch.Tensor, target: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the paper's CompLoss: c_bce * BCE(gamma, target) + c_ce * CE + c_prod * BCE * CE, averaged; the output)."""
        out, gamma = self.mix(x)
        ce = F.nll_loss(out, y, reduction="none")
        bce = F.binary_cross_entropy_with_logits(gamma, torch.full_like(gamma, target), reduction="none")
        return (LOSS_BCE * bce + LOSS_CE * ce + LOSS_PROD * bce * ce).mean(), out


def train_mixing_network(members: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, out: Path, name: str,
                         x_eval: torch.Tensor | None = None, y_eval: torch.Tensor | None = None,
                         alpha_min: float = 0.2, alpha_max: float = 0.95, width: int = 16, data_note: str = "",
                         **options: Any) -> Path:
    """Train an adaptive-smoothing mixing network for ``members`` (name -> model: accurate first, robust second)
    and write ``out/<name>.safetensors`` (its weights) and ``out/<name>.yaml``, a sweep model entry naming the
    members and the defense with every setting, ready to paste into a config. ``options`` go to :meth:`fit`."""
    if len(members) != 2:
        raise ConfigError(f"mixing network: expected two members (accurate, robust), got {len(members)}")
    defense = AdaptiveSmoothing(list(members.values()), mixing="network", alpha_min=alpha_min, alpha_max=alpha_max,
                                width=width, num_classes=int(y.max()) + 1 if y_eval is None else
                                int(max(int(y.max()), int(y_eval.max()))) + 1, in_channels=int(x.shape[1]))
    defense.fit(x, y, **options)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    defense.save_mixing_network(weights)
    clean = None
    if x_eval is not None and y_eval is not None and x_eval.shape[0]:
        with torch.no_grad(), eval_mode(defense):
            pred = torch.cat([defense(x_eval[i:i + 256].to(model_device(defense.members[0]))).argmax(1).cpu()
                              for i in range(0, x_eval.shape[0], 256)])
        clean = round(100.0 * float((pred == y_eval.cpu()).float().mean()), 2)
    cfg = make_config(method="pgd", **{k: v for k, v in options.items() if k != "on_epoch"})
    entry = {"name": name, "members": list(members),
             "defense": {"name": "adaptive-smoothing", "mixing": "network", "mixing_network": str(weights.resolve()),
                         "alpha_min": alpha_min, "alpha_max": alpha_max, "width": width,
                         "num_classes": defense.params["num_classes"], "in_channels": defense.params["in_channels"]}}
    header = (f"# A sweep model entry (paste it under models:). Mixing network trained by robustkit train --method "
              f"mixing-network:\n# {cfg.describe()}; {data_note}\n# clean accuracy on the held-out examples: "
              f"{'n/a' if clean is None else f'{clean}%'}\n")
    path = out / f"{name}.yaml"
    path.write_text(header + yaml.safe_dump(entry, sort_keys=False), encoding="utf-8")
    return path
