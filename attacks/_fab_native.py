"""FAB-T (targeted FAB, Croce & Hein 2020) with per-sample exits: the official algorithm, minus wasted passes.

The official ``FABAttack.attack_single_run`` iterates every sample of its batch ``n_iter`` times. In
AutoAttack's FAB-T every sample is attacked 9 times (one run per target class) for 100 iterations, each
iteration costing a forward and a backward pass plus a forward pass to check the new point. Two kinds of
iterations can be skipped per sample without changing any verdict:

* **broken**: once a sample has an adversarial point within ``eps`` (``res2 <= eps``), the official code
  only ever replaces it by adversarial points of smaller norm, so its verdict at the end (re-predicted,
  norm checked against ``eps``) is "broken" whatever happens next. Here it leaves the run at once, with the
  first such point (re-predicted by :func:`perturb_targeted` and by the cascade, as the official one is).
* **fixed point**: one iteration maps the current point ``x1`` to ``G(x1)``, a function of ``x1`` and of the
  sample's constants only (clean input, label, target class; the model is deterministic; no randomness is
  drawn inside the loop), and moves ``x1`` elsewhere only when ``G(x1)`` is adversarial. So when
  ``G(x1) == x1`` exactly (bit for bit) and ``G(x1)`` is not adversarial, every later iteration computes the
  same ``G(x1)`` and gets the same answer: the sample's state (point, best adversarial point, its norm) is
  final. That is what a model with exactly zero input gradients does: the linearised boundary has ``w = 0``,
  the official projection returns ``d = 0``, and ``x1`` becomes ``x1 (1 - alpha) + x alpha`` with
  ``alpha = alpha_max``, a contraction towards the clean input that reaches a float fixed point within a few
  iterations (each coordinate is a monotone sequence in a finite set). No tolerance is used: a sample whose
  point still changes in the last bit keeps iterating.

Every other quantity is per sample: the projection (the official ``fab_projections`` functions of the
installed package are called, row by row independent), the step ``alpha``, the point; so the samples still
iterated follow the official trajectory exactly. The random start (only for restarts after the first, as in
the official code) is drawn for the whole batch before any sample leaves. Linf and L2 only.
``tests/test_autoattack_speed.py`` checks the per-sample verdicts against the official ``FABAttack_PT``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NORMS = ("Linf", "L2")
Projection = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _norm_rows(t: torch.Tensor, norm: str) -> torch.Tensor:
    """The official per-sample size of a perturbation (the same operations, so the same float values)."""
    if norm == "Linf":
        return t.abs().reshape(t.shape[0], -1).max(dim=1)[0]
    return (t ** 2).reshape(t.shape[0], -1).sum(dim=-1).sqrt()


def _shape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape([-1, *[1] * (like.dim() - 1)])


def _targeted_diff(model: nn.Module, x1: torch.Tensor, la: torch.Tensor, target: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``z_target - z_label`` at ``x1`` and its input gradient (one forward, one backward)."""
    u = torch.arange(x1.shape[0], device=x1.device)
    im = x1.clone().requires_grad_()
    with torch.enable_grad():
        z = model(im)
        diff = -(z[u, la] - z[u, target])
        grad = torch.autograd.grad(diff.sum(), [im])[0]
    return diff.detach(), grad.detach()


