"""Threat models: the norm ball an attack may search, projection onto it, and the budget check.

Inputs live in [0, 1]. A perturbation counts only if ``x_adv`` is in [0, 1] and
``||x_adv - x||_p <= eps * (1 + 1e-6)`` (norm computed in float64). :func:`project` is written so that
its output always passes :func:`check_budget`, also after float32 rounding of ``x + delta``.

A patch threat model (:mod:`robustkit.patch`) restricts *where* x may change on top of the ball: either a
known ``mask`` per sample (a patch at a fixed or random place: every changed value must lie inside it) or
only a ``patch_side`` (a patch the attack places itself: all changed pixels must fit in one square of that
side). The check compares values exactly, so a single stray pixel outside the patch is a violation.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Union

import torch

from .errors import BudgetViolationError, ConfigError, short_repr

NORMS = ("Linf", "L2", "L1")
_NORM_ALIASES = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "2": "L2", "l1": "L1", "1": "L1"}
RTOL = 1e-6

EpsLike = Union[float, torch.Tensor]


def canonical_norm(norm: str) -> str:
    """'linf'/'inf' → 'Linf', 'l2' → 'L2', 'l1' → 'L1'; anything else is a ConfigError."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise ConfigError(f"threat_model.norm: expected one of Linf, L2, L1, got {short_repr(norm)}")
    return _NORM_ALIASES[key]


def parse_eps(value: object, field: str = "eps") -> float:
    """Accept 0.03, '0.03', '8/255' (a fraction) and return a float; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a number or a fraction like 8/255, got {short_repr(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{field}: expected a number or a fraction like 8/255, got {short_repr(value)}")


def validate_eps(eps: float, norm: str, field: str = "eps") -> float:
    """eps must be > 0, and <= 1 for Linf (inputs are in [0, 1])."""
    if not eps > 0:
        raise ConfigError(f"{field}: expected eps > 0, got {eps}")
    if norm == "Linf" and eps > 1:
        raise ConfigError(f"{field}: Linf eps must be <= 1 for inputs in [0, 1], got {eps} (did you mean {eps}/255?)")
    return eps


@dataclass(frozen=True)
class ThreatModel:
    """A norm ball of radius ``eps`` around each input. ``eps`` may be a float or a per-sample tensor.

    ``mask`` (bool, (n, 1 or C, H, W)): where each sample may change (a patch at a known place);
    ``patch_side``: the changed pixels of each sample must fit in a square of this side (a placed patch).
    """

    norm: str
    eps: EpsLike
    mask: torch.Tensor | None = None
    patch_side: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))

    def eps_tensor(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """eps as a float32 tensor of shape (n,)."""
        if isinstance(self.eps, torch.Tensor):
            e = self.eps.to(device=device, dtype=torch.float32).reshape(-1)
            if e.numel() == 1:
                e = e.expand(n)
            if e.numel() != n:
                raise ValueError(f"per-sample eps has {e.numel()} entries for a batch of {n}")
            return e.clone()
        return torch.full((n,), float(self.eps), device=device, dtype=torch.float32)

    def subset(self, index: torch.Tensor) -> "ThreatModel":
        """The same threat model for a subset of the batch (per-sample eps follows the index)."""
        eps = self.eps
        if isinstance(eps, torch.Tensor) and eps.numel() > 1:
            eps = eps[index.to(eps.device)]
        mask = None if self.mask is None else self.mask[index.to(self.mask.device)]
        return ThreatModel(self.norm, eps, mask, self.patch_side)

    def describe(self) -> str:
        eps = self.eps if not isinstance(self.eps, torch.Tensor) else "per-sample"
        where = "" if self.mask is None else ", patch mask"
        where += "" if self.patch_side is None else f", patch side {self.patch_side}"
        return f"{self.norm} eps={eps}{where}"


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def perturbation_norm(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ||x_adv - x||_p in float64 (shape (n,))."""
    d = _flat(x_adv.detach().double() - x.detach().double())
    norm = canonical_norm(norm)
    if norm == "Linf":
        return d.abs().amax(dim=1) if d.shape[1] else torch.zeros(d.shape[0], dtype=torch.float64)
    if norm == "L2":
        return d.norm(p=2, dim=1)
    return d.abs().sum(dim=1)


