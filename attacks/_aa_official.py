"""The official AutoAttack components (APGD, APGD-T, FAB, Square), run one component at a time.

Two distributions carry the official code: the authors' git install (``pip install
git+https://github.com/fra31/auto-attack``, top-level module ``autoattack``, version 0.1) and
``pyautoattack`` on PyPI (a dependency of robustkit). pyautoattack 0.2.0's component files are the official
files of fra31/auto-attack at a392200 apart from their import lines (and ``checks.py``'s logging calls);
``benchmarks/check_pyautoattack.py`` shows the diff and ``tests/test_autoattack_speed.py`` checks the
installed files against the hashes recorded here. The git install wins when both are importable.

The official ``run_standard_evaluation`` is not called: its orchestration (which differs between the two
distributions) is reproduced by :func:`robustkit.attacks.autoattack.run_cascade`. Each component object is
built with the settings the official constructor and ``set_version`` give it (``_aa_reference``), and its
``perturb`` is called on the samples still robust, with ``seed`` set before each call exactly as the
official loop does. The official sanity checks that run once per evaluation (randomized model,
probabilities instead of logits) run once per call here; their messages become Python warnings, once each.
"""
from __future__ import annotations

import hashlib
import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from robustkit.errors import ConfigError

from . import _apgd_native, _fab_native, _square_native
from ._aa_reference import ComponentPlan

INSTALL_HINT = "pip install pyautoattack (or the git install: pip install git+https://github.com/fra31/auto-attack)"
DISTRIBUTIONS = ("autoattack", "pyautoattack")  # in order of preference

# sha256 of pyautoattack 0.2.0's component files, whose diff against fra31/auto-attack a392200 was read
# line by line (docs/attacks.md, "Official components"): only import lines differ (and logging in checks.py).
PYAUTOATTACK_CHECKED = {
    "version": "0.2.0",
    "files": {
        "autopgd_base.py": "6913041e2d8e94b72e659c9ea5452eb7d3476f24f32d227cdaae025c6db3c256",
        "fab_base.py": "63654f228a57b5ff56babd6ed3d1ddd0724827e8a210a48ba0d76cbc35333a5b",
        "fab_pt.py": "2ad605c1a161fbdc0109f4018760ffb2a10a63de6e218063bb33621e00013d1e",
        "fab_projections.py": "d2e095000c0ecd85f0eb22605465636487259c57147b4b2bd091c6ea86fb5bde",
        "square.py": "bd5c61d3b43d3b55b74b059477b74061a399a0f5f384cb51af91216682e247ae",
        "other_utils.py": "a06a038ab1ca59a2d8f09642b9a4e7f6e9b249cd8e6c6a9cbd308f47649268df",
        "checks.py": "2409841e2b5f985cf8aeea6dc855f69fc478261c9d9b6429e9d369194f70150b",
    },
}
COMPONENT_FILES = tuple(PYAUTOATTACK_CHECKED["files"])


class OfficialAutoAttackWarning(UserWarning):
    """A sanity-check warning printed by the official AutoAttack code."""


@dataclass(frozen=True)
class OfficialPackage:
    """The importable official distribution: its name, version and component modules."""

    distribution: str
    version: str
    apgd: ModuleType       # autopgd_base
    fab: ModuleType        # fab_pt
    square: ModuleType
    checks: ModuleType

    @property
    def label(self) -> str:
        return f"{self.distribution}-{self.version}"

    @property
    def folder(self) -> Path:
        return Path(self.apgd.__file__).parent


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "source"


def _import(distribution: str) -> OfficialPackage | None:
    try:
        mods = [importlib.import_module(f"{distribution}.{m}") for m in ("autopgd_base", "fab_pt", "square", "checks")]
    except Exception:  # a missing or broken install is as unusable as a missing one
        return None
    return OfficialPackage(distribution, _distribution_version(distribution), *mods)


