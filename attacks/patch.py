"""Adversarial patch (``patch``): any pixel values inside a square, nothing outside it.

Runs under a patch threat model (:mod:`robustkit.patch`; docs/attacks.md, "patch"): the threat model gives
each image's patch square (location ``fixed`` or ``random``) or only its side (location ``searched``, where
this attack tries ``candidates`` random places per image and keeps the best). Two modes:

* per image (default): sign-gradient ascent on the loss, restricted to the patch, from the clean image;
  the first step that fools the model wins, otherwise the highest-loss iterate.
* ``universal: true``: one patch (C x side x side) trained on a training split (:meth:`fit`, images at their
  threat-model places, or at random places redrawn every step for ``searched``) and pasted on every
  evaluated image; for ``searched`` it goes where it hurts most among the candidates (loss, no gradient).

The base class resets every value outside the mask and the budget check verifies it (a searched patch is
checked to fit in one square of its side).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robustkit.errors import ConfigError
from robustkit.patch import mask_corners, square_masks
from robustkit.steps import uniform_noise
from robustkit.threat import ThreatModel

from ._universal import UniversalAttack
from .losses import get_loss
from .base import register_attack


def paste(x: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x`` with the (C, s, s) ``patch`` pasted at each sample's (row, col) (differentiable in ``patch``)."""
    side = patch.shape[-1]
    n, _, height, width = x.shape
    out = []
    for i in range(n):
        r, c = int(rows[i]), int(cols[i])
        padded = nn.functional.pad(patch, (c, width - c - side, r, height - r - side))
        m = torch.zeros((1, height, width), device=x.device, dtype=x.dtype)
        m[:, r:r + side, c:c + side] = 1
        out.append(x[i] * (1 - m) + padded * m)
    return torch.stack(out)


