"""Adaptive smoothing (Bai, Anderson, Kim & Sojoudi, "Improving the Accuracy-Robustness Trade-Off of Classifiers
via Adaptive Smoothing", SIAM J. Mathematics of Data Science 2024), with its adaptive attack declared.

Two members, an *accurate* classifier g (members[0]) and a *robust* classifier h (members[1]), mixed in
probability space with a weight alpha in [0, 1]:

    log((1 - alpha(x)) * softmax(g(x)) + alpha(x) * softmax(h(x))).

* ``alpha`` fixed (``mixing: fixed``, parameter ``alpha``): the paper's first, input-independent smoothing.
* ``mixing: network``: alpha(x) = ``alpha_min + (alpha_max - alpha_min) * sigmoid(gamma(x))``, where the
  *mixing network* gamma decides from the members' **intermediate features** how much to trust the robust
  member (the paper's alpha range is (0.2, 0.95): ``alpha_min``/``alpha_max``). As in the paper, it reads
  features of both base classifiers: ``features`` names the layers (``[[accurate layers], [robust layers]]``,
  or one list for both members; module names as in ``model.named_modules()``), read with forward hooks during
  the members' own forward pass; the default reads each member's output (its logits). Each feature gets a
  small branch (1x1 conv + strided 3x3 conv + global pooling for feature maps, a linear layer for vectors),
  the branches are concatenated and a two-layer head gives gamma, standardised by a batch norm without affine
  part (the paper's BN on gamma). Trained with ``robustkit train --method mixing-network``
  (:meth:`AdaptiveSmoothing.fit`, the paper's loss: on clean images the mixing network is pushed towards the
  accurate member (BCE target 0), on adversarial images -- made by attacking the whole mixture, mixing
  network included -- towards the robust member (target 1), plus the mixture's cross-entropy and their
  product: ``1 * BCE + 0.5 * CE + 0.1 * BCE * CE``, clean part weighted 2, adversarial part 1; clean and
  adversarial images go through the network in one batch, so its batch norm sees both).

Adaptive attack (the paper's): attack the mixture end to end, gradients flowing through both members, the
hooked features *and* the mixing network -- every part is differentiable (nothing is detached), so every
gradient attack does exactly that here; the defense declares AutoAttack as its adaptive attack (added to any
suite that lacks it).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from robustkit.attacks import eval_mode
from robustkit.errors import ConfigError, RobustkitError, did_you_mean
from robustkit.predict import model_device
from robustkit.training import make_config, pgd_examples

from .base import Defense, register_defense

MIXINGS = ("fixed", "network")
# the paper's composite loss constants (configs/cifar10_*.yaml of Bai-YT/AdaptiveSmoothing)
LOSS_BCE, LOSS_CE, LOSS_PROD = 1.0, 0.5, 0.1
SCALE_CLEAN, SCALE_ADV = 2.0, 1.0


class Standardize(nn.Module):
    """Per-sample standardisation of a feature vector (scale-free logits and penultimate features)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-6)


