"""MixedNUTS (Bai, Zhou & Sojoudi, "MixedNUTS: Training-Free Accuracy-Robustness Balance via Nonlinearly Mixed
Classifiers", TMLR 2024), with the paper's adaptive attack declared.

Two members: an *accurate* classifier g (members[0]) and a *robust* classifier h (members[1]). The robust
member's logits go through the three-parameter nonlinear transform

    M(z; s, p, c) = s * |u|^p * sign(u),   u = Clamp(LN(z) + c),

where LN standardises the logits across classes (``(z - mean) / sqrt(var + 1e-8)``, unbiased variance, no
affine part) and Clamp is GELU (``clamp``: gelu | relu | elu | softplus). The output is the log of the mixed
probabilities

    log((1 - alpha) * sigma(g(x)) + alpha * softmax(M(h(x)))),

where sigma is the accurate member's one-hot prediction (``accurate_map: hardmax``, as in the official code's
operating points; ``softmax`` mixes its softmax instead). Computed in float64 (the transformed logits span
hundreds of nats), returned in float32.

Fitting (:meth:`MixedNUTS.calibrate`, the paper's algorithm): on a *calibration split*, the robust member alone
is attacked; its clean-misclassified examples and its attack-survivors are collected. For every (s, p, c) of
a grid (8 x 8 x 8: s log-spaced, p and c linear), the margins (top-1 minus top-2 transformed probability) of
the survivors give the cutoff = their (100 - beta)-th percentile, so that beta % of the robust member's
robust examples stay robust in the mixture whatever g says, and alpha = 1 / (1 + cutoff). The objective is
the fraction of clean-misclassified examples with margin >= cutoff (mistakes the accurate member cannot
fix); the minimiser wins (ties: the smallest cutoff, numerically the most stable). The split's size and
content hash are recorded (:meth:`provenance`) and its samples are ``held_out``: the evaluator refuses to
evaluate on them.

Adaptive attack (the paper's modified AutoAttack): the transform with large s and p saturates the softmax,
and the hard max has no gradient, so attacks on the exact output see masked gradients. The paper attacks the
whole mixture end to end with the transform's gradients made usable: the loss is evaluated on the exact
output, the gradient comes from the differentiable mixture

    log((1 - alpha_d) softmax(g) + alpha_d * (0.9 softmax(h) + 0.1 softmax(M(h)))),

where alpha_d is the plain (untransformed) mixture's weight for ``beta_diffable`` (default 95) and 0.9 is the
official ``raw_ratio``. Here that is a BPDA step at the mixing (exact forward bit for bit, substitute
backward), so every gradient attack -- robustkit's and the wrapped ones -- follows it automatically, and the
defense declares AutoAttack as its adaptive attack. ``gradient: exact`` keeps the naive gradient through the
transform, to show what an unmodified attack would report. Never attack a member alone: the numbers are
those of the mixture.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from robustkit.attacks import build_attack, eval_mode
from robustkit.attacks.bpda import bpda
from robustkit.data.dataset import content_hash
from robustkit.errors import ConfigError, RobustkitError
from robustkit.predict import model_device
from robustkit.threat import ThreatModel

from .base import Defense, register_defense, sample_hashes

CLAMPS = {"gelu": F.gelu, "relu": F.relu, "elu": F.elu, "softplus": F.softplus}
ACCURATE_MAPS = ("hardmax", "softmax")
GRADIENTS = ("bypass", "exact")
FITTED = ("s", "p", "c", "alpha", "alpha_diffable")
# the official search ranges for CIFAR-10 (configs/spca_initial_guess.yaml of Bai-YT/MixedNUTS)
DEFAULT_GRID = {"s": (0.05, 5.0), "p": (1.0, 4.0), "c": (-1.1, 0.0)}
MAX_CUTOFF = 1.0 - 1e-9
DEFAULT_CALIBRATION_ATTACKS = ("autoattack", {"name": "pgd", "loss": "margin", "steps": 100})


def layer_norm_logits(z: torch.Tensor) -> torch.Tensor:
    """Logits standardised across classes, per sample (LN without affine part; unbiased variance)."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.var(dim=1, keepdim=True) + 1e-8).sqrt()


def nuts_transform(z: torch.Tensor, s: float, p: float, c: float, clamp: str = "gelu") -> torch.Tensor:
    """The MixedNUTS transform ``s * |u|^p * sign(u)``, ``u = Clamp(LN(z) + c)``, in float64."""
    u = CLAMPS[clamp](layer_norm_logits(z.double()) + c)
    return s * u.abs() ** p * u.sign()


