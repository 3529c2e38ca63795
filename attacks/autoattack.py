"""AutoAttack (Croce & Hein, ICML 2020): the reference ensemble, run as its authors run it.

Published robustness numbers are compared against AutoAttack, so this attack must *be* AutoAttack, not an
approximation with convenient defaults. Two implementations are offered:

* ``official`` (what ``implementation: auto`` runs): the authors' own component classes, from the git
  install (module ``autoattack``) when importable, else from ``pyautoattack`` (a dependency; its component
  files are the official ones, see :mod:`robustkit.attacks._aa_official`). With ``early_exit`` (default)
  the APGD components on Linf/L2 run robustkit's transcription of the official APGD that stops iterating a
  sample once it is broken or at a fixed point (:mod:`robustkit.attacks._apgd_native`), and FAB-T (on a
  deterministic model) a transcription of the official FAB-T with the same two exits
  (:mod:`robustkit.attacks._fab_native`): same per-sample verdicts under the same seed, fewer passes. Linf
  Square (on a deterministic model) runs :mod:`robustkit.attacks._square_native`, which returns the official
  class's result bit for bit with fewer torch calls per query. ``early_exit: false`` runs every component
  from the official package unchanged.
* ``torchattacks``: the same ensemble built from torchattacks' APGD, APGD-T, FAB and Square with the
  reference parameters of :mod:`robustkit.attacks._aa_reference`, kept as a cross-check. Linf and L2 only.

Either way the cascade is ours and follows the official ``run_standard_evaluation``: every component runs
only on the points no earlier component has broken (and, inside a component, every restart and target class
only on the points still robust), so ``info["broken_by"]`` can name the component that broke each sample.
Per-sample eps is handled by running each component once per distinct eps value. Robustness between
components is decided with :func:`robustkit.predict.predict` (a majority vote for randomized models), the
same verdict the engine applies to the final result. ``info["passes"]`` holds each component's
[forward, backward] sample-passes.

Randomness: the components re-seed torch's global RNG (as the official code does); this runs inside
``torch.random.fork_rng`` so the caller's RNG state is left untouched. The seed is ``seed`` when given,
else drawn from the engine's ``generator``, else 0, so every run is reproducible.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from robustkit.errors import ConfigError, did_you_mean
from robustkit.passes import PassCounter, add_passes
from robustkit.predict import is_randomized, predict
from robustkit.threat import project

from . import _aa_official, _aa_torchattacks
from ._aa_reference import VERSIONS, ComponentPlan, fit_to_classes, parse_attacks_to_run, reference_plan
from .base import DEFAULT_EOT_ITER, Attack, register_attack

IMPLEMENTATIONS = ("auto", "official", "torchattacks")

# run(component name, x, y, eps) -> adversarial x for that subset
ComponentRunner = Callable[[str, torch.Tensor, torch.Tensor, float], torch.Tensor]


def run_cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str,
                components: Sequence[str], run: ComponentRunner
                ) -> tuple[torch.Tensor, list[str | None], dict[str, int], dict[str, float], dict[str, list[int]]]:
    """Run ``components`` in order, each only on the points still robust, one call per distinct eps.

    Returns the adversarial batch (robust points unchanged), for each sample the component that broke it
    (``"clean"`` when the clean input is already misclassified, None when nothing broke it), the number
    of robust points left after each component, the seconds each component took and its
    [forward, backward] sample-passes (its re-predictions included).
    """
    robust = predict(model, x) == y
    broken_by: list[str | None] = [None if r else "clean" for r in robust.tolist()]
    x_adv = x.clone()
    robust_after: dict[str, int] = {}
    seconds: dict[str, float] = {}
    passes: dict[str, list[int]] = {}
    for name in components:
        start = time.perf_counter()
        with PassCounter(model) as counter:
            _run_component(model, x, y, eps, norm, name, run, robust, x_adv, broken_by)
        add_passes(passes, name, *counter.snapshot())
        robust_after[name] = int(robust.sum())
        seconds[name] = round(time.perf_counter() - start, 3)
    return x_adv, broken_by, robust_after, seconds, passes


def _run_component(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, name: str,
                   run: ComponentRunner, robust: torch.Tensor, x_adv: torch.Tensor,
                   broken_by: list[str | None]) -> None:
    """One component on the still-robust points, once per distinct eps; updates the last three in place."""
    for value in torch.unique(eps[robust]).tolist():
        idx = (robust & (eps == value)).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        x_sub, y_sub = x[idx], y[idx]
        adv = run(name, x_sub, y_sub, float(value))
        adv = project(x_sub, adv.to(device=x.device, dtype=x.dtype), float(value), norm)
        broke = predict(model, adv) != y_sub
        hit = idx[broke]
        x_adv[hit] = adv[broke]
        robust[hit] = False
        for i in hit.tolist():
            broken_by[i] = name


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Let the components re-seed torch's global RNG without changing the caller's random stream."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@register_attack(aliases=("aa",))
class AutoAttack(Attack):
    """The AutoAttack ensemble (APGD-CE, APGD-T, FAB-T, Square for ``standard``); see the module docstring."""

    name = "autoattack"
    norms = ("Linf", "L2", "L1")
    kind = "white-box"
    supports_targeted = False  # its targeted components (APGD-T, FAB-T) choose their targets internally
    implementation = "official components (autoattack / pyautoattack) or torchattacks"  # resolved per instance
    defaults = {
        "version": "standard",      # standard | plus | rand | custom
        "attacks_to_run": None,     # version custom only: list of apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square
        "seed": None,               # None: drawn from the engine's generator (0 without one)
        "implementation": "auto",   # auto (the official components) | official | torchattacks
        "early_exit": True,         # official: APGD/FAB-T stop iterating a sample once decided (same verdicts);
                                    # Linf Square runs natively (the official result, bit for bit)
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        version = str(self.params["version"]).strip().lower()
        if version not in VERSIONS:
            raise ConfigError(f"attack 'autoattack': version: expected one of {', '.join(VERSIONS)}, "
                              f"got {self.params['version']!r}{did_you_mean(version, VERSIONS)}")
        self.params["version"] = version
        self.params["attacks_to_run"] = parse_attacks_to_run(self.params["attacks_to_run"], version)
        seed = self.params["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"attack 'autoattack': seed: expected a non-negative integer, got {seed!r}")
        impl = str(self.params["implementation"]).strip().lower()
        if impl not in IMPLEMENTATIONS:
            raise ConfigError(f"attack 'autoattack': implementation: expected one of {', '.join(IMPLEMENTATIONS)}, "
                              f"got {self.params['implementation']!r}{did_you_mean(impl, IMPLEMENTATIONS)}")
        self.params["implementation"] = impl
        if not isinstance(self.params["early_exit"], bool):
            raise ConfigError(f"attack 'autoattack': early_exit: expected true or false, "
                              f"got {self.params['early_exit']!r}")
        self.package = _aa_official.require_official() if impl == "official" else (
            _aa_official.load_official() if impl == "auto" else None)
        self.use_official = self.package is not None
        # what actually runs; recorded by config() into leaderboards, provenance and job identities
        if self.package is not None:
            native = " (APGD, FAB-T early exit; native Square)" if self.params["early_exit"] else ""
            self.implementation = self.package.label + native
        else:
            self.implementation = f"torchattacks-{_aa_torchattacks.torchattacks_version()} (reference parameters)"

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["implementation_requested"] = self.params["implementation"]
        cfg["implementation"] = self.implementation  # the params' "auto" must not hide what ran
        return cfg

    def plan(self, norm: str, n_classes: int, randomized: bool = False) -> list[ComponentPlan]:
        """The components this attack runs for ``norm`` on a model with ``n_classes`` outputs.

        EOT for the APGD components: ``eot_iter`` when given; otherwise the reference value (1, or 20 for
        ``rand``), raised to robustkit's default for randomized models (20) so that a randomized model is
        never attacked with single-sample gradients. The official code keeps 1 there and only prints a
        warning recommending ``version: rand``.
        """
        plan = fit_to_classes(reference_plan(self.params["version"], norm, self.params["attacks_to_run"]), n_classes)
        explicit = self.params["eot_iter"]
        auto = DEFAULT_EOT_ITER if randomized else 1
        return [replace(c, eot_iter=int(explicit) if explicit is not None else max(c.eot_iter, auto))
                if c.name.startswith("apgd") else c for c in plan]

    def resolve_seed(self, generator: torch.Generator | None) -> int:
        if self.params["seed"] is not None:
            return int(self.params["seed"])
        if generator is not None:
            return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        return 0

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        seed = self.resolve_seed(generator)
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        randomized = is_randomized(model)
        plan = self.plan(norm, n_classes, randomized)
        if self.package is not None:
            official = _aa_official.OfficialEnsemble(model, norm, plan, seed, x.device,
                                                     early_exit=self.params["early_exit"], package=self.package,
                                                     deterministic=not randomized, max_rows=x.shape[0])
            with _isolated_rng(x.device):
                official.sanity_checks(x, y, self.params["version"])
            run: ComponentRunner = official.run
        else:
            _aa_torchattacks.check_norm(norm)
            by_name = {c.name: c for c in plan}

            def run(name: str, xs: torch.Tensor, ys: torch.Tensor, e: float) -> torch.Tensor:
                attack = _aa_torchattacks.build_component(by_name[name], model, norm, e, seed, xs.device)
                return _aa_torchattacks.run_component(attack, xs, ys)

        with _isolated_rng(x.device):
            x_adv, broken_by, robust_after, seconds, passes = run_cascade(model, x, y, eps, norm,
                                                                          [c.name for c in plan], run)
        info: dict[str, Any] = {
            "broken_by": broken_by,
            "robust_after": robust_after,
            "seconds": seconds,
            "passes": passes,
            "seed": seed,
            "implementation": self.implementation,
            "components": [asdict(c) for c in plan],
        }
        if self.package is not None and official.messages:
            info["official_warnings"] = list(official.messages)
        return x_adv, info