class MixingNetwork(nn.Module):
    """gamma from the members' intermediate features: one branch per feature, concatenated, a two-layer head, and
    a batch norm without affine part on gamma (as the paper's composite model)."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], width: int = 16) -> None:
        super().__init__()
        branches = []
        for shape in shapes:
            if len(shape) == 3:  # a feature map (C, H, W)
                stride = 2 if min(shape[1:]) >= 4 else 1
                branches.append(nn.Sequential(
                    nn.Conv2d(shape[0], width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=stride, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            else:  # a vector (logits, penultimate features)
                branches.append(nn.Sequential(Standardize(), nn.Linear(shape[0], width), nn.ReLU()))
        self.branches = nn.ModuleList(branches)
        self.head = nn.Sequential(nn.Linear(len(shapes) * width, 32), nn.ReLU(), nn.Linear(32, 1))
        self.norm = nn.BatchNorm1d(1, affine=False)  # momentum 0.1: running stats settle within a short training

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        joined = torch.cat([branch(f) for branch, f in zip(self.branches, features)], dim=1)
        return self.norm(self.head(joined)).squeeze(1)


@contextlib.contextmanager
def hooked(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on ``model``'s named ``layers`` for the duration of the block: the dict it yields holds each
    layer's output of the last forward pass ('' is the model itself: its output). The hooks are removed on exit,
    so a member shared with other defenses is left as it was."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            seen[name] = output
        return hook

    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@register_defense("adaptive-smoothing")
class AdaptiveSmoothing(Defense):
    """Mixture of ``[accurate, robust]`` with a fixed ``alpha`` or a trained mixing network; see the module docstring.

    Parameters: ``mixing`` (fixed | network), ``alpha`` (fixed weight of the robust member, 0.5),
    ``alpha_min``/``alpha_max`` (range of the network's alpha, 0.2 / 0.95 as in the paper), ``mixing_network``
    (a safetensors file with the trained network's weights, for ``mixing: network``), ``features`` (the layers
    the mixing network reads: ``[[accurate layers], [robust layers]]`` or one list for both; default: each
    member's output), ``width`` (16), ``in_channels`` and ``input_size`` (the input shape, to size the network).
    """

    name: ClassVar[str] = "adaptive-smoothing"
    takes_members: ClassVar[bool] = True
    adaptive_attacks: ClassVar[tuple[Any, ...]] = ({"name": "autoattack"},)
    defaults: ClassVar[dict[str, Any]] = {"mixing": "fixed", "alpha": 0.5, "alpha_min": 0.2, "alpha_max": 0.95,
                                          "mixing_network": None, "features": None, "width": 16, "in_channels": 3,
                                          "input_size": 32}

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
        self.layers = self._feature_layers(prm["features"])
        if prm["mixing"] == "network":
            self.mixer = MixingNetwork(self._feature_shapes(), prm["width"])
            if prm["mixing_network"] is not None:
                self.load_mixing_network(prm["mixing_network"])

    def _feature_layers(self, features: Any) -> tuple[list[str], list[str]]:
        """(accurate layers, robust layers) from ``features``; every name checked against the member's modules."""
        if features is None:
            return [""], [""]
        if isinstance(features, (list, tuple)) and features and all(isinstance(f, str) for f in features):
            features = [list(features), list(features)]
        if (not isinstance(features, (list, tuple)) or len(features) != 2
                or not all(isinstance(f, (list, tuple)) and f and all(isinstance(n, str) for n in f) for f in features)):
            raise ConfigError(f"{self.who}: features: expected a list of layer names, or two lists [[accurate "
                              f"layers], [robust layers]], got {features!r}")
        for role, member, names in zip(("accurate", "robust"), self.members, features):
            known = [name for name, _ in member.named_modules() if name]
            for name in names:
                if name and name not in known:
                    raise ConfigError(f"{self.who}: features: the {role} member has no layer {name!r}"
                                      f"{did_you_mean(name, known)}; its layers: {', '.join(known[:12])}"
                                      f"{', ...' if len(known) > 12 else ''}")
        return list(features[0]), list(features[1])

    def _feature_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shapes of the hooked features, from one forward pass of a blank input."""
        prm = self.params
        probe = torch.zeros(2, prm["in_channels"], prm["input_size"], prm["input_size"],
                            device=model_device(self.members[0]))
        try:
            with torch.no_grad(), eval_mode(self.members):
                feats = self.features(probe)
        except RuntimeError as exc:
            raise ConfigError(f"{self.who}: the members do not run on a {prm['in_channels']}x{prm['input_size']}x"
                              f"{prm['input_size']} input: set in_channels and input_size to the data's "
                              f"({str(exc).splitlines()[0]})") from None
        bad = [i for i, f in enumerate(feats) if f.dim() not in (2, 4)]
        if bad:
            raise ConfigError(f"{self.who}: features: layer {self._layer_names()[bad[0]]} gives a "
                              f"{feats[bad[0]].dim()}-d output; expected a feature map (N, C, H, W) or a vector (N, D)")
        return [tuple(f.shape[1:]) for f in feats]

    def _layer_names(self) -> list[str]:
        return [f"{role}:{name or '(output)'}" for role, names in zip(("accurate", "robust"), self.layers)
                for name in names]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The hooked features for a batch: the accurate member's layers, then the robust member's."""
        return self._run_members(x)[0]

    def _run_members(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats: list[torch.Tensor] = []
        logits = []
        for member, names, role in zip(self.members, self.layers, ("accurate", "robust")):
            with hooked(member, names) as seen:
                logits.append(member(x).float())
            for name in names:
                if name not in seen or not isinstance(seen[name], torch.Tensor):
                    raise ConfigError(f"{self.who}: features: layer {name!r} of the {role} member "
                                      f"{'was not called in its forward pass' if name not in seen else 'does not output a tensor'}")
                feats.append(seen[name].float())
        return feats, torch.stack(logits, dim=1)

    def load_mixing_network(self, path: Any) -> None:
        """Load the mixing network's weights from a safetensors file (written by ``robustkit train``)."""
        try:
            state = load_file(str(path))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"{self.who}: mixing_network: cannot read {path}: {exc}") from None
        assert self.mixer is not None
        shapes = {k: tuple(v.shape) for k, v in self.mixer.state_dict().items()}
        missing, unexpected = self.mixer.load_state_dict(
            {k: v for k, v in state.items() if shapes.get(k, tuple(v.shape)) == tuple(v.shape)}, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{self.who}: mixing_network {path}: does not match the mixing network (width "
                              f"{self.params['width']}, features {self._layer_names()}, input {self.params['in_channels']}"
                              f"x{self.params['input_size']}²): missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.mixing_trained = True

    def save_mixing_network(self, path: Any) -> None:
        """Write the mixing network's weights as safetensors (what ``mixing_network`` loads)."""
        assert self.mixer is not None
        save_file({k: v.detach().cpu().contiguous() for k, v in self.mixer.state_dict().items()}, str(path))

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log mixed probabilities, gamma: the mixing network's output, zeros when alpha is fixed) for a batch;
        everything differentiable."""
        feats, z = self._run_members(x)
        prm = self.params
        gamma = self.mixer(feats) if self.mixer is not None else torch.zeros(x.shape[0], device=x.device)
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
                    n = xb.shape[0]
                    losses, out = self._composite(torch.cat([xb, x_adv]), torch.cat([yb, yb]),
                                                  torch.cat([torch.zeros(n), torch.ones(n)]).to(device))
                    clean_out = out[:n]
                    loss = SCALE_CLEAN * losses[:n].mean() + SCALE_ADV * losses[n:].mean()
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

    def _composite(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the paper's CompLoss per sample: c_bce * BCE(gamma, target) + c_ce * CE + c_prod * BCE * CE; the output)."""
        out, gamma = self.mix(x)
        ce = F.nll_loss(out, y, reduction="none")
        bce = F.binary_cross_entropy_with_logits(gamma, target, reduction="none")
        return LOSS_BCE * bce + LOSS_CE * ce + LOSS_PROD * bce * ce, out


def train_mixing_network(members: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, out: Path, name: str,
                         x_eval: torch.Tensor | None = None, y_eval: torch.Tensor | None = None,
                         alpha_min: float = 0.2, alpha_max: float = 0.95, width: int = 16, features: Any = None,
                         data_note: str = "", **options: Any) -> Path:
    """Train an adaptive-smoothing mixing network for ``members`` (name -> model: accurate first, robust second)
    and write ``out/<name>.safetensors`` (its weights) and ``out/<name>.yaml``, a sweep model entry naming the
    members and the defense with every setting, ready to paste into a config. ``features``: the layers the mixing
    network reads (see :class:`AdaptiveSmoothing`); ``options`` go to :meth:`fit`."""
    if len(members) != 2:
        raise ConfigError(f"mixing network: expected two members (accurate, robust), got {len(members)}")
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ConfigError(f"mixing network: expected square images (N, C, H, H), got shape {tuple(x.shape)}")
    defense = AdaptiveSmoothing(list(members.values()), mixing="network", alpha_min=alpha_min, alpha_max=alpha_max,
                                width=width, features=features, in_channels=int(x.shape[1]),
                                input_size=int(x.shape[2]))
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
                         "features": [list(names) for names in defense.layers] if features is not None else None,
                         "in_channels": defense.params["in_channels"], "input_size": defense.params["input_size"]}}
    if features is None:
        del entry["defense"]["features"]
    header = (f"# A sweep model entry (paste it under models:). Mixing network trained by robustkit train --method "
              f"mixing-network:\n# {cfg.describe()}; {data_note}\n# clean accuracy on the held-out examples: "
              f"{'n/a' if clean is None else f'{clean}%'}\n")
    path = out / f"{name}.yaml"
    path.write_text(header + yaml.safe_dump(entry, sort_keys=False), encoding="utf-8")
    return path
