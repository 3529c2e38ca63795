"""Transfer attack: adversarial examples crafted on surrogate models, judged on the target model.

This is the threat model of "PubDef: Defending Against Transfer Attacks From Public Models" (Sitawarin et al.,
2023): the attacker has no access to the target's gradients or scores, only to public (surrogate) models,
and tries every surrogate × attack pair. A sample counts as broken if ANY crafted example fools the target,
so the number reported is the worst case over the pairs, per sample.

Rules (why):

* pairs are tried in a fixed order (surrogates outer, attacks inner, as listed); a sample keeps the first
  example that fools the target and is not attacked again, so the returned example is deterministic and no
  compute is spent on samples already broken (samples the target misclassifies clean are broken at once);
* each inner attack runs on the surrogate with the robustkit base guarantees (eval mode, projection,
  budget check); the TARGET decides success -- a surrogate's own success is reported but never counted;
* targeted: the target class is resolved once on the target model by the base class and handed to every
  inner attack in ``targeted: given`` mode, so all pairs aim at the class success is judged against; an
  inner attack may therefore not set ``targeted`` itself;
* surrogates are model specs for :func:`robustkit.zoo.load_model` (zoo name, card path, or card dict),
  checked when the attack is configured (so a typo fails before the sweep), loaded once per attack object on
  first use and moved to the target's device; relative paths resolve against ``base_dir`` (default: the
  current folder). From Python they may also be ``nn.Module`` instances, used as they are (identified in
  the config by a hash of their state dict).
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from robustkit.errors import ConfigError, RobustkitError
from robustkit.predict import predict
from robustkit.threat import ThreatModel
from robustkit.zoo import load_model, resolve_card

from .base import Attack, register_attack
from .build import build_attack

DEFAULT_INNER_ATTACKS: tuple[str, ...] = ("pgd",)


def module_fingerprint(module: nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's state dict: a stable identity for a surrogate given in Python."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@register_attack("transfer")
class TransferAttack(Attack):
    """Worst case per sample over (surrogate × attack) transfer examples, success decided by the target."""

    name: ClassVar[str] = "transfer"
    kind: ClassVar[str] = "transfer"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2", "L1")  # each inner attack must support the threat norm
    supports_targeted: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"surrogates": None, "attacks": None, "base_dir": None}
    full_grid: ClassVar[bool] = False  # True: every pair attacks every sample (TransferGridAttack)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        base_dir = self.params["base_dir"]
        if base_dir is not None and not isinstance(base_dir, (str, os.PathLike)):
            raise ConfigError(f"attack 'transfer': base_dir: expected a folder path, got {base_dir!r}")
        self._surrogate_specs = self._check_surrogates(self.params["surrogates"])
        self._inner = self._build_inner(self.params["attacks"])
        self._loaded: list[nn.Module] | None = None
        self._fingerprints: dict[int, str] = {}

    # ----------------------------------------------------------------------------------- configuration
    def _check_surrogates(self, value: Any) -> list[Any]:
        if value is None:
            raise ConfigError(f"attack {self.name!r}: surrogates: expected a list of model specs (zoo name, card path, "
                              "card mapping or nn.Module), got nothing")
        specs = list(value) if isinstance(value, (list, tuple)) else [value]
        if not specs:
            raise ConfigError(f"attack {self.name!r}: surrogates: expected at least one surrogate model, got an empty list")
        for i, spec in enumerate(specs):
            if not isinstance(spec, (str, dict, nn.Module, os.PathLike)):
                raise ConfigError(f"attack 'transfer': surrogates[{i}]: expected a zoo name, card path, card mapping "
                                  f"or nn.Module, got {type(spec).__name__} {spec!r}")
            if not isinstance(spec, nn.Module):
                self._check_card(i, spec)
        return specs

    def _check_card(self, index: int, spec: Any) -> None:
        """Resolve the card now (cheap: no weights are read) so that a typo fails before the sweep starts."""
        where = f"attack 'transfer': surrogates[{index}]"
        try:
            card = resolve_card(spec, base_dir=self.params["base_dir"])
        except RobustkitError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        ckpt = card.checkpoint
        if ckpt is not None and ckpt.path is not None and not Path(ckpt.path).is_file():
            raise ConfigError(f"{where}: checkpoint file not found: {ckpt.path}")

    def _build_inner(self, value: Any) -> list[Attack]:
        specs = list(DEFAULT_INNER_ATTACKS) if value is None else (
            list(value) if isinstance(value, (list, tuple)) else [value])
        if not specs:
            raise ConfigError("attack 'transfer': attacks: expected at least one attack, got an empty list")
        inner = []
        for i, spec in enumerate(specs):
            atk = build_attack(spec)
            if isinstance(atk, TransferAttack):
                raise ConfigError(f"attack 'transfer': attacks[{i}]: a transfer attack cannot contain another one")
            if atk.params.get("targeted"):
                raise ConfigError(f"attack 'transfer': attacks[{i}] ({atk.name}) sets targeted; set targeted on the "
                                  f"transfer attack instead, so that every surrogate aims at the same class")
            if self.params["targeted"] and not atk.supports_targeted:
                raise ConfigError(f"attack 'transfer' is targeted but attacks[{i}] ({atk.name}) has no targeted mode")
            inner.append(atk)
        return inner

    @property
    def inner_attacks(self) -> list[Attack]:
        """The attacks run on every surrogate, in order."""
        return list(self._inner)

    def _describe_surrogate(self, index: int, spec: Any) -> Any:
        if isinstance(spec, nn.Module):
            key = id(spec)
            if key not in self._fingerprints:
                self._fingerprints[key] = module_fingerprint(spec)
            return {"module": type(spec).__qualname__, "state_sha256": self._fingerprints[key]}
        return _json_safe(spec)

    def _surrogate_label(self, index: int, spec: Any) -> str:
        if isinstance(spec, dict):
            return str(spec.get("name") or spec.get("arch") or f"surrogate{index}")
        if isinstance(spec, nn.Module):
            return f"{type(spec).__name__}#{index}"
        text = os.fspath(spec)
        # a card path is named by its file stem (the card's usual name), a zoo name by itself
        return Path(text).stem if text.endswith((".yaml", ".yml")) else text

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["surrogates"] = [self._describe_surrogate(i, s) for i, s in enumerate(self._surrogate_specs)]
        cfg["attacks"] = [a.config() for a in self._inner]
        cfg["base_dir"] = _json_safe(cfg["base_dir"])
        return cfg

    # ---------------------------------------------------------------------------------------- running
    def surrogate_models(self, device: torch.device) -> list[nn.Module]:
        """The surrogates as modules (loaded once; loaded ones moved to ``device``, given modules left as they are)."""
        if self._loaded is None:
            loaded = []
            for i, spec in enumerate(self._surrogate_specs):
                if isinstance(spec, nn.Module):
                    loaded.append(spec)
                    continue
                spec_arg = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
                loaded.append(load_model(spec_arg, base_dir=self.params["base_dir"]).to(device).eval())
            self._loaded = loaded
        return self._loaded

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        for atk in self._inner:
            if norm not in atk.norms:
                raise ConfigError(f"attack 'transfer': inner attack {atk.name!r} supports norms "
                                  f"{', '.join(atk.norms)}, not {norm}")
        inner = self._inner
        if target is not None:  # aim every pair at the class the base class resolved on the target model
            inner = []
            for atk in self._inner:
                aimed = copy.copy(atk)
                aimed.params = {**atk.params, "targeted": "given"}
                inner.append(aimed)

        def fools_target(x_try: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            pred = predict(model, x_try)
            return pred == target[index] if target is not None else pred != y[index]

        x_best = x.clone()
        everyone = torch.arange(x.shape[0], device=x.device)
        broken = fools_target(x, everyone)
        clean_fooled = broken.clone()
        info: dict[str, Any] = {"clean_fooled": int(broken.sum()), "pairs": []}
        surrogates = self.surrogate_models(x.device)
        for s_index, (spec, surrogate) in enumerate(zip(self._surrogate_specs, surrogates)):
            for atk in inner:
                # the worst case skips samples already broken; the grid runs every pair on every sample
                todo = (~(clean_fooled if self.full_grid else broken)).nonzero().squeeze(1)
                pair = {"surrogate": self._surrogate_label(s_index, spec), "attack": atk.label,
                        "attacked": int(todo.numel()), "surrogate_success": 0, "target_fooled": 0}
                info["pairs"].append(pair)
                if todo.numel() == 0:
                    continue
                res = atk(surrogate, x[todo], y[todo], ThreatModel(norm, eps[todo]),
                          target=None if target is None else target[todo], generator=generator)
                x_adv = res.x_adv.to(device=x.device, dtype=x.dtype)
                fooled = fools_target(x_adv, todo)
                first = fooled & ~broken[todo]  # a sample keeps the first example that fooled the target
                x_best[todo[first]] = x_adv[first]
                broken[todo[fooled]] = True
                pair["surrogate_success"] = int(res.success.sum())
                pair["target_fooled"] = int(fooled.sum())
        return x_best, info


@register_attack("transfer-grid")
class TransferGridAttack(TransferAttack):
    """PubDef's threat model as a grid: EVERY (surrogate x attack) pair attacks every clean-correct sample.

    Per sample the verdict is still the worst case over the grid (the example of the first pair, in order,
    that fooled the target), so the leaderboard row is the worst case; ``info["pairs"]`` then holds, for each
    pair, how many of the attacked samples it fooled -- the complete grid, which the engine's finishing stage
    writes as ``transfer_grid.csv`` and a heatmap (:mod:`robustkit.engine.transfer_grid`). Costs every pair on
    every sample, where ``transfer`` stops at the first success.
    """

    name: ClassVar[str] = "transfer-grid"
    full_grid: ClassVar[bool] = True