def _draw_corners(n: int, height: int, width: int, side: int, generator: torch.Generator | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    rows = torch.randint(0, height - side + 1, (n,), generator=generator, device=gen_device).to(device)
    cols = torch.randint(0, width - side + 1, (n,), generator=generator, device=gen_device).to(device)
    return rows, cols


@register_attack()
class Patch(UniversalAttack):
    """Patch attack, per image or universal (``universal: true``, fitted on a training split)."""

    name: ClassVar[str] = "patch"
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    kind: ClassVar[str] = "patch"
    patch_aware: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 100,
        "step_size": 0.05,
        "candidates": 8,    # places tried per image when the location is searched
        "universal": False,
        "epochs": 20,       # universal: passes over the training split
        "batch_size": 50,   # universal: images per step
        "loss": "ce",
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        for key in ("steps", "candidates", "epochs", "batch_size"):
            if p[key] < 1:
                raise ConfigError(f"attack 'patch': {key}: expected an integer >= 1, got {p[key]}")
        if not p["step_size"] > 0:
            raise ConfigError(f"attack 'patch': step_size: expected a positive number, got {p['step_size']}")

    # ------------------------------------------------------------------------------------------ per image
    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sign-gradient ascent inside ``mask``; per sample the first success, else the highest-loss iterate."""
        p = self.params
        mask = mask.to(x.device).expand_as(x)
        xa = x.clone()
        best, best_loss = x.clone(), torch.full((x.shape[0],), float("-inf"), device=x.device)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for k in range(p["steps"] + 1):
            loss, grad, logits = self.loss_and_grad(model, xa, y, p["loss"], target)
            hit = (logits.argmax(1) == target) if target is not None else (logits.argmax(1) != y)
            better = ~done & (hit | (loss > best_loss))
            best = torch.where(better[:, None, None, None], xa, best)
            best_loss = torch.where(better, loss, best_loss)
            done |= hit
            if k == p["steps"] or bool(done.all()):
                break
            moved = (xa + p["step_size"] * grad.sign()).clamp(0.0, 1.0)
            xa = torch.where(mask & ~done[:, None, None, None], moved, xa)
        return best, best_loss, done

    def _searched_masks(self, x: torch.Tensor, side: int, generator: torch.Generator | None) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        out = []
        for _ in range(self.params["candidates"]):
            rows, cols = _draw_corners(x.shape[0], height, width, side, generator, torch.device("cpu"))
            out.append(square_masks(height, width, side, rows, cols).to(x.device))
        return out

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None,
                mask: torch.Tensor | None = None, patch_side: int | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        if mask is None and patch_side is None:
            raise ConfigError("attack 'patch' needs a patch threat model (robustkit.patch.patch_threat, or "
                              "threat_model: {name: patch, ...} in a sweep)")
        if self.params["universal"]:
            return self._apply_universal(model, x, y, eps, norm, target, mask, patch_side, generator)
        masks = [mask] if mask is not None else self._searched_masks(x, int(patch_side), generator)
        best, best_loss, done = self._search(model, x, y, masks[0], target)
        for m in masks[1:]:
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            cand, cand_loss, cand_done = self._search(model, x[todo], y[todo], m[todo],
                                                      None if target is None else target[todo])
            take = cand_done | (cand_loss > best_loss[todo])
            best[todo[take]] = cand[take]
            best_loss[todo[take]] = cand_loss[take]
            done[todo] = cand_done
        return best, {"places_tried": len(masks), "best_loss": best_loss.cpu()}

    # ------------------------------------------------------------------------------------------ universal
    def optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, eps: float,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
        if not self.params["universal"]:
            raise ConfigError("attack 'patch': fit() trains a universal patch; set universal: true")
        if threat.patch_side is None:
            raise ConfigError("attack 'patch': fit() needs a patch threat model")
        p = self.params
        side = int(threat.patch_side)
        height, width = x.shape[-2:]
        loss_fn = get_loss(p["loss"])
        patch = uniform_noise((x.shape[1], side, side), x, generator)
        fixed = mask_corners(threat.mask) if threat.mask is not None else None
        gen_device = generator.device if generator is not None else torch.device("cpu")
        for _ in range(p["epochs"]):
            order = torch.randperm(x.shape[0], generator=generator, device=gen_device).to(x.device)
            for start in range(0, x.shape[0], p["batch_size"]):
                idx = order[start:start + p["batch_size"]]
                if fixed is not None:
                    rows, cols = fixed[0].to(x.device)[idx], fixed[1].to(x.device)[idx]
                else:  # searched: expectation over places, redrawn every step (Brown et al. 2017)
                    rows, cols = _draw_corners(idx.numel(), height, width, side, generator, x.device)
                leaf = patch.detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(paste(x[idx], leaf, rows, cols)).float()
                    (grad,) = torch.autograd.grad(loss_fn(logits, y[idx], None).mean(), leaf)
                patch = (patch + p["step_size"] * grad.sign()).clamp(0.0, 1.0)
        return patch.detach(), {"side": side, "epochs": p["epochs"]}

    def _apply_universal(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str,
                         target: torch.Tensor | None, mask: torch.Tensor | None, patch_side: int | None,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
        patch = self.fitted_payload(model, eps, norm).to(x.device)
        side = patch.shape[-1]
        if mask is not None:
            rows, cols = mask_corners(mask)
            return paste(x, patch, rows, cols), {"universal": True, **self.fit_info}
        if patch_side is not None and side > patch_side:
            raise ConfigError(f"attack 'patch': the fitted patch has side {side}, the threat model allows {patch_side}")
        loss_fn = get_loss(self.params["loss"])
        best, best_loss = x.clone(), torch.full((x.shape[0],), float("-inf"), device=x.device)
        height, width = x.shape[-2:]
        for _ in range(self.params["candidates"]):
            rows, cols = _draw_corners(x.shape[0], height, width, side, generator, x.device)
            cand = paste(x, patch, rows, cols)
            with torch.no_grad():
                loss = loss_fn(model(cand).float(), y, target)
            take = loss > best_loss
            best[take], best_loss[take] = cand[take], loss[take]
        return best, {"universal": True, **self.fit_info}