def _bcast(e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return e.reshape(-1, *([1] * (like.dim() - 1)))


def _project_l1_ball(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` onto the L1 ball of radius eps (Duchi et al. 2008)."""
    flat = _flat(delta)
    abs_ = flat.abs()
    inside = abs_.sum(dim=1) <= eps
    mu, _ = abs_.sort(dim=1, descending=True)
    cums = mu.cumsum(dim=1)
    ar = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = mu - (cums - eps[:, None]) / ar > 0
    rho = cond.float().cumsum(dim=1).argmax(dim=1)  # last index where cond holds
    theta = (cums.gather(1, rho[:, None]).squeeze(1) - eps) / (rho + 1).to(flat.dtype)
    theta = torch.where(inside, torch.zeros_like(theta), theta.clamp_min(0))
    out = flat.sign() * (abs_ - theta[:, None]).clamp_min(0)
    return out.reshape(delta.shape)


def _shrink(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """``delta`` projected onto the L2 / L1 ball of radius ``eps * (1 - 1e-5)`` (per row)."""
    target = eps * (1 - 1e-5)
    if norm == "L2":
        n = _flat(delta).norm(p=2, dim=1)
        factor = torch.where(n > target, target / n.clamp_min(1e-12), torch.ones_like(n))
        return delta * _bcast(factor, delta)
    return _project_l1_ball(delta, target)


def _settle_l2_l1(x: torch.Tensor, out: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Rows of an L2 / L1 projection that rounding left over eps (eps only a few ulps of the pixels, or an
    L1 projection that cancelled against far-away values): project their already-small delta again in float64,
    round, then step coordinates one ulp toward ``x`` while still over. Rows within eps stay exactly as they
    are. Unconditional ``torch.where`` passes: no host sync inside attack loops. Found by the property tests
    of tests/hostile/test_properties.py (eps 1e-4 on a pixel at 0.75 in float32)."""
    e = eps.double()
    over = _bcast(perturbation_norm(x, out, norm) > e * (1 - 1e-7), out)
    redo = (x.double() + _shrink(out.double() - x.double(), e, norm)).clamp(0.0, 1.0).to(out.dtype)
    out = torch.where(over, redo, out)
    for _ in range(2):
        over = _bcast(perturbation_norm(x, out, norm) > e * (1 - 1e-7), out)
        out = torch.where(over, torch.nextafter(out, x), out)
    return out


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor | float, norm: str,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Project ``x_adv`` onto {z in [0,1]: ||z - x||_p <= eps}, robust to float32 rounding.

    ``eps`` is a float or a per-sample tensor of shape (n,). The result always passes :func:`check_budget`
    (property-tested for every norm, eps, shape and both supported dtypes, float32 and float64).
    With a patch ``mask``, values outside it are reset to ``x`` exactly (before the norm projection).
    """
    if mask is not None:
        x_adv = torch.where(mask.to(x.device).expand_as(x), x_adv, x)
    norm = canonical_norm(norm)
    if x.dtype not in (torch.float32, torch.float64):
        # one ulp of a half-precision pixel (up to 2**-11) is larger than the budget's tolerance: no rounding
        # step could keep the result provably inside the ball, so say so instead of returning such a point
        raise ConfigError(f"project: inputs must be float32 or float64, got {x.dtype} (attacks run in fp32)")
    if not isinstance(eps, torch.Tensor):
        eps = torch.full((x.shape[0],), float(eps), device=x.device, dtype=x.dtype)
    eps = eps.to(device=x.device, dtype=x.dtype)
    delta = x_adv - x
    if norm == "Linf":
        e = _bcast(eps, delta)
        delta = torch.maximum(torch.minimum(delta, e), -e)
    else:
        # shrink slightly below eps so that rounding in x + delta cannot push the norm over eps * (1 + 1e-6)
        delta = _shrink(delta, eps, norm)
    out = (x + delta).clamp(0.0, 1.0)
    if norm == "Linf":
        # x + delta rounds in float32: step any coordinate that ended one ulp outside back toward x
        # (two unconditional passes: no host sync inside attack loops; one ulp is all rounding can add)
        e = _bcast(eps, out).double()
        for _ in range(2):
            over = (out.double() - x.double()).abs() > e
            out = torch.where(over, torch.nextafter(out, x), out)
    else:
        out = _settle_l2_l1(x, out, eps, norm)
    return out.detach()


def check_budget(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor | float, norm: str,
                 *, rtol: float = RTOL, who: str = "attack", mask: torch.Tensor | None = None,
                 patch_side: int | None = None) -> torch.Tensor:
    """Raise BudgetViolationError unless every x_adv is in [0, 1] and within eps (relative tol rtol).

    With a patch ``mask`` no value outside it may differ from ``x``; with ``patch_side`` the changed pixels
    of each sample must fit in a square of that side. Returns the per-sample perturbation norms (float64).
    """
    if x_adv.shape != x.shape:
        raise BudgetViolationError(f"{who} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise BudgetViolationError(f"{who} returned non-finite values")
    lo, hi = float(x_adv.min()) if x_adv.numel() else 0.0, float(x_adv.max()) if x_adv.numel() else 0.0
    if lo < 0.0 or hi > 1.0:
        raise BudgetViolationError(f"{who} left the input range [0, 1] (min {lo:.6g}, max {hi:.6g})")
    _check_patch(x, x_adv, mask, patch_side, who)
    norms = perturbation_norm(x, x_adv, norm)
    if not isinstance(eps, torch.Tensor):
        eps_t = torch.full_like(norms, float(eps))
    else:
        eps_t = eps.detach().to(device=norms.device, dtype=torch.float64).reshape(-1).expand_as(norms)
    bad = norms > eps_t * (1 + rtol)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise BudgetViolationError(
            f"{who} exceeded its {norm} budget on {int(bad.sum())} sample(s): e.g. norm {float(norms[i]):.8g} > eps "
            f"{float(eps_t[i]):.8g} (relative tolerance {rtol:g})"
        )
    return norms


def _check_patch(x: torch.Tensor, x_adv: torch.Tensor, mask: torch.Tensor | None, patch_side: int | None,
                 who: str) -> None:
    """The patch part of the budget check: exact comparison, any channel counts as a changed pixel."""
    if mask is None and patch_side is None:
        return
    changed = (x_adv.detach() != x.detach()).any(dim=1)  # (n, H, W)
    if mask is not None:
        m = mask.to(changed.device).bool()
        m = m.any(dim=1) if m.dim() == 4 else m
        outside = changed & ~m.expand_as(changed)
        if bool(outside.any()):
            per = outside.flatten(1).sum(dim=1)
            i = int(per.nonzero()[0])
            raise BudgetViolationError(f"{who} changed pixels outside its patch on {int((per > 0).sum())} "
                                       f"sample(s): e.g. sample {i}, {int(per[i])} pixel(s)")
    if patch_side is not None:
        rows, cols = changed.any(dim=2), changed.any(dim=1)  # (n, H), (n, W)
        for name, axis in (("rows", rows), ("columns", cols)):
            idx = torch.arange(axis.shape[1], device=axis.device)
            first = torch.where(axis, idx, axis.shape[1]).amin(dim=1)
            last = torch.where(axis, idx, -1).amax(dim=1)
            span = (last - first + 1).clamp_min(0)
            bad = span > patch_side
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise BudgetViolationError(f"{who} changed pixels spanning {int(span[i])} {name} on sample {i}, "
                                           f"more than its {patch_side}-pixel patch")
