"""APGD (Croce & Hein 2020) with per-sample early exit: the official algorithm, minus the wasted passes.

The official ``APGDAttack.attack_single_run`` keeps iterating every sample of its batch for all ``n_iter``
iterations, including samples it has already broken. Every quantity of the algorithm is per sample (step
size, momentum, best point, the oscillation checkpoints; the loss is a sum of per-sample losses, so each
sample's gradient is its own), except two things that do not depend on the samples: the checkpoint
schedule ``k`` and the random start, which is drawn once for the whole batch at the start of a run. So a
sample that is dropped from the batch the moment it is misclassified changes nothing for the others: the
samples still robust follow exactly the official trajectory under the same seed, and a dropped sample's
verdict (broken) is final in the official code too (``acc = min(acc, pred)``). What differs is which
misclassified point is returned for a broken sample: the first one found here, the last one there; both are
re-predicted by the cascade before they count.

This module implements the Linf and L2 versions (the L1 version, with its sparsity schedule and 3x/2x/1x
eps, runs from the official package). Written from the paper and checked against the official code at
fra31/auto-attack a392200 (``autoattack/autopgd_base.py``); ``tests/test_autoattack_speed.py`` checks the
per-sample verdicts against the installed official package on real data.

**Fixed-point exit** (``skip_fixed_points``, on by default for deterministic models): a sample whose
state can no longer change (:func:`fixed_points`: zero gradient, zero momentum, at its best point, left in
place by the projection) is dropped too, reported robust with its best point and loss. That is what a
model with exactly zero input gradients (a non-differentiable input quantizer, a saturated softmax) does
in the official loop: it re-evaluates the same point for all remaining iterations. Its verdict, best point
and best loss are those the official code returns, so this keeps everything the early exit keeps.

``x_init`` (a start point instead of the random one) is used only by
:mod:`robustkit.attacks.autoattack_fast`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

NORMS = ("Linf", "L2")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None) -> torch.Tensor:
    """Untargeted difference-of-logits ratio (scale invariant, so saturated softmax does not hide gradients)."""
    srt, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).float()
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - srt[:, -2] * top_is_y - srt[:, -1] * (1.0 - top_is_y)) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None) -> torch.Tensor:
    assert y_target is not None
    srt, _ = logits.sort(dim=1)
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - logits[u, y_target]) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": dlr_targeted_loss}


def _per_sample_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.view(t.shape[0], -1)
    n = flat.abs().max(1)[0] if norm == "Linf" else (flat ** 2).sum(-1).sqrt()
    return n.view(-1, *([1] * (t.dim() - 1)))


def _normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (_per_sample_norm(t, norm) + 1e-12)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return (t ** 2).view(t.shape[0], -1).sum(-1).sqrt().view(-1, *([1] * (t.dim() - 1)))


def _project(x: torch.Tensor, z: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The official projection of ``z`` onto the eps-ball around ``x`` intersected with [0, 1]."""
    if norm == "Linf":
        return torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0.0, 1.0)
    return torch.clamp(x + _normalize(z - x, "L2") * torch.min(eps * torch.ones_like(x), _l2(z - x)), 0.0, 1.0)


def _project_step(x: torch.Tensor, x_adv: torch.Tensor, x_new: torch.Tensor, grad2: torch.Tensor, a: float,
                  eps: float, norm: str) -> torch.Tensor:
    """The official momentum step: project the plain step, mix it with the previous move, project again."""
    x1 = _project(x, x_new, eps, norm)
    return _project(x, x_adv + (x1 - x_adv) * a + grad2 * (1 - a), eps, norm)


def _all_rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1).all(1)


