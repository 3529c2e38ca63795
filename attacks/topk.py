"""Ordered top-K attack (``topk``): make the model's K highest logits be a given list of classes, in order.

``method: quad`` (default) is QuadAttack (Paniagua, Grainger & Wu, CVPR 2024). The logits are
``z = W h + b`` with ``h`` the penultimate features (read by a forward hook on the model's final
``nn.Linear``). Each iteration solves, per sample, the quadratic program

    h* = argmin ||h' - h||^2   s.t.  (W h' + b)_{t_i} - (W h' + b)_{t_(i+1)} >= kappa   (i < K)
                                     (W h' + b)_{t_K} - (W h' + b)_j       >= kappa   (j not in t)

(the closest features whose logits have the wanted ordered top K), then maps it back to the input with one
step of back-propagation of ``||h(x') - h*||^2`` under the Lp budget (sign step for Linf, normalised step for
L2, then projection). ``method: cw`` is the baseline: PGD on the Carlini-Wagner-style ordered top-K hinge
loss ``sum_i max(0, z_(t_(i+1)) - z_(t_i) + kappa) + max(0, max_(j not in t) z_j - z_(t_K) + kappa)``.

The QP is solved by ``quadprog`` (Goldfarb-Idnani dual active set, exact for these small dense problems:
C - 1 constraints in the feature dimension; README explains the choice). Models whose logits are not the
output of a final ``nn.Linear`` are refused with a one-line error (``method: cw`` needs no such layer).

Targets: ``targeted: random`` draws K distinct classes other than the true label per sample (from the
generator); ``targeted: given`` takes an (n, K) tensor of ordered lists. The base class judges the first
target (its re-prediction decides ``success`` for K = 1); :func:`ordered_topk_success` re-predicts the
returned inputs for the full ordered list.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import quadprog
import torch
from torch import nn

from robustkit.errors import ConfigError, RobustkitError
from robustkit.steps import per_sample, steepest_direction
from robustkit.threat import project

from .base import Attack, register_attack

METHODS = ("quad", "cw")


def final_linear(model: nn.Module, x: torch.Tensor) -> nn.Linear:
    """The ``nn.Linear`` whose output is the model's logits; ConfigError if there is none."""
    outputs: dict[int, torch.Tensor] = {}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hooks = [m.register_forward_hook(lambda mod, inp, out, key=id(m): outputs.__setitem__(key, out.detach()))
             for m in linears]
    try:
        with torch.no_grad():
            logits = model(x[:2]).detach()
    finally:
        for h in hooks:
            h.remove()
    for m in reversed(linears):
        out = outputs.get(id(m))
        if out is not None and out.shape == logits.shape and torch.allclose(out.float(), logits.float()):
            return m
    raise ConfigError(f"attack 'topk': method quad needs a model whose logits are the output of a final "
                      f"nn.Linear layer; {type(model).__name__} has none (use method: cw)")


