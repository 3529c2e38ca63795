"""Patch geometry: the square a patch threat model allows to change, and where it sits.

A patch covers a fraction ``area`` of the image: a square of side ``round(sqrt(area * H * W))`` pixels. Its
location is ``fixed`` (one ``position`` for every image, default the centre), ``random`` (drawn per image
from the generator, so the same seed gives the same places) or ``searched`` (the attack picks it; the
threat model then only bounds the side). The masks built here are what :func:`robustkit.threat.check_budget`
verifies: no value outside them may change.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import ConfigError
from .threat import ThreatModel

LOCATIONS = ("fixed", "random", "searched")
PATCH_EPS = 1.0  # inside the patch any value in [0, 1] is allowed: the Linf ball of radius 1


def patch_side(area: float, height: int, width: int, field: str = "area") -> int:
    """Side in pixels of a square covering ``area`` of an H x W image; ConfigError if it cannot fit."""
    if isinstance(area, bool) or not isinstance(area, (int, float)) or not 0 < float(area) <= 1:
        raise ConfigError(f"{field}: expected the patch's fraction of the image area in (0, 1], got {area!r}")
    side = int(round(math.sqrt(float(area) * height * width)))
    if side > min(height, width):
        raise ConfigError(f"{field}: a patch of area {area:g} of a {height}x{width} image needs a {side}-pixel square, "
                          f"larger than the image's {min(height, width)}-pixel side")
    if side < 1:
        raise ConfigError(f"{field}: a patch of area {area:g} of a {height}x{width} image is smaller than one pixel")
    return side


def check_location(location: str, field: str = "location") -> str:
    if location not in LOCATIONS:
        raise ConfigError(f"{field}: expected one of {', '.join(LOCATIONS)}, got {location!r}")
    return location


def positions(n: int, height: int, width: int, side: int, location: str,
              position: Sequence[int] | None = None, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left (row, col) of each sample's patch, int64 (n,) each. ``searched`` has no position: error."""
    check_location(location)
    if location == "searched":
        raise ConfigError("location: searched patches are placed by the attack, not by the threat model")
    if location == "fixed":
        if position is None:
            row, col = (height - side) // 2, (width - side) // 2
        else:
            if (not isinstance(position, (list, tuple)) or len(position) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in position)):
                raise ConfigError(f"position: expected [row, col] of the patch's top-left pixel, got {position!r}")
            row, col = int(position[0]), int(position[1])
            if not (0 <= row <= height - side and 0 <= col <= width - side):
                raise ConfigError(f"position: a {side}-pixel patch at [{row}, {col}] does not fit in a "
                                  f"{height}x{width} image (row <= {height - side}, col <= {width - side})")
        return torch.full((n,), row, dtype=torch.long), torch.full((n,), col, dtype=torch.long)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    rows = torch.randint(0, height - side + 1, (n,), generator=generator, device=gen_device).cpu()
    cols = torch.randint(0, width - side + 1, (n,), generator=generator, device=gen_device).cpu()
    return rows, cols


def square_masks(height: int, width: int, side: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bool masks (n, 1, H, W), True on each sample's side x side square at (rows, cols)."""
    r = torch.arange(height).reshape(1, height, 1)
    c = torch.arange(width).reshape(1, 1, width)
    rows, cols = rows.reshape(-1, 1, 1).cpu(), cols.reshape(-1, 1, 1).cpu()
    inside = (r >= rows) & (r < rows + side) & (c >= cols) & (c < cols + side)
    return inside.unsqueeze(1)


def mask_corners(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left (row, col) of each mask's square (the first True row and column)."""
    m = mask.bool().any(dim=1) if mask.dim() == 4 else mask.bool()
    rows = m.any(dim=2).float().argmax(dim=1)
    cols = m.any(dim=1).float().argmax(dim=1)
    return rows.long(), cols.long()


def patch_threat(x: torch.Tensor, area: float, location: str, position: Sequence[int] | None = None,
                 generator: torch.Generator | None = None) -> ThreatModel:
    """The patch threat model for a batch: a per-sample mask (fixed, random) or only the side (searched)."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    side = patch_side(area, height, width)
    if check_location(location) == "searched":
        return ThreatModel("Linf", PATCH_EPS, patch_side=side)
    rows, cols = positions(x.shape[0], height, width, side, location, position, generator)
    return ThreatModel("Linf", PATCH_EPS, mask=square_masks(height, width, side, rows, cols).to(x.device),
                       patch_side=side)