def fixed_points(x: torch.Tensor, x_adv: torch.Tensor, x_adv_old: torch.Tensor, x_best: torch.Tensor,
                 grad: torch.Tensor, grad_best: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Per sample, at the top of an iteration: True where no later iteration can change anything.

    The conditions, all exact (bit for bit, no tolerance): the gradient about to be used is zero, the last
    move ``x_adv - x_adv_old`` (the momentum term) is zero, the current point is the best point, the
    gradient stored with the best point is zero, and the projection leaves the current point where it is.
    Then the step is ``project(x_adv + step_size * 0)`` mixed with a zero momentum = ``x_adv`` (whatever
    the step size and the momentum weight), the model is evaluated at the same point again (same logits,
    same loss, again a zero gradient, for a deterministic model), the loss does not exceed the best loss
    (it is the best point's own), and a checkpoint reset sends the sample to ``x_best`` = ``x_adv`` with
    ``grad_best`` = 0: the same state. By induction every remaining iteration repeats it, so the run's
    result for the sample (best point, best loss, robust) is already final. docs/attacks.md has the proof.
    """
    zero = lambda t: _all_rows(t == 0)  # noqa: E731  (NaN is not zero: a NaN gradient never freezes)
    frozen = zero(grad)
    if not bool(frozen.any()):  # the usual case on a model with gradients: one comparison per iteration
        return frozen
    return (frozen & zero(x_adv - x_adv_old) & zero(grad_best) & _all_rows(x_best == x_adv)
            & _all_rows(_project(x, x_adv, eps, norm) == x_adv))


@dataclass
class RunResult:
    """One APGD run on a batch: per sample, whether it was broken, its adversarial point (when broken), the
    highest-loss point reached and that loss, and whether it left the run at a fixed point."""

    broken: torch.Tensor      # bool (n,)
    x_adv: torch.Tensor       # adversarial point where broken, else the clean input
    x_best: torch.Tensor      # highest-loss point (warm starts for later stages)
    loss_best: torch.Tensor   # (n,)
    frozen: torch.Tensor      # bool (n,): dropped at a fixed point (robust; :func:`fixed_points`)


def _gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None,
              loss_fn: LossFn, eot_iter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_adv.requires_grad_()
    grad = torch.zeros_like(x_adv)
    for _ in range(eot_iter):
        with torch.enable_grad():
            logits = model(x_adv)
            loss_indiv = loss_fn(logits, y, y_target)
            loss = loss_indiv.sum()
        grad += torch.autograd.grad(loss, [x_adv])[0].detach()
    grad /= float(eot_iter)
    return grad, logits.detach(), loss_indiv.detach()


def draw_noise(shape: torch.Size, norm: str) -> torch.Tensor:
    """The official random start's draw (on the CPU generator, as the official code draws it)."""
    return torch.rand(shape) if norm == "Linf" else torch.randn(shape)


def single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, n_iter: int,
               loss: str, eot_iter: int = 1, rho: float = 0.75, y_target: torch.Tensor | None = None,
               x_init: torch.Tensor | None = None, skip_fixed_points: bool = True,
               noise: torch.Tensor | None = None, group: torch.Tensor | None = None) -> RunResult:
    """One APGD run (the official ``attack_single_run`` for Linf/L2), dropping samples once broken.

    ``skip_fixed_points``: also drop samples at a fixed point (module docstring). Its proof needs a
    deterministic model; with ``eot_iter`` > 1 (a randomized model) it is off whatever is asked.
    ``noise``: the random start's draw (:func:`draw_noise`) when the caller drew it; ``group``: with rows
    from several speculative runs (:func:`_restarts`), each row's run; once a row breaks its sample, the
    rows of later runs are dropped (they are discarded anyway).
    """
    if norm not in NORMS:
        raise ValueError(f"native APGD supports {NORMS}, not {norm}")
    loss_fn = LOSSES[loss]
    n = x.shape[0]
    device = x.device
    # random start, drawn on the CPU for the whole batch as the official code does (same stream, same values)
    t = (noise if noise is not None else draw_noise(x.shape, norm)).to(device).detach()
    t = 2 * t - 1 if norm == "Linf" else t
    x_adv = x + eps * torch.ones_like(x).detach() * _normalize(t, norm)
    if x_init is not None:
        x_adv = x_init.clone()
    x_adv = x_adv.clamp(0.0, 1.0)

    out_adv = x.clone()
    out_best = x_adv.clone()
    out_loss = torch.full((n,), -float("inf"), device=device)
    out_broken = torch.zeros(n, dtype=torch.bool, device=device)
    out_frozen = torch.zeros(n, dtype=torch.bool, device=device)
    skip_fixed_points = skip_fixed_points and eot_iter == 1
    live = torch.arange(n, device=device)  # original row of each row still iterated
    first_broken = [None]  # the earliest ``group`` that broke a sample so far

    x_best = x_adv.clone()
    grad, logits, loss_indiv = _gradient(model, x_adv, y, y_target, loss_fn, eot_iter)
    grad_best = grad.clone()
    acc = logits.max(1)[1] == y
    loss_best = loss_indiv.clone()
    step_size = 2.0 * eps * torch.ones([n, *([1] * (x.dim() - 1))], device=device)
    x_adv_old = x_adv.clone()
    loss_steps = torch.zeros([n_iter, n], device=device)
    n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    k = n_iter_2
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)

    def keep(mask: torch.Tensor) -> None:
        """Drop the rows not in ``mask`` from every per-sample tensor of the run."""
        nonlocal x, y, y_target, x_adv, x_adv_old, x_best, grad, grad_best, acc, loss_best, step_size
        nonlocal loss_steps, loss_best_last_check, reduced_last_check, live, group
        group = group[mask] if group is not None else None
        x, y, x_adv, x_adv_old, x_best = x[mask], y[mask], x_adv[mask], x_adv_old[mask], x_best[mask]
        y_target = y_target[mask] if y_target is not None else None
        grad, grad_best, acc, loss_best, step_size = grad[mask], grad_best[mask], acc[mask], loss_best[mask], step_size[mask]
        loss_steps, live = loss_steps[:, mask], live[mask]
        loss_best_last_check, reduced_last_check = loss_best_last_check[mask], reduced_last_check[mask]

    def retire_broken(x_now: torch.Tensor) -> torch.Tensor:
        """Record the samples misclassified at ``x_now`` as broken and drop them, with the rows of runs
        after the earliest run that broke one (``group``); returns the rows kept."""
        done = ~acc
        if bool(done.any()):
            rows = live[done]
            out_broken[rows] = True
            out_adv[rows] = x_now[done].detach()
            out_best[rows] = x_now[done].detach()
            if group is not None:
                first = int(group[done].min())
                first_broken[0] = first if first_broken[0] is None else min(first_broken[0], first)
                done = done | (group > first_broken[0])
            keep(~done)
        return ~done

    def retire_frozen(frozen: torch.Tensor) -> None:
        """Record the samples at a fixed point as robust with their best point and loss, and drop them."""
        if bool(frozen.any()):
            rows = live[frozen]
            out_frozen[rows] = True
            out_best[rows] = x_best[frozen]
            out_loss[rows] = loss_best[frozen]
            keep(~frozen)

    retire_broken(x_adv.detach())

    for i in range(n_iter):
        if skip_fixed_points and x.shape[0]:  # before the step: a fixed point would not move, so drop it
            with torch.no_grad():
                retire_frozen(fixed_points(x, x_adv.detach(), x_adv_old, x_best, grad, grad_best, eps, norm))
        if x.shape[0] == 0:
            break
        with torch.no_grad():
            x_adv = x_adv.detach()
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            step = torch.sign(grad) if norm == "Linf" else _normalize(grad, "L2")
            x_adv = _project_step(x, x_adv, x_adv + step_size * step, grad2, a, eps, norm) + 0.0

        grad, logits, loss_indiv = _gradient(model, x_adv, y, y_target, loss_fn, eot_iter)
        x_adv = x_adv.detach()
        acc = torch.min(acc, logits.max(1)[1] == y)
        loss_indiv = loss_indiv[retire_broken(x_adv)]  # the evaluated point, before any checkpoint reset
        if x.shape[0] == 0:
            break

        with torch.no_grad():
            y1 = loss_indiv.clone()
            loss_steps[i] = y1 + 0
            ind = y1 > loss_best
            x_best[ind] = x_adv[ind].clone()
            grad_best[ind] = grad[ind].clone()
            loss_best[ind] = y1[ind] + 0
            counter3 += 1
            if counter3 == k:
                increases = torch.zeros(x.shape[0], device=device)
                for c in range(k):
                    increases += (loss_steps[i - c] > loss_steps[i - c - 1]).float()
                fl_osc = (increases <= k * rho * torch.ones_like(increases)).float()
                fl_no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                fl_osc = torch.max(fl_osc, fl_no_impr)
                reduced_last_check = fl_osc.clone()
                loss_best_last_check = loss_best.clone()
                if fl_osc.sum() > 0:
                    red = fl_osc > 0
                    step_size[red] /= 2.0
                    x_adv[red] = x_best[red].clone()
                    grad[red] = grad_best[red].clone()
                k = max(k - size_decr, n_iter_min)
                counter3 = 0

    if x.shape[0]:
        out_best[live] = x_best
        out_loss[live] = loss_best
    return RunResult(out_broken, out_adv, out_best, out_loss, out_frozen)