def features_and_logits(model: nn.Module, layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (the final linear layer's input, in the graph) and the logits."""
    store: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda mod, inp, out: store.append(inp[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return store[0].reshape(x.shape[0], -1), logits


def order_constraints(weight: np.ndarray, bias: np.ndarray, targets: np.ndarray, kappa: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with ``A @ h >= c`` exactly when the logits ``W h + b`` have ``targets`` as ordered top K."""
    k = len(targets)
    others = [j for j in range(weight.shape[0]) if j not in set(targets.tolist())]
    pairs = [(targets[i], targets[i + 1]) for i in range(k - 1)] + [(targets[-1], j) for j in others]
    a = np.stack([weight[hi] - weight[lo] for hi, lo in pairs])
    c = np.array([kappa - (bias[hi] - bias[lo]) for hi, lo in pairs])
    return a, c


def solve_feature_qp(h: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """argmin ||h' - h||^2 s.t. a h' >= c, with quadprog (minimises 1/2 x'Gx - a'x s.t. C'x >= b)."""
    try:
        return quadprog.solve_qp(np.eye(h.shape[0]), h.astype(np.float64), a.T.astype(np.float64),
                                 c.astype(np.float64))[0]
    except ValueError as exc:  # "constraints are inconsistent": the final layer cannot order these classes
        raise RobustkitError(f"attack 'topk': the feature-space QP has no solution ({exc})") from None


def cw_topk_loss(logits: torch.Tensor, targets: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per-sample ordered top-K hinge loss (to minimise); 0 exactly when every margin is >= kappa."""
    zt = logits.gather(1, targets)
    chain = (zt[:, 1:] - zt[:, :-1] + kappa).clamp_min(0).sum(dim=1)
    rest = logits.clone()
    rest.scatter_(1, targets, float("-inf"))
    return chain + (rest.amax(dim=1) - zt[:, -1] + kappa).clamp_min(0)


def ordered_topk_success(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: the K largest logits are ``targets``, in this order."""
    return (logits.topk(targets.shape[1], dim=1).indices == targets).all(dim=1)


@register_attack()
class TopK(Attack):
    """QuadAttack (``method: quad``) or the CW-loss PGD baseline (``method: cw``) for ordered top-K targets."""

    name: ClassVar[str] = "topk"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    kind: ClassVar[str] = "white-box"
    defaults: ClassVar[dict[str, Any]] = {
        "targeted": "random",
        "k": 1,
        "method": "quad",
        "steps": 60,
        "rel_step_size": None,  # default 2.5 * eps / steps
        "kappa": 0.5,           # logit margin between consecutive targets
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p["targeted"] not in ("random", "given"):
            raise ConfigError(f"attack 'topk': targeted: expected random or given, got {p['targeted']!r}")
        if p["method"] not in METHODS:
            raise ConfigError(f"attack 'topk': method: expected one of {', '.join(METHODS)}, got {p['method']!r}")
        if p["k"] < 1 or p["steps"] < 1:
            raise ConfigError(f"attack 'topk': k and steps must be >= 1, got k={p['k']}, steps={p['steps']}")
        if p["rel_step_size"] is not None and not p["rel_step_size"] > 0:
            raise ConfigError(f"attack 'topk': rel_step_size: expected a positive number, got {p['rel_step_size']}")
        if not p["kappa"] >= 0:
            raise ConfigError(f"attack 'topk': kappa: expected a number >= 0, got {p['kappa']}")
        self.lists: torch.Tensor | None = None  # the ordered targets of the last call, (n, K)

    def resolve_target(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                       generator: torch.Generator | None) -> torch.Tensor | None:
        """Resolve the (n, K) ordered lists (kept in ``self.lists``) and give the base class the first target."""
        k = self.params["k"]
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1]) if x.shape[0] else k + 1
        if k > num_classes - 1:
            raise ConfigError(f"attack 'topk': k={k} needs k <= classes - 1 = {num_classes - 1}")
        if self.params["targeted"] == "given":
            lists = self._check_lists(y, target, num_classes)
        else:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            scores = torch.rand(y.shape[0], num_classes, generator=generator, device=gen_device).to(y.device)
            scores.scatter_(1, y[:, None], 2.0)  # the true class sorts last: never a target
            lists = scores.argsort(dim=1)[:, :k]
        self.lists = lists
        return lists[:, 0]

    def _check_lists(self, y: torch.Tensor, target: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        k, who = self.params["k"], "attack 'topk': targeted: given"
        if target is None:
            raise ConfigError(f"{who} needs an (n, {k}) tensor of ordered target lists")
        lists = torch.as_tensor(target).to(device=y.device)
        if lists.dtype.is_floating_point or lists.dim() != 2 or tuple(lists.shape) != (y.shape[0], k):
            raise ConfigError(f"{who}: expected integer target lists of shape ({y.shape[0]}, {k}), "
                              f"got {lists.dtype} {tuple(lists.shape)}")
        lists = lists.long()
        if lists.numel() and (int(lists.min()) < 0 or int(lists.max()) >= num_classes):
            raise ConfigError(f"{who}: target classes must be in 0..{num_classes - 1}")
        if bool((lists == y[:, None]).any()):
            raise ConfigError(f"{who}: a target list contains the sample's true label")
        if any(len(set(row)) != k for row in lists.tolist()):
            raise ConfigError(f"{who}: each target list needs {k} distinct classes")
        return lists

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        lists = self.lists
        assert lists is not None and lists.shape[0] == x.shape[0]
        layer = final_linear(model, x) if p["method"] == "quad" else None
        alpha = eps * (p["rel_step_size"] if p["rel_step_size"] is not None else 2.5 / p["steps"])
        xa, best = x.clone(), x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        steps_run = 0
        for step in range(p["steps"] + 1):
            xr = xa.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                if layer is not None:
                    feats, logits = features_and_logits(model, layer, xr)
                    goal = self._qp_targets(feats.detach(), layer, lists)
                    loss = ((feats - goal) ** 2).sum(dim=1)
                else:
                    logits = model(xr)
                    loss = cw_topk_loss(logits.float(), lists, p["kappa"])
                hit = ordered_topk_success(logits.detach(), lists)
                new = hit & ~done
                best[new] = xa[new]
                done |= hit
                if step == p["steps"] or bool(done.all()):
                    break
                (grad,) = torch.autograd.grad(loss.sum(), xr)
            moved = xa - per_sample(alpha, xa) * steepest_direction(grad, norm)
            xa = torch.where(per_sample(done, xa), xa, project(x, moved, eps, norm))
            steps_run += 1
        best[~done] = xa[~done]
        return best, {"topk_targets": lists.cpu(), "topk_hit": done.cpu(), "steps_run": steps_run}

    def _qp_targets(self, feats: torch.Tensor, layer: nn.Linear, lists: torch.Tensor) -> torch.Tensor:
        """Per sample, the closest features whose logits have the ordered top K (the QP above)."""
        weight = layer.weight.detach().double().cpu().numpy()
        bias = (layer.bias.detach().double().cpu().numpy() if layer.bias is not None
                else np.zeros(weight.shape[0]))
        h = feats.double().cpu().numpy()
        out = np.empty_like(h)
        for i, targets in enumerate(lists.cpu().numpy()):
            a, c = order_constraints(weight, bias, targets, self.params["kappa"])
            out[i] = solve_feature_qp(h[i], a, c)
        return torch.from_numpy(out).to(device=feats.device, dtype=feats.dtype)
