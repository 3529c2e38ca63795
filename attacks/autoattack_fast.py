"""``autoattack-fast``: AutoAttack's verdicts at a fraction of its passes, escalating to it where it must.

Standard AutoAttack spends almost all of its passes on the samples that stay robust: 100 APGD-T iterations
for each of 9 target classes, 9 x 100 FAB-T iterations and 5000 Square queries per robust sample. The
literature shows most of that is unnecessary on honest models (A3, Liu et al., CVPR 2022: adaptive
initialisation and discarding of hopeless samples, ~11x fewer passes within 0.2 points of AutoAttack;
MALT, Melamed et al. 2024: ranking the target classes by a normalised, first-order distance to their
decision boundary and attacking only the top ones). This suite, written from those papers:

1. **probe** (1 forward + 1 backward per sample): the gradient of the scale-invariant DLR loss at the clean
   point. A sample whose gradient is exactly zero (or not finite) cannot be attacked with gradients and is
   *escalated* (step 6) without spending anything else on it.
2. **APGD-CE**, 100 iterations, with per-sample early exit (:mod:`robustkit.attacks._apgd_native`).
3. **MALT target ranking** at the highest-loss point APGD-CE reached: for every other class t, the
   margin ``z_y - z_t`` divided by the dual norm of its gradient (L1 for Linf, L2 for L2), i.e. the
   linearised distance to the t-boundary; one forward and ``classes - 1`` backward passes per sample.
4. **APGD-T** on the ``n_targets`` (default 3) nearest targets, 100 iterations each, early exit. The first
   target starts from APGD-CE's highest-loss point instead of a random point (an *adaptive direction
   initialisation* in the spirit of A3: the direction the untargeted run found is the best prior we have);
   the others start at random, as the official APGD-T does.
5. **Square** (the official algorithm; on Linf the native version, which returns the official class's result
   bit for bit) with ``square_queries`` (default 1000) queries on the survivors, as a
   black-box check; then the standard Square budget (``deep_square_queries``, 5000) on the survivors the
   white-box stages got closest to the boundary (the top ``deep_square_share``, default 10%, at least one):
   an adaptive budget in A3's spirit, spent where a black-box success is likeliest.
6. **Escalation**: the full standard AutoAttack (:class:`robustkit.attacks.autoattack.AutoAttack`, official
   components) runs on (a) every sample of step 1, (b) every survivor of a batch in which Square broke a
   sample the white-box stages left robust (black-box beating white-box is the classic masking sign, and
   a short Square run cannot tell which of the remaining samples are masked), and (c) every sample when the
   model is randomized (declared or detected) or the norm is L1 (not covered by the fast stages).

So a model that masks gradients ends at the standard AutoAttack's number for the samples concerned, never
above it because the fast suite was used. ``info["broken_by"]`` names the stage that broke each sample
(``escalated:<component>`` for the standard AutoAttack's components), ``info["escalated"]`` how many
samples were escalated and why, ``info["passes"]`` the [forward, backward] sample-passes of each stage.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from robustkit.errors import ConfigError
from robustkit.passes import PassCounter, add_passes
from robustkit.predict import is_randomized, predict
from robustkit.threat import project

from . import _aa_official, _apgd_native
from ._aa_reference import ComponentPlan
from .autoattack import AutoAttack
from .base import Attack, register_attack

FAST_NORMS = ("Linf", "L2")


@contextlib.contextmanager
def _stage(passes: dict[str, list[int]], name: str, model: nn.Module) -> Iterator[None]:
    with PassCounter(model) as counter:
        yield
    if counter.total:  # stages that ran no pass (nothing left to attack) are not listed
        add_passes(passes, name, *counter.snapshot())


def zero_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: True where the DLR loss has an all-zero (or non-finite) input gradient at ``x``."""
    x = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        loss = _apgd_native.dlr_loss(model(x), y, None).sum()
        grad = torch.autograd.grad(loss, [x])[0].detach().view(x.shape[0], -1)
    return (grad.abs().max(1)[0] == 0) | ~torch.isfinite(grad).all(1)


def malt_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, k: int) -> torch.Tensor:
    """The ``k`` classes with the smallest linearised distance ``(z_y - z_t) / ||grad(z_y - z_t)||_dual``.

    Returns (n, k) class indices, nearest first. One forward and (classes - 1) backward passes.
    """
    x = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        logits = model(x)
    n, n_classes = logits.shape
    u = torch.arange(n, device=x.device)
    dist = torch.full((n, n_classes), float("inf"), device=x.device)
    z_y = logits[u, y]
    for t in range(n_classes):
        other = y != t
        if not bool(other.any()):
            continue
        margin = z_y - logits[:, t]
        grad = torch.autograd.grad(margin.sum(), [x], retain_graph=t < n_classes - 1)[0].view(n, -1)
        dual = grad.abs().sum(1) if norm == "Linf" else grad.norm(p=2, dim=1)
        d = margin.detach() / (dual + 1e-12)
        dist[other, t] = d[other]
    return dist.argsort(dim=1)[:, :max(1, min(k, n_classes - 1))]


