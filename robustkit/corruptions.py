"""Common corruptions (Hendrycks & Dietterich, ICLR 2019) applied to any dataset, and their summary metrics.

The 15 corruptions come from the ``imagecorruptions`` package (installed as ``imagecorruptions-imaug``, the
maintained fork with the same module and functions: the 2020 original no longer imports with NumPy 2,
setuptools >= 81 or scikit-image >= 0.19). Its parameters are ImageNet-C's, so on 32x32 images they are
*not* CIFAR-10-C's (docs/corruptions.md lists what differs); the official CIFAR-10-C files still load with
the ``cifar10c`` dataset. The package refuses images under 32x32; :func:`check_image_size` turns that into a
one-line ConfigError before anything runs.

Determinism: each image is corrupted with NumPy's global RNG seeded from (sweep seed, corruption, severity,
example index) -- and that seed also goes to the two corruptions that take their own ``seed`` argument --
so an image's corruption does not depend on the batch it is in, and the global RNG state is restored after.

Metrics (docs/corruptions.md): with ``E_{c,s}`` the top-1 error under corruption c at severity s and
``E_clean`` the clean error, CE_c = sum_s E_{c,s} / sum_s E^base_{c,s}, mCE = mean_c CE_c; relative
CE_c = sum_s (E_{c,s} - E_clean) / sum_s (E^base_{c,s} - E^base_clean), relative mCE = its mean. Their 95%
intervals are a paired percentile bootstrap over the examples (both models see the same images).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # imagecorruptions refuses smaller images
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def check_corruptions(names: object, severities: object, field: str = "threat_model") -> tuple[list[str], list[int]]:
    """Validated corruption names (all 15 when None) and severities (all 5 when None), in canonical order."""
    if names is None:
        chosen = list(CORRUPTIONS)
    else:
        items = [names] if isinstance(names, str) else names
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(f"{field}.corruptions: expected a list of corruption names, got {names!r}")
        for name in items:
            if name not in CORRUPTIONS:
                raise ConfigError(f"{field}.corruptions: unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
        chosen = [c for c in CORRUPTIONS if c in items]
    if severities is None:
        sev = list(SEVERITIES)
    else:
        items = [severities] if isinstance(severities, int) and not isinstance(severities, bool) else severities
        if not isinstance(items, (list, tuple)) or not items or any(
                isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES for s in items):
            raise ConfigError(f"{field}.severities: expected a list of integers in 1..5, got {severities!r}")
        sev = sorted(set(items))
    return chosen, sev


def check_image_size(shape: Sequence[int], field: str = "threat_model") -> None:
    """ConfigError unless (C, H, W) images are 1- or 3-channel and at least 32x32."""
    c, h, w = (int(v) for v in shape[-3:])
    if c not in (1, 3):
        raise ConfigError(f"{field}: corruptions need 1- or 3-channel images, got {c} channels")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ConfigError(f"{field}: images are {h}x{w}, but the corruptions need at least {MIN_SIDE}x{MIN_SIDE} "
                          f"(imagecorruptions); pad or resize the dataset first")


def _functions() -> Mapping[str, object]:
    try:
        import imagecorruptions  # optional dependency: pip install "robustkit[corruptions]"
    except ImportError as exc:
        raise ConfigError("corruptions need the imagecorruptions package: pip install \"robustkit[corruptions]\" "
                          f"(imagecorruptions-imaug) [{exc}]") from None
    return imagecorruptions.corruption_dict


def example_seed(seed: int, name: str, severity: int, index: int) -> int:
    """A 32-bit seed for one example's corruption, from the sweep seed and the example's position only."""
    digest = hashlib.sha256(f"{int(seed)}:{name}:{int(severity)}:{int(index)}".encode()).hexdigest()
    return int(digest[:8], 16)


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG (imagecorruptions draws from it) and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt_images(x: torch.Tensor, name: str, severity: int, *, seed: int, indices: Sequence[int]) -> torch.Tensor:
    """Corrupted copies of ``x`` (float32 NCHW in [0, 1]); ``indices`` are the examples' dataset positions.

    Images go through uint8 (as the package expects, and as CIFAR-10-C is stored). A 1-channel image is
    corrupted as gray RGB and averaged back to one channel.
    """
    check_image_size(tuple(x.shape[1:]))
    functions = _functions()
    fn = functions[name]
    takes_seed = "seed" in inspect.signature(fn).parameters
    images = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty(images.shape, dtype=np.uint8)
    for i, (img, index) in enumerate(zip(images, indices)):
        rgb = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
        s = example_seed(seed, name, severity, index)
        with _numpy_seeded(s):
            result = fn(Image.fromarray(rgb), severity, seed=s) if takes_seed else fn(Image.fromarray(rgb), severity)
        result = np.uint8(np.clip(np.asarray(result, dtype=np.float64), 0, 255))
        out[i] = result.mean(axis=2, keepdims=True).round().astype(np.uint8) if img.shape[2] == 1 else result
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255.0).contiguous()


# ---------------------------------------------------------------------------------------------------- metrics
Outcomes = Mapping[tuple[str, int], np.ndarray]  # (corruption, severity) -> per-example correct (bool)


def _ce(err: Mapping[tuple[str, int], np.ndarray], base: Mapping[tuple[str, int], np.ndarray],
        clean: np.ndarray | None, base_clean: np.ndarray | None) -> np.ndarray:
    """mCE (relative when clean errors are given) for error rates of shape (B,) per key; returns (B,)."""
    names = sorted({c for c, _ in err}, key=CORRUPTIONS.index)
    ces = []
    for c in names:
        keys = [k for k in err if k[0] == c]
        num = sum(err[k] - (clean if clean is not None else 0.0) for k in keys)
        den = sum(base[k] - (base_clean if base_clean is not None else 0.0) for k in keys)
        with np.errstate(divide="ignore", invalid="ignore"):
            ces.append(np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan))
    return np.mean(np.stack(ces), axis=0)


def _draws(n: int) -> np.ndarray:
    """Row 0: the examples as they are; rows 1..: bootstrap resamples of them (fixed seed)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    return np.vstack([np.arange(n)[None, :], rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))])