# run(x rows, y rows, the runs' entries, their noise, each row's run) -> RunResult
BatchRun = Callable[[torch.Tensor, torch.Tensor, list[int], torch.Tensor, torch.Tensor], RunResult]


def _restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, runs: list[int], norm: str,
              run: BatchRun, max_rows: int | None) -> torch.Tensor:
    """The official ``perturb`` loop: clean verdicts, re-seed, then each run (restart / target class) on the
    samples still robust; returns the batch with every broken sample's adversarial point.

    Runs go side by side as rows of one batch, as many as fit in ``max_rows`` rows (default: ``x``'s
    batch size, so never more memory than the official run of this batch; 1: one run at a time, which a
    randomized model needs, its noise coming from the same generator). Each official run draws its
    random start from the stream for the samples the earlier runs left, so a batch of runs is speculative:
    its starts are drawn as if no run broke anything. The runs up to the first one that breaks a sample
    are exactly the official runs (nothing broke before it, so their starts are right); that run's breaks
    count, the generator is set back to where the official code is after that run, and the later runs
    are drawn again for the samples left. Same runs, same verdicts; passes spent on the discarded runs are
    the price (their rows leave as soon as an earlier run breaks a sample)."""
    x = x.detach().clone().float()
    y = y.detach().clone().long()
    with torch.no_grad():
        acc = model(x).max(1)[1] == y
    adv = x.clone()
    _seed_all(seed)
    j = 0
    while j < len(runs):
        idx = acc.nonzero().squeeze(1)
        n = idx.numel()
        if n == 0:
            break
        width = min(len(runs) - j, max((x.shape[0] if max_rows is None else max_rows) // n, 1))
        noises, states = [], []
        for _ in range(width):  # each run's start, in the official order and shapes
            noises.append(draw_noise(x[idx].shape, norm))
            states.append(torch.get_rng_state())
        group = torch.arange(width, device=x.device).repeat_interleave(n)
        res = run(x[idx].repeat(width, *[1] * (x.dim() - 1)), y[idx].repeat(width), runs[j:j + width],
                  torch.cat(noises), group)
        broken = res.broken.view(width, n)
        hit = broken.any(1).nonzero().squeeze(1)
        last = int(hit[0]) if hit.numel() else width - 1  # the runs 0..last are the official ones
        if last < width - 1:
            torch.set_rng_state(states[last])
        rows = broken[last].nonzero().squeeze(1)
        acc[idx[rows]] = False
        adv[idx[rows]] = res.x_adv.view(width, n, *x.shape[1:])[last][rows]
        j += last + 1
    return adv


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, n_iter: int = 100,
            n_restarts: int = 1, loss: str = "ce", eot_iter: int = 1, rho: float = 0.75, seed: int = 0,
            skip_fixed_points: bool = True, max_rows: int | None = None) -> torch.Tensor:
    """The official ``APGDAttack.perturb`` (untargeted CE or DLR): restarts on the still-robust samples."""
    def run(xs: torch.Tensor, ys: torch.Tensor, entries: list[int], noise: torch.Tensor,
            group: torch.Tensor) -> RunResult:
        return single_run(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, loss=loss, eot_iter=eot_iter, rho=rho,
                          skip_fixed_points=skip_fixed_points, noise=noise, group=group)

    return _restarts(model, x, y, seed, list(range(n_restarts)), norm, run, max_rows)


def perturb_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                     n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9, eot_iter: int = 1,
                     rho: float = 0.75, seed: int = 0, skip_fixed_points: bool = True,
                     max_rows: int | None = None) -> torch.Tensor:
    """The official ``APGDAttack_targeted.perturb``: the k highest-scoring other classes in turn (each
    ``n_restarts`` times), each on the samples still robust, targeted DLR loss."""
    def run(xs: torch.Tensor, ys: torch.Tensor, entries: list[int], noise: torch.Tensor,
            group: torch.Tensor) -> RunResult:
        n = xs.shape[0] // len(entries)
        with torch.no_grad():  # the official run's targets: the k-th highest logits of the samples it gets
            order = model(xs[:n]).sort(dim=1)[1]
        y_target = torch.cat([order[:, -k] for k in entries])
        return single_run(model, xs, ys, eps=eps, norm=norm, n_iter=n_iter, loss="dlr-targeted",
                          eot_iter=eot_iter, rho=rho, y_target=y_target, skip_fixed_points=skip_fixed_points,
                          noise=noise, group=group)

    runs = [t for t in range(2, n_target_classes + 2) for _ in range(n_restarts)]
    return _restarts(model, x, y, seed, runs, norm, run, max_rows)


def _seed_all(seed: int) -> None:
    torch.random.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.random.manual_seed(seed)