def top2_margin(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability per sample."""
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def alpha_for(margins: torch.Tensor, beta: float) -> tuple[float, float]:
    """(alpha, cutoff): the cutoff keeps ``beta`` % of ``margins`` at or above it; alpha = 1 / (1 + cutoff)."""
    cutoff = min(float(np.percentile(margins.cpu().numpy(), 100.0 - beta)), MAX_CUTOFF)
    return 1.0 / (1.0 + cutoff), cutoff


def search_grid(atk_correct: torch.Tensor, clean_incorrect: torch.Tensor, beta: float, clamp: str,
                grid: dict[str, tuple[float, float]], points: int) -> dict[str, Any]:
    """The paper's grid search over (s, p, c) on the robust member's logits (see the module docstring)."""
    ss = np.logspace(math.log10(grid["s"][0]), math.log10(grid["s"][1]), points)
    pp = np.linspace(grid["p"][0], grid["p"][1], points)
    cc = np.linspace(grid["c"][0], grid["c"][1], points)
    best: dict[str, Any] | None = None
    for s in ss:
        for c in cc:
            for p in pp:
                m_atk = top2_margin(F.softmax(nuts_transform(atk_correct, s, p, c, clamp), dim=1))
                alpha, cutoff = alpha_for(m_atk, beta)
                if clean_incorrect.shape[0]:
                    m_cln = top2_margin(F.softmax(nuts_transform(clean_incorrect, s, p, c, clamp), dim=1))
                    objective = float((m_cln >= cutoff).double().mean())
                else:
                    objective = 0.0
                key = (objective, cutoff)
                if best is None or key < (best["objective"], best["cutoff"]):
                    best = {"s": float(s), "p": float(p), "c": float(c), "alpha": alpha, "cutoff": cutoff,
                            "objective": objective}
    assert best is not None
    return best


@register_defense("mixednuts", aliases=("mixed-nuts",))
class MixedNUTS(Defense):
    """MixedNUTS mixture of ``[accurate, robust]`` members; see the module docstring.

    Parameters: ``s``, ``p``, ``c``, ``alpha``, ``alpha_diffable`` (fitted by :meth:`calibrate`, or given from
    an earlier calibration), ``clamp`` (gelu), ``accurate_map`` (hardmax | softmax), ``raw_ratio`` (0.9, the
    share of the raw robust softmax in the attack's gradient), ``gradient`` (bypass | exact) and
    ``calibration`` (a free-form record of the split the parameters were fitted on, for provenance).
    """

    name: ClassVar[str] = "mixednuts"
    takes_members: ClassVar[bool] = True
    adaptive_attacks: ClassVar[tuple[Any, ...]] = ({"name": "autoattack"},)
    defaults: ClassVar[dict[str, Any]] = {"s": None, "p": None, "c": None, "alpha": None, "alpha_diffable": None,
                                          "clamp": "gelu", "accurate_map": "hardmax", "raw_ratio": 0.9,
                                          "gradient": "bypass", "calibration": None}

    def validate(self) -> None:
        if len(self.members) != 2:
            raise ConfigError(f"{self.who}: takes exactly two members, [accurate, robust]; got {len(self.members)}")
        for key in FITTED:
            value = self.params[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{self.who}: {key}: expected a number, got {value!r}")
            if value is not None:
                self.params[key] = float(value)
        for key in ("alpha", "alpha_diffable"):
            if self.params[key] is not None and not 0 <= self.params[key] <= 1:
                raise ConfigError(f"{self.who}: {key}: expected a number in [0, 1], got {self.params[key]}")
        if self.params["s"] is not None and not self.params["s"] > 0:
            raise ConfigError(f"{self.who}: s: expected a number > 0, got {self.params['s']}")
        if self.params["p"] is not None and not self.params["p"] > 0:
            raise ConfigError(f"{self.who}: p: expected a number > 0, got {self.params['p']}")
        for key, allowed in (("clamp", tuple(CLAMPS)), ("accurate_map", ACCURATE_MAPS), ("gradient", GRADIENTS)):
            if self.params[key] not in allowed:
                raise ConfigError(f"{self.who}: {key}: expected one of {', '.join(allowed)}, got {self.params[key]!r}")
        if not 0 <= self.params["raw_ratio"] <= 1:
            raise ConfigError(f"{self.who}: raw_ratio: expected a number in [0, 1], got {self.params['raw_ratio']}")
        if self.params["gradient"] == "bypass":
            self.bpda = ["mixing"]  # reported by robustkit.attacks.bpda.bpda_parts
        self.calibration_record: dict[str, Any] | None = None
        self._calibration_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def accurate(self) -> torch.nn.Module:
        return self.members[0]

    @property
    def robust(self) -> torch.nn.Module:
        return self.members[1]

    @property
    def fitted(self) -> bool:
        return all(self.params[k] is not None for k in FITTED)

    # ------------------------------------------------------------------------------------------ forward
    def mixed_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Exact MixedNUTS output from stacked member logits ``z`` (batch, 2, classes)."""
        prm = self.params
        z_acc, z_rob = z[:, 0].double(), z[:, 1].double()
        if prm["accurate_map"] == "hardmax":
            p_acc = F.one_hot(z_acc.argmax(dim=1), z_acc.shape[1]).double()
        else:
            p_acc = F.softmax(z_acc, dim=1)
        p_rob = F.softmax(nuts_transform(z_rob, prm["s"], prm["p"], prm["c"], prm["clamp"]), dim=1)
        return torch.log((1 - prm["alpha"]) * p_acc + prm["alpha"] * p_rob).float()

    def gradient_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """The paper's differentiable mixture, whose gradient the adaptive attack follows."""
        prm = self.params
        z_acc, z_rob = z[:, 0].double(), z[:, 1].double()
        p_rob_mapped = F.softmax(nuts_transform(z_rob, prm["s"], prm["p"], prm["c"], prm["clamp"]), dim=1)
        a, r = prm["alpha_diffable"], prm["raw_ratio"]
        mixed = (1 - a) * F.softmax(z_acc, dim=1) + a * r * F.softmax(z_rob, dim=1) + a * (1 - r) * p_rob_mapped
        return torch.log(mixed).float()

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.accurate(x).float(), self.robust(x).float()], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            missing = ", ".join(k for k in FITTED if self.params[k] is None)
            raise RobustkitError(f"{self.who}: not calibrated ({missing} unset): call calibrate(x_cal, y_cal, "
                                 f"eps=...) on a calibration split, or give the parameters of an earlier calibration")
        z = self.member_logits(x)
        if self.params["gradient"] == "exact":
            return self.mixed_log_probs(z)
        return bpda(self.mixed_log_probs, self.gradient_log_probs)(z)

    # -------------------------------------------------------------------------------------- calibration
    @torch.no_grad()
    def _robust_logits(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        device = model_device(self.robust)
        return torch.cat([self.robust(x[i:i + batch_size].to(device, torch.float32)).float().cpu()
                          for i in range(0, x.shape[0], batch_size)])

    def calibrate(self, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", beta: float = 98.5,
                  beta_diffable: float = 95.0, attacks: Any = DEFAULT_CALIBRATION_ATTACKS,
                  grid: dict[str, tuple[float, float]] | None = None, points: int = 8, split: str | None = None,
                  batch_size: int = 256, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Fit s, p, c, alpha (and alpha_diffable) on the calibration split ``(x, y)`` (the paper's algorithm).

        ``attacks`` (a spec or a list, run in cascade) attack the robust member alone at ``eps`` (``norm``) to find
        its robust examples (the paper uses AutoAttack); the margins are taken at each survivor's lowest-margin
        point any attack returned (the paper's modified AutoAttack keeps that point; robustkit's AutoAttack
        returns the clean input for survivors, hence the margin-loss PGD in the default list, which returns its
        highest-loss iterate); ``beta`` is the percentage of them the mixture must keep (the paper's operating point
        on CIFAR-10 is 98.5); ``grid`` overrides the (low, high) search range of s, p and c. ``split`` describes
        the samples for provenance (e.g. "CIFAR-10 test images 100..299"). Returns the calibration record.
        """
        ranges = {**DEFAULT_GRID, **(grid or {})}
        unknown = set(ranges) - set(DEFAULT_GRID)
        if unknown:
            raise ConfigError(f"{self.who}: calibrate: grid: unknown keys {sorted(unknown)}; known: s, p, c")
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ConfigError(f"{self.who}: calibrate: expected images and one label each, got {x.shape[0]} and "
                              f"{y.shape[0]}")
        specs = list(attacks) if isinstance(attacks, (list, tuple)) else [attacks]
        if not specs:
            raise ConfigError(f"{self.who}: calibrate: attacks: expected at least one attack")
        suite = [build_attack(spec) for spec in specs]
        threat = ThreatModel(norm, float(eps))
        with eval_mode(self):
            clean = self._robust_logits(x, batch_size)
            wrong = clean.argmax(dim=1) != y.cpu()
            alive = ~wrong
            worst = clean.clone()  # per sample: the robust member's logits at its lowest-margin point so far
            for atk in suite:
                idx = alive.nonzero().squeeze(1)
                for i in range(0, idx.numel(), batch_size):
                    part = idx[i:i + batch_size]
                    res = atk(self.robust, x[part], y[part], threat, generator=generator)
                    ok = ~res.success.cpu()
                    alive[part[~ok]] = False
                    kept, adv = part[ok], self._robust_logits(res.x_adv[ok.to(res.x_adv.device)].cpu(), batch_size)
                    lower = top2_margin(F.softmax(adv, dim=1)) < top2_margin(F.softmax(worst[kept], dim=1))
                    worst[kept[lower]] = adv[lower]
            robust_idx = alive.nonzero().squeeze(1)
            if robust_idx.numel() == 0:
                raise RobustkitError(f"{self.who}: calibrate: the attacks broke every calibration example of the "
                                     f"robust member; nothing to calibrate on (smaller eps or more samples)")
        self._calibration_logits = (worst[robust_idx], clean[wrong])
        self.calibration_record = {
            "split": split, "n_examples": int(x.shape[0]), "content_hash": content_hash(x.float(), y),
            "attacks": [a.config() for a in suite], "eps": float(eps), "norm": norm,
            "robust_member_clean_wrong": int(wrong.sum()), "robust_member_attack_survivors": int(robust_idx.numel()),
            "grid": {k: list(v) for k, v in ranges.items()}, "points": points,
        }
        self.params["calibration"] = split
        self.held_out = frozenset(sample_hashes(x))
        return self.set_operating_point(beta, beta_diffable)

    def set_operating_point(self, beta: float, beta_diffable: float = 95.0) -> dict[str, Any]:
        """Re-fit s, p, c, alpha, alpha_diffable for another ``beta`` on the logits :meth:`calibrate` collected
        (no new attack): the paper's accuracy-robustness operating points come from one calibration."""
        if getattr(self, "_calibration_logits", None) is None or self.calibration_record is None:
            raise RobustkitError(f"{self.who}: set_operating_point needs calibrate(...) first")
        for name, value in (("beta", beta), ("beta_diffable", beta_diffable)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
                raise ConfigError(f"{self.who}: {name}: expected a percentage in (0, 100], got {value!r}")
        atk_logits, wrong_logits = self._calibration_logits
        record = self.calibration_record
        best = search_grid(atk_logits, wrong_logits, beta, self.params["clamp"],
                           {k: tuple(v) for k, v in record["grid"].items()}, record["points"])
        alpha_d, _ = alpha_for(top2_margin(F.softmax(atk_logits.double(), dim=1)), beta_diffable)
        self.params.update(s=best["s"], p=best["p"], c=best["c"], alpha=best["alpha"], alpha_diffable=alpha_d)
        record.update(beta=float(beta), beta_diffable=float(beta_diffable), objective=best["objective"],
                      cutoff=best["cutoff"])
        return dict(record)

    def at_operating_point(self, beta: float, beta_diffable: float = 95.0, **params: Any) -> "MixedNUTS":
        """A new MixedNUTS on the same members, fitted for ``beta`` from this one's calibration (which it keeps,
        held-out split included); ``params`` override others (e.g. ``gradient="exact"``)."""
        self.set_operating_point(beta, beta_diffable)
        other = type(self)(list(self.members), **{**self.params, **params})
        other.calibration_record = dict(self.calibration_record or {})
        other._calibration_logits = self._calibration_logits
        other.held_out = self.held_out
        return other

    # ------------------------------------------------------------------------------------------ records
    def provenance(self) -> dict[str, Any]:
        out = self.config()
        if self.calibration_record is not None:
            out["calibration_record"] = self.calibration_record
        return out

    def describe(self) -> str:
        prm = self.params
        if not self.fitted:
            return "mixednuts(uncalibrated)"
        text = (f"mixednuts(s={prm['s']:.4g}, p={prm['p']:.4g}, c={prm['c']:.4g}, alpha={prm['alpha']:.6g}, "
                f"alpha_diffable={prm['alpha_diffable']:.4g}, clamp={prm['clamp']}, accurate_map={prm['accurate_map']}, "
                f"gradient={prm['gradient']}")
        return text + (f", calibration={prm['calibration']})" if prm["calibration"] else ")")

