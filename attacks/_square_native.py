"""The official Linf Square Attack (Andriushchenko et al. 2020) with less work per query: same result, bit for bit.

AutoAttack's Square (``SquareAttack.perturb``, untargeted, margin loss, ``resc_schedule=False``) spends 5000
queries on every sample it cannot break. On a small model most of an iteration's time is not the forward
pass but about fifty small torch calls: gathering the still-live samples out of the full batch and
scattering them back, three one-element random draws, the cross-entropy it computes and never uses with the
margin loss, and arithmetic blends ``i * new + (1 - i) * old``. This module computes the same thing with
fewer calls, and returns the same tensor as the installed official class (``tests/test_square_native.py``
compares them with ``torch.equal`` and bitwise). Why each change keeps every value:

* **Random draws, batched.** After the initial stripes, the official loop draws per iteration ``vh``
  (``(h - s) * rand(1)``, truncated), ``vw`` (same) and the ``c`` channel signs (``sign(2 rand - 1)``), in
  that order, from torch's global CPU generator, and nothing else. None of these depend on the data or on
  which samples are live (``s`` depends on the iteration index only). CPU ``torch.rand`` fills its output
  element by element from the generator's stream, so one ``rand(n_queries * (2 + c))`` holds every
  iteration's draws in order, and the same float32 operations (multiply, add 0, truncate; ``2 r - 1``,
  sign, times ``2 eps``) applied elementwise give the same values. The official loop stops drawing when
  every sample is fooled; the generator is then put where the official loop leaves it (restored, and
  advanced by exactly the draws it made), so later restarts (``n_restarts > 1``) and anything drawing after
  Square see the official stream.
* **Live samples kept compacted.** The official loop indexes the live samples (margin > 0) out of the
  full batch each iteration and writes them back. Here they are kept as a compacted batch, in the same
  (ascending) order, and compacted again only when one leaves; the model sees the same batches (same rows,
  same order, same size), so it returns the same logits. A sample leaves exactly when the official one
  stops being indexed: its best margin is no longer > 0 (fooled, or NaN).
* **One clamp.** The official new point is ``x_best + delta`` clamped to ``[x - eps, x + eps]``, then to
  ``[0, 1]``. For ``x`` in ``[0, 1]`` and eps > 0 the two intervals meet, so the two clamps are one clamp
  to their intersection ``[max(x - eps, 0), min(x + eps, 1)]`` (computed once per set of live samples):
  a clamp returns one of its operands, and both forms return the same one's value.
* **Margin without the unused cross-entropy; ``where`` for the blends.** The margin is ``y_corr -
  y_others`` with ``y_others`` the largest other logit: the same gather, fill with ``-inf``, maximum
  (``amax``; ties of +0 and -0 can change only the sign of a zero margin, a fooled sample either way) and
  subtraction. For a live sample the official ``loss_min`` and ``margin_min`` are equal (both start as the
  initial margin; a sample with ``margin <= 0 < margin_min`` also has ``margin < loss_min``, so both take
  the same value), so one state is kept and a query is accepted iff ``margin < margin_min``. The official
  blend ``i * new + (1 - i) * old`` (``i`` 0 or 1) equals ``where(i, new, old)`` when both are finite and
  neither is -0: ``new + 0 * old = new`` and ``0 * new + old = old``. Every pixel is finite and never -0
  when the input is in ``[0, 1]`` and eps > 0 (each pixel is one of ``x +- eps``, ``x_best + 0``,
  ``x_best +- 2 eps``, 0 or 1, none of which rounds to -0). A margin can be inf or NaN (a model with
  infinite logits): ``0 * inf`` is NaN, so on any iteration where a live sample's margin is not finite,
  that iteration uses the official arithmetic itself. A -0 best margin (where the blend would give +0)
  belongs to a fooled sample, which has left and whose margin is never used again.

The clean prediction, the seeding, the restarts on the still-robust points and the final re-predictions of
``perturb`` are the official ones, with the same forward calls (same rows), so PassCounter counts the same
sample-forwards. Skipped: the official loop's forward calls on an empty batch (0 rows) when no sample is
live but some sample's margin is NaN (it then keeps drawing until ``n_queries``; the generator is advanced
to match). Requires a deterministic model (a model that draws from the global generator in its forward
pass would draw at other positions of the stream), an input in ``[0, 1]`` and ``0 < eps`` finite: callers check
:func:`can_reproduce` and run the official class otherwise. Linf only; L2 and L1 draw per sample inside
the loop and run the official class.
"""
from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("Linf",)


