"""The reference AutoAttack settings, per version and norm, as the official code sets them.

Source read: github.com/fra31/auto-attack, ``autoattack/autoattack.py`` (``AutoAttack.__init__`` and
``set_version``) at commit a392200 (2023), plus ``autopgd_base.py``, ``fab_base.py`` and ``square.py`` for the
component defaults. The values are written down here once, as data, so that the torchattacks-based ensemble
and the tests use exactly the same numbers, and so that a reader can check them against the official code
without reading the attack code. Names of the components are the official ones (``apgd-ce`` ...).

Summary of what the official code does:

* constructor (also what ``version: custom`` runs with): APGD 100 iterations, 5 restarts, rho 0.75,
  eot_iter 1; APGD-T 100 iterations, 1 restart, 9 target classes; FAB 100 iterations, 5 restarts,
  alpha_max 0.1, eta 1.05, beta 0.9, 9 target classes (FAB-T always runs with 1 restart); Square 5000
  queries, p_init 0.8, 1 restart, margin loss, no rescaled p schedule.
* ``standard``: APGD-CE, APGD-T, FAB-T, Square. Linf/L2: APGD-CE 1 restart, APGD-T 9 targets.
  L1: APGD-CE 5 restarts and APGD-T 5 targets, both with the 3x/2x/1x eps schedule (``use_largereps``).
* ``plus``: APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T; APGD and FAB 5 restarts, 9 targets.
* ``rand``: APGD-CE, APGD-DLR with 1 restart and EOT over 20 forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from robustkit.errors import ConfigError, did_you_mean

COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand", "custom")
TARGETED_COMPONENTS = ("apgd-t", "fab-t")

# Attack order of the fixed versions (official ``set_version``).
VERSION_ATTACKS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


@dataclass(frozen=True)
class ComponentPlan:
    """One component of the ensemble with the settings it runs with (official parameter names)."""

    name: str
    n_iter: int = 100              # APGD / FAB iterations
    n_restarts: int = 1
    n_target_classes: int = 0      # apgd-t / fab-t: how many of the highest-scoring other classes to target
    eot_iter: int = 1              # APGD: forward passes averaged per gradient
    rho: float = 0.75              # APGD step-size reduction threshold
    use_largereps: bool = False    # APGD L1: run at 3x, 2x, then 1x eps (30/30/40% of the iterations)
    alpha_max: float = 0.1         # FAB
    eta: float = 1.05              # FAB overshooting
    beta: float = 0.9              # FAB backward step
    n_queries: int = 0             # Square
    p_init: float = 0.8            # Square initial fraction of pixels changed
    loss: str = ""                 # apgd-ce: ce, apgd-dlr: dlr, apgd-t: dlr-targeted, square: margin

    @property
    def targeted(self) -> bool:
        return self.name in TARGETED_COMPONENTS


# What the official constructor sets; ``version: custom`` runs with these.
_CONSTRUCTOR: dict[str, ComponentPlan] = {
    "apgd-ce": ComponentPlan("apgd-ce", n_restarts=5, loss="ce"),
    "apgd-dlr": ComponentPlan("apgd-dlr", n_restarts=5, loss="dlr"),
    "apgd-t": ComponentPlan("apgd-t", n_restarts=1, n_target_classes=9, loss="dlr-targeted"),
    "fab": ComponentPlan("fab", n_restarts=5, n_target_classes=9),
    # the official loop sets fab.n_restarts = 1 before running FAB-T
    "fab-t": ComponentPlan("fab-t", n_restarts=1, n_target_classes=9),
    "square": ComponentPlan("square", n_restarts=1, n_queries=5000, p_init=0.8, loss="margin"),
}


def _version_settings(version: str, norm: str, name: str) -> ComponentPlan:
    plan = _CONSTRUCTOR[name]
    if version == "standard":
        if name == "apgd-ce":
            plan = replace(plan, n_restarts=5, use_largereps=True) if norm == "L1" else replace(plan, n_restarts=1)
        elif name == "apgd-t":
            plan = replace(plan, n_restarts=1, n_target_classes=5, use_largereps=True) if norm == "L1" \
                else replace(plan, n_restarts=1, n_target_classes=9)
        elif name == "fab-t":
            plan = replace(plan, n_restarts=1, n_target_classes=9)
        elif name == "square":
            plan = replace(plan, n_queries=5000)
    elif version == "plus":
        if name in ("apgd-ce", "apgd-dlr", "fab"):
            plan = replace(plan, n_restarts=5)
        if name in ("apgd-t", "fab", "fab-t"):
            plan = replace(plan, n_target_classes=9)
    elif version == "rand":
        if name in ("apgd-ce", "apgd-dlr"):
            plan = replace(plan, n_restarts=1, eot_iter=20)
    return plan


def parse_attacks_to_run(value: object, version: str) -> list[str] | None:
    """Validate ``attacks_to_run``: only with ``version: custom`` (where it is required), official names only."""
    if value is None or value == [] or value == ():
        if version == "custom":
            raise ConfigError(f"attack 'autoattack': version: custom needs attacks_to_run, a list of "
                              f"{', '.join(COMPONENTS)}")
        return None
    if version != "custom":
        raise ConfigError(f"attack 'autoattack': attacks_to_run is only used with version: custom "
                          f"(version {version} runs {', '.join(VERSION_ATTACKS[version])})")
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"attack 'autoattack': attacks_to_run: expected a list of names, got {value!r}")
    names = [v.strip().lower() for v in value]
    for name in names:
        if name not in COMPONENTS:
            raise ConfigError(f"attack 'autoattack': attacks_to_run: unknown component {name!r}"
                              f"{did_you_mean(name, COMPONENTS)}; known: {', '.join(COMPONENTS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"attack 'autoattack': attacks_to_run lists a component twice: {names}")
    return names


def reference_plan(version: str, norm: str, attacks_to_run: Sequence[str] | None = None) -> list[ComponentPlan]:
    """The components, in running order, with the official settings for this version and norm."""
    if version not in VERSIONS:
        raise ConfigError(f"attack 'autoattack': version: expected one of {', '.join(VERSIONS)}, got {version!r}"
                          f"{did_you_mean(version, VERSIONS)}")
    names = list(attacks_to_run or ()) if version == "custom" else list(VERSION_ATTACKS[version])
    plan = [_version_settings(version, norm, name) for name in names]
    if "fab-t" in names and "fab" in names and names.index("fab") > names.index("fab-t"):
        # the official loop leaves fab.n_restarts at 1 after FAB-T, so a later FAB runs with 1 restart
        plan = [replace(c, n_restarts=1) if c.name == "fab" else c for c in plan]
    return plan


def fit_to_classes(plan: list[ComponentPlan], n_classes: int) -> list[ComponentPlan]:
    """Cap the number of target classes at ``n_classes - 1`` and refuse components the model cannot support.

    The official code only warns here (``checks.check_n_classes``) and then fails with an index error on
    models with fewer than 10 classes; capping keeps the attack meaningful (every other class is targeted).
    The DLR losses need the 3rd (untargeted) or 4th (targeted) largest logit, hence the class minimums.
    """
    out = []
    for comp in plan:
        if comp.name == "apgd-dlr" and n_classes < 3:
            raise ConfigError(f"attack 'autoattack': apgd-dlr needs at least 3 classes, the model has {n_classes}; "
                              f"use version: custom without it")
        if comp.name == "apgd-t" and n_classes < 4:
            raise ConfigError(f"attack 'autoattack': apgd-t needs at least 4 classes, the model has {n_classes}; "
                              f"use version: custom without it")
        if comp.targeted and comp.n_target_classes > n_classes - 1:
            comp = replace(comp, n_target_classes=n_classes - 1)
        out.append(comp)
    return out