def load_official() -> OfficialPackage | None:
    """The official components: the git install (``autoattack``) if importable, else ``pyautoattack``."""
    for name in DISTRIBUTIONS:
        package = _import(name)
        if package is not None:
            return package
    return None


def require_official() -> OfficialPackage:
    package = load_official()
    if package is None:
        raise ConfigError(f"attack 'autoattack': the official AutoAttack components are not importable; "
                          f"install them with: {INSTALL_HINT}")
    return package


def file_hashes(folder: Path, names: tuple[str, ...] = COMPONENT_FILES) -> dict[str, str]:
    """sha256 of each named file in ``folder`` ("" for a missing one)."""
    out = {}
    for name in names:
        path = Path(folder) / name
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return out


class _Messages:
    """Stands in for the official logger (git: ``.log("Warning: ...")``, pyautoattack: ``.warning``)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, text: str) -> None:
        if str(text).startswith("Warning:"):
            self.warning(str(text)[len("Warning:"):].strip())

    def warning(self, text: object, *args: object, **kwargs: object) -> None:
        text = str(text).strip()
        if text and text not in self.messages:
            self.messages.append(text)
            warnings.warn(f"official AutoAttack: {text}", OfficialAutoAttackWarning, stacklevel=3)

    def info(self, *args: object, **kwargs: object) -> None:
        pass

    debug = info


class OfficialEnsemble:
    """Runs one named component of the plan on a batch at one eps, with the official component classes.

    ``early_exit``: APGD-CE/-DLR/-T on Linf and L2 run with :mod:`robustkit.attacks._apgd_native` (the
    official algorithm, dropping each sample once broken, and, on a ``deterministic`` model, once at a
    fixed point, its restarts and target classes side by side in at most ``max_rows`` rows; same
    per-sample verdicts under the same seed); FAB-T too on a deterministic model
    (:mod:`robustkit.attacks._fab_native`, its target classes side by side in at most ``max_rows`` rows);
    Linf Square on a deterministic model with :mod:`robustkit.attacks._square_native` (the official result
    bit for bit, fewer torch calls per query). Untargeted FAB and L2/L1 Square run the official classes.
    """

    def __init__(self, model: nn.Module, norm: str, plan: list[ComponentPlan], seed: int, device: torch.device,
                 early_exit: bool = True, package: OfficialPackage | None = None,
                 deterministic: bool = True, max_rows: int | None = None) -> None:
        self.package = package or require_official()
        # the most rows runs side by side may hold: the caller's batch; one run at a time on a randomized
        # model (its noise comes from the generator the speculative starts are drawn from and set back)
        self._max_rows = max_rows if deterministic else 1
        self._model = model
        self._norm = norm
        self._plan = {c.name: c for c in plan}
        self._seed = int(seed)
        self._device = device
        self._early_exit = early_exit
        self._deterministic = deterministic
        self._log = _Messages()

    @property
    def messages(self) -> list[str]:
        return self._log.messages

    def sanity_checks(self, x: torch.Tensor, y: torch.Tensor, version: str) -> None:
        """The official once-per-evaluation checks (randomized model unless ``rand``; probability outputs).

        ``check_dynamic`` is left out: it installs a global trace function and keeps a module-global count
        that is never reset, so after one dynamic model every later model would be flagged.
        """
        if version != "rand":
            self.package.checks.check_randomized(self._model, x, y, bs=x.shape[0], logger=self._log)
        self.package.checks.check_range_output(self._model, x, logger=self._log)

    def uses_native(self, name: str) -> bool:
        """APGD-CE/-DLR/-T on Linf/L2 with early exit; FAB-T too on a deterministic model (its exits need one);
        Square on Linf on a deterministic model (its draws are batched ahead of the model's calls)."""
        if not self._early_exit or self._norm not in _apgd_native.NORMS:
            return False
        if name == "square":
            return self._deterministic and self._norm in _square_native.NORMS
        return name.startswith("apgd") or (name == "fab-t" and self._deterministic)

    def run(self, name: str, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        plan = self._plan[name]
        if name == "square":
            return self._square(plan, float(eps), x, y)
        if self.uses_native(name):
            common = dict(eps=float(eps), norm=self._norm, n_iter=plan.n_iter, n_restarts=plan.n_restarts,
                          eot_iter=plan.eot_iter, rho=plan.rho, seed=self._seed,
                          skip_fixed_points=self._deterministic)
            if name == "fab-t":
                return self._fab_t(plan, float(eps), x, y)
            if name == "apgd-t":
                return _apgd_native.perturb_targeted(self._model, x, y, n_target_classes=plan.n_target_classes,
                                                     max_rows=self._max_rows, **common).detach()
            return _apgd_native.perturb(self._model, x, y, loss=plan.loss, max_rows=self._max_rows, **common).detach()
        return self._component(plan, float(eps)).perturb(x, y).detach()

    def _fab_t(self, plan: ComponentPlan, eps: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """FAB-T with per-sample exits, calling the installed package's own projection functions."""
        projections = importlib.import_module(f"{self.package.distribution}.fab_projections")
        projection = projections.projection_linf if self._norm == "Linf" else projections.projection_l2
        return _fab_native.perturb_targeted(self._model, x, y, eps=eps, norm=self._norm, projection=projection,
                                            n_iter=plan.n_iter, n_restarts=plan.n_restarts,
                                            n_target_classes=plan.n_target_classes, alpha_max=plan.alpha_max,
                                            eta=plan.eta, beta=plan.beta, seed=self._seed,
                                            max_rows=self._max_rows).detach()

    def _square(self, plan: ComponentPlan, eps: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Linf Square natively where it returns the official result bit for bit, else the official class."""
        if self.uses_native("square") and plan.loss == "margin" and _square_native.can_reproduce(x, eps):
            return _square_native.perturb(self._model, x, y, eps=eps, n_queries=plan.n_queries,
                                          n_restarts=plan.n_restarts, p_init=plan.p_init, seed=self._seed)
        return self._component(plan, eps).perturb(x, y).detach()

    def _component(self, plan: ComponentPlan, eps: float) -> Any:
        """A fresh official component object, set as the official constructor + ``set_version`` set it."""
        pkg, model, common = self.package, self._model, dict(eps=eps, norm=self._norm, device=self._device)
        if plan.name in ("apgd-ce", "apgd-dlr"):
            attack = pkg.apgd.APGDAttack(model, n_restarts=plan.n_restarts, n_iter=plan.n_iter, verbose=False,
                                         eot_iter=plan.eot_iter, rho=plan.rho, seed=self._seed, logger=self._log,
                                         use_largereps=plan.use_largereps, **common)
            attack.loss = plan.loss
        elif plan.name == "apgd-t":
            attack = pkg.apgd.APGDAttack_targeted(model, n_restarts=plan.n_restarts, n_iter=plan.n_iter,
                                                  verbose=False, eot_iter=plan.eot_iter, rho=plan.rho,
                                                  seed=self._seed, logger=self._log,
                                                  n_target_classes=plan.n_target_classes,
                                                  use_largereps=plan.use_largereps, **common)
        elif plan.name in ("fab", "fab-t"):
            attack = pkg.fab.FABAttack_PT(model, n_restarts=plan.n_restarts, n_iter=plan.n_iter, seed=self._seed,
                                          verbose=False, alpha_max=plan.alpha_max, eta=plan.eta, beta=plan.beta,
                                          n_target_classes=plan.n_target_classes, **common)
            attack.targeted = plan.name == "fab-t"
        elif plan.name == "square":
            attack = pkg.square.SquareAttack(model, p_init=plan.p_init, n_queries=plan.n_queries,
                                             n_restarts=plan.n_restarts,
                                             seed=self._seed, verbose=False, resc_schedule=False, **common)
        else:  # pragma: no cover - names are validated in _aa_reference
            raise ConfigError(f"attack 'autoattack': unknown component {plan.name!r}")
        attack.seed = self._seed  # the official loop sets seed = get_seed() before every perturb
        return attack