def _point_and_interval(values: np.ndarray) -> tuple[float, float, float]:
    point, boot = values[0], values[1:]
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(point) or boot.size == 0:
        return float("nan"), float("nan"), float("nan")
    low, high = np.percentile(boot, [2.5, 97.5])
    return round(100.0 * float(point), 2), round(100.0 * float(low), 2), round(100.0 * float(high), 2)


def mean_accuracy(model: Outcomes) -> tuple[float, float, float]:
    """Mean accuracy over every (corruption, severity), in percent, with a bootstrap interval over examples
    (the (corruption, severity) results share their images, so a pooled binomial interval would be too narrow)."""
    keys = list(model)
    draws = _draws(len(model[keys[0]]))
    acc = np.mean([np.asarray(model[k], dtype=float)[draws].mean(axis=1) for k in keys], axis=0)
    return _point_and_interval(acc)


def mce(model: Outcomes, baseline: Outcomes, model_clean: np.ndarray, baseline_clean: np.ndarray,
        *, relative: bool = False) -> tuple[float, float, float]:
    """(mCE, CI low, CI high) in percent, paired bootstrap over examples. NaN where a baseline error sum is 0."""
    keys = sorted(model, key=lambda k: (CORRUPTIONS.index(k[0]), k[1]))
    missing = [k for k in keys if k not in baseline]
    if missing:
        raise ConfigError(f"mCE: the baseline model has no result for {missing[0][0]} at severity {missing[0][1]}")
    draws = _draws(len(model_clean))

    def rates(correct: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(correct, dtype=float)[draws].mean(axis=1)

    err = {k: rates(model[k]) for k in keys}
    base = {k: rates(baseline[k]) for k in keys}
    return _point_and_interval(_ce(err, base, rates(model_clean) if relative else None,
                                   rates(baseline_clean) if relative else None))