def _random_start(im2: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The official start of restarts after the first: half the eps-sphere's radius, random direction
    (drawn on the CPU, as the official code draws it)."""
    dev = im2.device
    r = _shape(torch.min(1e10 * torch.ones([im2.shape[0]], device=dev), eps * torch.ones([im2.shape[0]], device=dev)),
               im2)
    if norm == "Linf":
        t = 2 * torch.rand(im2.shape).to(dev) - 1
        x1 = im2 + r * t / _shape(t.reshape([t.shape[0], -1]).abs().max(dim=1, keepdim=True)[0], im2) * .5
    else:
        t = torch.randn(im2.shape).to(dev)
        x1 = im2 + r * t / _shape((t ** 2).view(t.shape[0], -1).sum(dim=-1).sqrt(), im2) * .5
    return x1.clamp(0.0, 1.0)


def _step(model: nn.Module, x1: torch.Tensor, im2: torch.Tensor, la: torch.Tensor, target: torch.Tensor, norm: str,
          alpha_max: float, eta: float, projection: Projection) -> torch.Tensor:
    """``G(x1)``: the official FAB step towards the linearised target boundary, mixed with the same step from
    the clean input (one forward and one backward pass)."""
    bs, dev = x1.shape[0], x1.device
    df, dg = _targeted_diff(model, x1, la, target)
    w = dg.reshape([bs, -1])
    b = -df + (dg * x1).reshape(bs, -1).sum(dim=-1)
    d3 = projection(torch.cat((x1.reshape([bs, -1]), im2.reshape([bs, -1])), 0), torch.cat((w, w), 0),
                    torch.cat((b, b), 0))
    d1, d2 = d3[:bs].reshape(x1.shape), d3[-bs:].reshape(x1.shape)
    a0 = d3.abs().max(dim=1, keepdim=True)[0] if norm == "Linf" else (d3 ** 2).sum(dim=1, keepdim=True).sqrt()
    a0 = _shape(a0, x1)
    a0 = torch.max(a0, 1e-8 * torch.ones(a0.shape, device=dev))
    a1, a2 = a0[:bs], a0[-bs:]
    alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros(a1.shape, device=dev)),
                      alpha_max * torch.ones(a1.shape, device=dev))
    return ((x1 + eta * d1) * (1 - alpha) + (im2 + d2 * eta) * alpha).clamp(0.0, 1.0)


def run_rows(model: nn.Module, im2: torch.Tensor, la2: torch.Tensor, target: torch.Tensor, sample: torch.Tensor, *,
             eps: float, norm: str, n_iter: int, alpha_max: float, eta: float, beta: float, projection: Projection,
             rand_start: bool = False, skip_fixed_points: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The official targeted ``attack_single_run`` on rows (clean input ``im2``, label ``la2``, target class
    ``target``), with the per-sample exits of the module docstring.

    ``sample`` names the sample each row attacks: a sample found adversarial within ``eps`` by one of its
    rows leaves with all its rows (its verdict is "broken" whatever they would find). Returns, per row, the
    smallest adversarial point found (the clean input where none was) and its norm (1e10 where none)."""
    x1 = _random_start(im2, eps, norm) if rand_start else im2.clone()
    adv = im2.clone()
    res2 = 1e10 * torch.ones([im2.shape[0]], device=im2.device)
    broken = torch.zeros(int(sample.max()) + 1 if sample.numel() else 0, dtype=torch.bool, device=im2.device)
    live = torch.arange(im2.shape[0], device=im2.device)  # row of each row still iterated
    for _ in range(n_iter):
        if live.numel() == 0:
            break
        with torch.no_grad():
            x_new = _step(model, x1, im2[live], la2[live], target[live], norm, alpha_max, eta, projection)
            is_adv = model(x_new).max(1)[1] != la2[live]
            fixed = ~is_adv & (x_new == x1).reshape(x1.shape[0], -1).all(1)
            if bool(is_adv.any()):  # the official bookkeeping, with its arithmetic (same float values)
                now = live[is_adv]
                t = _norm_rows(x_new[is_adv] - im2[now], norm)
                better, worse = _shape((t < res2[now]).float(), x1), _shape((t >= res2[now]).float(), x1)
                adv[now] = x_new[is_adv] * better + adv[now] * worse
                res2[now] = t * (t < res2[now]).float() + res2[now] * (t >= res2[now]).float()
                x_new[is_adv] = im2[now] + (x_new[is_adv] - im2[now]) * beta
                broken[sample[now[res2[now] <= eps]]] = True  # within eps: the final verdict is "broken"
            done = broken[sample[live]]
            if skip_fixed_points:
                done = done | fixed
            x1 = x_new[~done]
            live = live[~done]
    return adv, res2


def perturb_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                     projection: Projection, n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9,
                     alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, seed: int = 0,
                     skip_fixed_points: bool = True, max_rows: int | None = None) -> torch.Tensor:
    """The official ``FABAttack.perturb`` with ``targeted``: for each of the ``n_target_classes`` highest
    other classes (each ``n_restarts`` times), a run on the samples still robust; a sample counts as broken
    when its returned point is misclassified and within ``eps``.

    With one restart (AutoAttack's FAB-T) nothing random is drawn, and each (sample, target class) run is a
    function of that sample and target alone, so the target classes run side by side as rows of one batch,
    as many as fit in ``max_rows`` rows (default: ``x``'s batch size, so memory never exceeds what the
    official run holds for this batch): the same runs, hence the same verdicts, in fewer and larger
    batches. The official order (target by target, each on the samples the earlier ones left) only decides
    which runs are skipped; here a sample leaves all its rows once one of them breaks it. With restarts,
    the random starts depend on how many samples each earlier run left, so the runs go one by one in the
    official order."""
    if norm not in NORMS:
        raise ValueError(f"native FAB-T supports {NORMS}, not {norm}")
    x = x.detach().clone().float()
    y = y.detach().clone().long()
    adv = x.clone()
    common = dict(eps=eps, norm=norm, n_iter=n_iter, alpha_max=alpha_max, eta=eta, beta=beta,
                  projection=projection, skip_fixed_points=skip_fixed_points)
    with torch.no_grad():
        acc = model(x).max(1)[1] == y
        torch.random.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.random.manual_seed(seed)
        classes = list(range(2, n_target_classes + 2))
        if n_restarts == 1:  # groups of target classes side by side
            per_group = max((x.shape[0] if max_rows is None else max_rows) // max(int(acc.sum()), 1), 1)
            schedule = [(classes[i:i + per_group], False) for i in range(0, len(classes), per_group)]
        else:  # one run at a time, in the official order
            schedule = [([k], restart > 0) for k in classes for restart in range(n_restarts)]
        for group, rand_start in schedule:
            idx = acc.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            order = model(x[idx]).sort(dim=-1)[1]  # the official run's targets: its k-th highest logits
            target = torch.cat([order[:, -k] for k in group])
            sample = torch.arange(idx.numel(), device=x.device).repeat(len(group))
            xs, ys = x[idx][sample], y[idx][sample]
            cur, _ = run_rows(model, xs, ys, target, sample, rand_start=rand_start, **common)
            hit = (model(cur).max(1)[1] != ys) & (_norm_rows(xs - cur, norm) <= eps)
            for row in hit.nonzero().squeeze(1).tolist():  # the first breaking row of each sample counts
                i = int(idx[sample[row]])
                if bool(acc[i]):
                    acc[i] = False
                    adv[i] = cur[row]
    return adv
