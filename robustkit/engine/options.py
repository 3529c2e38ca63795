"""Run options: how a sweep runs and what is done after it, parsed ONCE into one frozen, typed object.

A sweep says *what* is evaluated (data, models, threat model, attacks: :class:`robustkit.engine.sweep.Sweep`);
the run options say *how* the run goes: which evaluation checks run afterwards, the radii of certified rows,
the minimum-norm curve, how many local workers, and the GPU knobs (``channels_last``, ``compile``). The YAML
config (:func:`robustkit.engine.config.parse_config`), ``robustkit.evaluate(...)`` and the command line all
build a :class:`RunOptions` with :func:`parse_options` once; everything after that reads its fields and never
re-validates a raw value. ``--checks`` or ``--workers`` on the command line replace a field with
:func:`dataclasses.replace`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from robustkit.checks import CHEAP, check_mode
from robustkit.defenses.certification import DEFAULT_RADII
from robustkit.errors import ConfigError, short_repr

from .curve_fill import CurveSpec, parse_curve

OPTION_KEYS = ("checks", "certified_radii", "curve", "workers", "compile", "channels_last")


@dataclass(frozen=True)
class RunOptions:
    """Validated run options (see the config reference in docs/engine.md)."""

    checks: str = CHEAP                                    # cheap | full | off (docs/checks.md)
    certified_radii: tuple[float, ...] = DEFAULT_RADII           # L2 radii of certified rows
    curve: CurveSpec | None = None                         # the minimum-norm curve, or none
    workers: int = 1                                       # local processes (robustkit eval --workers)
    compile: bool = False                                  # torch.compile each model before attacking it
    channels_last: bool = False                            # models and batches in channels_last memory format

    def to_json(self) -> dict[str, Any]:
        """What is stored with the run (provenance) and compared when auditing it."""
        return {"checks": self.checks, "certified_radii": list(self.certified_radii),
                "curve": None if self.curve is None else self.curve.to_json(), "workers": self.workers,
                "compile": self.compile, "channels_last": self.channels_last}


def _radii(value: Any, where: str) -> tuple[float, ...]:
    """``certified_radii``: a non-empty list of distinct L2 radii >= 0 (sorted), e.g. [0, 0.25, 0.5]."""
    ok = (isinstance(value, (list, tuple)) and len(value) > 0 and
          all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 0 for r in value))
    if not ok or len(set(value)) != len(value):
        raise ConfigError(f"{where}certified_radii: expected a list of distinct L2 radii >= 0, e.g. "
                          f"[0, 0.25, 0.5], got {short_repr(value)}")
    return tuple(sorted(float(r) for r in value))


def _flag(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: expected true or false, got {short_repr(value)}")
    return value


def parse_options(data: Mapping[str, Any], norm: str, where: str = "") -> RunOptions:
    """The run options among ``data`` (a config mapping; other keys are ignored), validated once.

    ``where`` prefixes every error (``"sweep.yaml: "``); ``norm`` is the sweep's norm, which the curve's
    attack must support.
    """
    workers = data.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{where}workers: expected a positive integer, got {short_repr(workers)}")
    try:
        curve = parse_curve(data.get("curve"), norm)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return RunOptions(
        checks=check_mode(data.get("checks"), f"{where}checks"),
        certified_radii=_radii(data.get("certified_radii", DEFAULT_RADII), where),
        curve=curve, workers=workers,
        compile=_flag(data.get("compile", False), "compile", where),
        channels_last=_flag(data.get("channels_last", False), "channels_last", where))
