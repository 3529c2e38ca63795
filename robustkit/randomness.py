"""Whether a model is randomized: what it declares, what was detected, and the detection itself.

A randomized defense (noise injection, random resizing, stochastic activations) makes a single-sample
gradient a poor, sometimes useless, estimate of the direction that fools it on average; attacks must
average gradients over several forward passes (Expectation over Transformation, Athalye et al., 2018) and
the final verdict must come from several passes too (:func:`robustkit.predict.predict`). Both happen only if
robustkit knows the model is random. Models may say so (``randomized = True`` on the model or any
submodule), but a defense author can forget -- so robustkit also *detects* randomness: two forward passes on
a small probe batch that disagree beyond float noise mean the model is random. Detection runs once per model
per attack call (:func:`refresh_randomized`, a handful of samples, negligible next to the attack) and its
result is cached per module (by weak reference; nothing is written onto the model), where
:func:`is_randomized` reads it; :func:`robustkit.predict.predict` probes a model it has no answer for yet, so
clean predictions made before any attack agree too.

Detection is a safety net, not a proof: randomness that shows only on some inputs, or only rarely, can
escape a two-pass probe. Defenses should declare ``randomized = True``; an explicit ``randomized = False``
on the top-level model switches detection off (e.g. for a model with benign float non-determinism).

This module sits below both :mod:`robustkit.predict` and the attack plugins, which both need it.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

# What detection found per model ("repeated passes disagree"), held by weak reference so
# that the cache neither keeps a model alive nor writes anything onto the user's module.
_DETECTED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def detected_randomized(model: nn.Module) -> bool | None:
    """The cached detection result for ``model`` (None if it was never probed)."""
    try:
        return _DETECTED.get(model)
    except TypeError:  # an unhashable module: nothing can be cached for it
        return None


def remember_detection(model: nn.Module, randomized: bool) -> None:
    """Cache a detection result for ``model`` (a no-op for modules that cannot be weakly referenced)."""
    try:
        _DETECTED[model] = bool(randomized)
    except TypeError:
        pass


def declared_randomized(model: nn.Module) -> bool | None:
    """What the model says about itself: True/False if declared, None if it says nothing.

    The top-level module's own ``randomized`` attribute wins (so a wrapper can state ``randomized = False``,
    e.g. because it fixes the seed); otherwise any submodule declaring ``randomized = True`` (a noise
    layer inside a ``Sequential``) makes the whole model randomized.
    """
    own = getattr(model, "randomized", None)
    if own is not None:
        return bool(own)
    for module in model.modules():
        if getattr(module, "randomized", None):
            return True
    return None


def is_randomized(model: nn.Module) -> bool:
    """True if the model declares that its forward pass is random, or was detected to be (and declares nothing)."""
    declared = declared_randomized(model)
    if declared is not None:
        return declared
    return bool(detected_randomized(model))


PROBE_SAMPLES = 8
DETECT_PASSES = 2
# Repeated passes of a deterministic model may differ by float non-determinism (GPU reductions, TF32);
# anything larger than this, relative to the logits' scale, is real randomness.
DETECT_RTOL = 1e-4


@torch.no_grad()
def detect_randomized(model: nn.Module, x: torch.Tensor, n_passes: int = DETECT_PASSES, *,
                      max_samples: int = PROBE_SAMPLES, rtol: float = DETECT_RTOL) -> bool:
    """True if ``n_passes`` forward passes on (up to ``max_samples`` of) ``x`` give different logits.

    The model is run in whatever mode it is in (the attack base calls this in eval mode, the mode attacks
    run in). Differences count when ``max |a - b| > rtol * (1 + max |a|)``, which ignores float
    non-determinism but catches any noise that could change a prediction.
    """
    if n_passes < 2:
        raise ValueError(f"detect_randomized needs at least 2 passes to compare, got {n_passes}")
    probe = x[:max_samples]
    if probe.shape[0] == 0:
        return False
    first = model(probe).float().nan_to_num()
    scale = 1.0 + (float(first.abs().max()) if first.numel() else 0.0)
    for _ in range(n_passes - 1):
        again = model(probe).float().nan_to_num()
        if again.shape != first.shape:
            return True
        if again.numel() and float((again - first).abs().max()) > rtol * scale:
            return True
    return False


def refresh_randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """Declared-or-detected randomness of ``model`` for one attack call; caches what it detects.

    A declaration (``randomized = True/False``) is trusted and costs nothing; a model that declares nothing
    is probed with :func:`detect_randomized` on the first samples of ``x``. The result is cached for the
    module (by weak reference, :func:`remember_detection`) so that ``eot_samples`` and
    ``predict`` inside the same call agree without probing again.
    """
    declared = declared_randomized(model)
    if declared is not None:
        return declared
    if x.shape[0] == 0:  # nothing to probe with: keep what is known
        return bool(detected_randomized(model))
    detected = detect_randomized(model, x)
    remember_detection(model, detected)
    return detected


@torch.no_grad()
def mean_logits(model: nn.Module, x: torch.Tensor, n_passes: int) -> torch.Tensor:
    """Logits averaged over ``n_passes`` forward passes (one pass for a deterministic model)."""
    total = model(x).float()
    for _ in range(max(1, n_passes) - 1):
        total += model(x).float()
    return total / max(1, n_passes)