def can_reproduce(x: torch.Tensor, eps: float) -> bool:
    """Whether :func:`perturb` returns the official result here: a float input in [0, 1] (robustkit's input
    range; NaN fails) and 0 < eps finite (also after rounding to the input's dtype)."""
    eps_cast = float(torch.tensor(float(eps), dtype=x.dtype)) if x.is_floating_point() else 0.0
    return math.isfinite(eps_cast) and eps_cast > 0 and bool(((x >= 0) & (x <= 1)).all())


def p_selection(p_init: float, it: int) -> float:
    """The official p schedule without rescaling (``resc_schedule=False``): halved at fixed query counts."""
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def square_sizes(p_init: float, n_queries: int, c: int, h: int, w: int) -> list[int]:
    """The side of the square changed at each iteration (the official expression, float for float)."""
    n_features = c * h * w
    return [min(max(int(round(math.sqrt(p_selection(p_init, i) * n_features / c))), 1), min(h, w))
            for i in range(n_queries)]


def _label_mask(y_col: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.zeros(y_col.shape[0], n_classes, dtype=torch.bool, device=y_col.device).scatter_(1, y_col, True)


def _margin(logits: torch.Tensor, y_col: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Logit of the label minus the largest other logit (the official ``margin_and_loss`` margin)."""
    y_corr = logits.gather(1, y_col)[:, 0]
    y_others = logits.masked_fill(label_mask, -float("inf")).amax(dim=-1)
    return y_corr - y_others


class _Live:
    """The samples still attacked (best margin > 0), compacted in ascending index order."""

    def __init__(self, idx: torch.Tensor, x: torch.Tensor, x_best: torch.Tensor, y: torch.Tensor,
                 margin: torch.Tensor, eps: float, label_mask: torch.Tensor) -> None:
        self.idx, self.x_best, self.margin = idx, x_best[idx], margin[idx]
        x_l = x[idx]
        # the official bounds x_curr -/+ eps, then [0, 1]; as one interval (see the module docstring)
        self.low, self.high = (x_l - eps).clamp(min=0.), (x_l + eps).clamp(max=1.)
        self.y_col, self.label_mask = y[idx].unsqueeze(1), label_mask[idx]

    def keep(self, rows: torch.Tensor) -> None:
        for name in ("idx", "x_best", "margin", "low", "high", "y_col", "label_mask"):
            setattr(self, name, getattr(self, name)[rows])


def _official_blend(margin: torch.Tensor, margin_best: torch.Tensor, x_new: torch.Tensor, x_best: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The official update, operation for operation (used when a margin is not finite)."""
    improved = (margin < margin_best).float()
    improved = torch.max(improved, (margin <= 0.).float())
    margin_best = improved * margin + (1. - improved) * margin_best
    improved = improved.reshape([-1, *[1] * (x_new.dim() - 1)])
    return margin_best, improved * x_new + (1. - improved) * x_best


@torch.no_grad()
def single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, n_queries: int,
               p_init: float) -> torch.Tensor:
    """The official Linf ``attack_single_run`` (margin loss, untargeted): the best point of each sample."""
    n, c, h, w = x.shape
    dev = x.device
    x_best = torch.clamp(x + eps * torch.sign(2 * torch.rand([n, c, 1, w]).to(dev) - 1), 0., 1.)
    logits = model(x_best)
    label_mask = _label_mask(y.unsqueeze(1), logits.shape[1])
    margin = _margin(logits, y.unsqueeze(1), label_mask)
    if bool((margin < 0.0).all()):
        return x_best
    generator_state = torch.get_rng_state()
    draws = torch.rand(n_queries * (2 + c)).view(n_queries, 2 + c)
    sizes = square_sizes(p_init, n_queries, c, h, w)
    span = torch.tensor([h - s for s in sizes], dtype=torch.float32)
    corner_h = (0 + span * draws[:, 0]).long().tolist()
    span = torch.tensor([w - s for s in sizes], dtype=torch.float32)
    corner_w = (0 + span * draws[:, 1]).long().tolist()
    steps = (2. * eps * torch.sign(2 * draws[:, 2:] - 1)).view(n_queries, c, 1, 1).to(dev).unbind(0)

    live = _Live((margin > 0.0).nonzero().squeeze(1), x, x_best, y, margin, eps, label_mask)
    unfooled_out = int((~(margin > 0.0) & ~(margin <= 0.0)).sum())  # NaN margins: never live, never fooled
    finite = bool(torch.isfinite(live.margin).all())
    consumed = n_queries
    for i in range(n_queries):
        if live.idx.numel() == 0:  # official: one more (draw-only) iteration, then its all-fooled break
            consumed = i + 1 if unfooled_out == 0 else n_queries
            break
        s, vh, vw = sizes[i], corner_h[i], corner_w[i]
        delta = torch.zeros([c, h, w], device=dev)
        delta[:, vh:vh + s, vw:vw + s] = steps[i]
        x_new = torch.clamp(live.x_best + delta, live.low, live.high)
        m = _margin(model(x_new), live.y_col, live.label_mask)
        low, high = torch.stack(torch.aminmax(m)).tolist()  # one host sync per query (the official loop has several)
        if finite and math.isfinite(low) and math.isfinite(high):
            better = m < live.margin
            live.x_best = torch.where(better.view(-1, 1, 1, 1), x_new, live.x_best)
            live.margin = torch.where(better, m, live.margin)
            if low > 0.0:
                continue
        else:
            live.margin, live.x_best = _official_blend(m, live.margin, x_new, live.x_best)
        stay = live.margin > 0.0
        if bool(stay.all()):
            finite = bool(torch.isfinite(live.margin).all())
            continue
        x_best[live.idx] = live.x_best
        unfooled_out += int((~stay & ~(live.margin <= 0.0)).sum())
        live.keep(stay.nonzero().squeeze(1))
        finite = bool(torch.isfinite(live.margin).all())
        if live.idx.numel() == 0 and unfooled_out == 0:
            consumed = i + 1
            break
    x_best[live.idx] = live.x_best
    torch.set_rng_state(generator_state)
    torch.rand(consumed * (2 + c))  # leave the generator where the official loop leaves it
    return x_best


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, n_queries: int, n_restarts: int,
            p_init: float, seed: int) -> torch.Tensor:
    """The official ``SquareAttack.perturb`` (Linf, untargeted, labels given): restarts on the points still
    classified correctly, each run's points re-predicted, the broken ones kept."""
    adv = x.clone()
    y = y.detach().clone().long().to(x.device)
    robust = model(x).max(1)[1] == y  # outside no_grad, as in the official perturb
    torch.random.manual_seed(seed)
    torch.cuda.random.manual_seed(seed)
    for _ in range(n_restarts):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        x_run, y_run = x[idx].clone(), y[idx].clone()
        adv_run = single_run(model, x_run, y_run, eps=eps, n_queries=n_queries, p_init=p_init)
        broke = model(adv_run).max(1)[1] != y_run
        robust[idx[broke]] = False
        adv[idx[broke]] = adv_run[broke].clone()
    return adv.detach()