@register_attack(aliases=("aa-fast",))
class AutoAttackFast(Attack):
    """A cheaper AutoAttack that escalates to the standard one on every sign of masking (module docstring)."""

    name = "autoattack-fast"
    norms = ("Linf", "L2", "L1")
    kind = "white-box"
    supports_targeted = False
    implementation = "robustkit autoattack-fast (A3/MALT-style stages; escalation: standard AutoAttack)"
    defaults = {
        "seed": None,            # None: drawn from the engine's generator (0 without one)
        "n_iter": 100,           # APGD iterations of the fast stages
        "n_targets": 3,          # APGD-T targets, ranked by MALT's normalised distance
        "square_queries": 1000,  # the black-box check (the standard AutoAttack runs 5000)
        "deep_square_share": 0.1,     # share of Square's survivors (the closest; at least 1) that get ...
        "deep_square_queries": 5000,  # ... the standard Square budget; share 0 turns it off
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        share = self.params["deep_square_share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigError(f"attack 'autoattack-fast': deep_square_share: expected a number in [0, 1], "
                              f"got {share!r}")
        for key, low in (("n_iter", 1), ("n_targets", 1), ("square_queries", 1), ("deep_square_queries", 1)):
            value = self.params[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"attack 'autoattack-fast': {key}: expected an integer >= {low}, got {value!r}")
        seed = self.params["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"attack 'autoattack-fast': seed: expected a non-negative integer, got {seed!r}")
        self.package = _aa_official.require_official()
        self.standard = self._standard(seed)
        self.implementation = f"robustkit autoattack-fast; Square and escalation: {self.standard.implementation}"

    def _standard(self, seed: int | None) -> AutoAttack:
        """The escalation target: standard AutoAttack, official components, this call's seed."""
        return AutoAttack(version="standard", seed=seed, implementation="official", eot_iter=self.params["eot_iter"])

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["implementation"] = self.implementation
        return cfg

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        seed = self.standard.resolve_seed(generator)
        passes: dict[str, list[int]] = {}
        n = x.shape[0]
        broken_by: list[str | None] = [None] * n
        x_adv = x.clone()
        escalate = torch.zeros(n, dtype=torch.bool, device=x.device)
        reasons: dict[str, int] = {}
        randomized = is_randomized(model)
        if norm not in FAST_NORMS or randomized:
            escalate[:] = True
            reasons["randomized model" if randomized else f"{norm} (no fast stages)"] = n
        else:
            with torch.random.fork_rng(devices=_cuda_devices(x.device)):
                for value in torch.unique(eps).tolist():
                    idx = (eps == value).nonzero().squeeze(1)
                    self._fast_group(model, x, y, idx, float(value), norm, seed, passes, x_adv, broken_by,
                                     escalate, reasons)
        esc_idx = (escalate & (predict(model, x_adv) == y)).nonzero().squeeze(1)
        if esc_idx.numel():
            with _stage(passes, "escalation", model):
                adv, info = self._standard(seed).perturb(model, x[esc_idx], y[esc_idx], eps[esc_idx], norm,
                                                         target=None, generator=None)
            for k, i in enumerate(esc_idx.tolist()):
                part = info["broken_by"][k]
                if part is not None and part != "clean":
                    x_adv[i] = adv[k]
                    broken_by[i] = f"escalated:{part}"
        info_out: dict[str, Any] = {
            "broken_by": broken_by,
            "escalated": {"samples": int(esc_idx.numel()), "reasons": reasons},
            "passes": passes,
            "seed": seed,
            "implementation": self.implementation,
        }
        return x_adv, info_out

    def _fast_group(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: float,
                    norm: str, seed: int, passes: dict[str, list[int]], x_adv: torch.Tensor,
                    broken_by: list[str | None], escalate: torch.Tensor, reasons: dict[str, int]) -> None:
        """Stages 1-5 on the samples ``idx`` (one eps); fills ``x_adv``/``broken_by``/``escalate`` in place."""
        xs, ys = x[idx], y[idx]
        robust = predict(model, xs) == ys
        n_iter = int(self.params["n_iter"])
        # per sample: the highest untargeted DLR loss at the white-box stages' best points (how close to the
        # boundary gradients got); the escalation after Square compares survivors by it
        closeness = torch.full((xs.shape[0],), -float("inf"), device=xs.device)

        def note(rows: torch.Tensor, best: torch.Tensor) -> None:
            if rows.numel():
                with torch.no_grad():
                    closeness[rows] = torch.max(closeness[rows], _apgd_native.dlr_loss(model(best), ys[rows], None))

        def record(local: torch.Tensor, adv: torch.Tensor, stage: str) -> None:
            """Keep the points of ``local`` rows that the model really misclassifies within the ball."""
            if local.numel() == 0:
                return
            adv = project(xs[local], adv.to(dtype=xs.dtype), eps, norm)
            hit = predict(model, adv) != ys[local]
            for k in hit.nonzero().squeeze(1).tolist():
                row = int(local[k])
                x_adv[idx[row]] = adv[k]
                broken_by[int(idx[row])] = stage
                robust[row] = False

        with _stage(passes, "probe", model):
            live = robust.nonzero().squeeze(1)
            flat = torch.zeros_like(robust)
            if live.numel():
                flat[live] = zero_gradient(model, xs[live], ys[live])
        if bool(flat.any()):
            escalate[idx[flat]] = True
            reasons["zero gradients"] = reasons.get("zero gradients", 0) + int(flat.sum())
        attackable = robust & ~flat

        _apgd_native._seed_all(seed)
        with _stage(passes, "apgd-ce", model):
            live = attackable.nonzero().squeeze(1)
            start = xs.clone()
            if live.numel():
                res = _apgd_native.single_run(model, xs[live], ys[live], eps=eps, norm=norm, n_iter=n_iter, loss="ce")
                start[live] = res.x_best
                record(live[res.broken], res.x_adv[res.broken], "apgd-ce")
                note(live[~res.broken], res.x_best[~res.broken])

        live = (robust & ~flat).nonzero().squeeze(1)
        if live.numel():
            with _stage(passes, "malt-ranking", model):
                targets = malt_targets(model, start[live], ys[live], norm, int(self.params["n_targets"]))
            rank_of = {int(r): k for k, r in enumerate(live.tolist())}
            with _stage(passes, "apgd-t", model):
                for r in range(targets.shape[1]):
                    now = (robust & ~flat).nonzero().squeeze(1)
                    if now.numel() == 0:
                        break
                    rows = torch.tensor([rank_of[int(i)] for i in now.tolist()], dtype=torch.long)
                    res = _apgd_native.single_run(model, xs[now], ys[now], eps=eps, norm=norm, n_iter=n_iter,
                                                  loss="dlr-targeted", y_target=targets[rows.to(targets.device), r],
                                                  x_init=start[now] if r == 0 else None)
                    record(now[res.broken], res.x_adv[res.broken], "apgd-t")
                    note(now[~res.broken], res.x_best[~res.broken])

        def escalate_if_beaten(before: torch.Tensor) -> None:
            """Square broke samples the white-box stages left robust (``before`` & now broken), a masking
            sign: escalate every survivor the white-box stages got at least as close to the boundary as the
            least-close of them (all survivors when gradients told nothing about it)."""
            beaten = before & ~robust
            if bool(beaten.any()):
                rest = robust & ~flat & ~escalate[idx] & (closeness >= closeness[beaten].min())
                if bool(rest.any()):
                    escalate[idx[rest]] = True
                    key = "square beat the white-box stages"
                    reasons[key] = reasons.get(key, 0) + int(rest.sum())

        survivors = (robust & ~flat).nonzero().squeeze(1)
        if survivors.numel():
            before = robust.clone()
            with _stage(passes, "square", model):
                record(survivors, self._square(model, xs[survivors], ys[survivors], eps, norm, seed,
                                               int(self.params["square_queries"])), "square")
            escalate_if_beaten(before)
            # the full Square budget for the closest survivors not escalated (the escalation runs it anyway)
            left = (robust & ~flat & ~escalate[idx]).nonzero().squeeze(1)
            n_deep = min(left.numel(), math.ceil(float(self.params["deep_square_share"]) * survivors.numel()))
            if n_deep:
                deep = left[closeness[left].argsort(descending=True)[:n_deep]].sort()[0]  # closest first
                before = robust.clone()
                with _stage(passes, "square-deep", model):
                    record(deep, self._square(model, xs[deep], ys[deep], eps, norm, seed,
                                              int(self.params["deep_square_queries"])), "square")
                escalate_if_beaten(before)

    def _square(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int,
                queries: int) -> torch.Tensor:
        """AutoAttack's Square (official algorithm, 1 restart) with ``queries`` queries."""
        plan = ComponentPlan("square", n_restarts=1, n_queries=queries, p_init=0.8, loss="margin")
        return _aa_official.OfficialEnsemble(model, norm, [plan], seed, x.device, package=self.package).run(
            "square", x, y, eps)


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]

