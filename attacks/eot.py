"""EOT (Expectation over Transformation) support: finding out whether a model is randomized.

A randomized defense (noise injection, random resizing, stochastic activations) makes a single-sample
gradient a poor, sometimes useless, estimate of the direction that fools it on average; attacks must
average gradients over several forward passes (Athalye et al., 2018) and the final verdict must come from
several passes too (:func:`robustkit.predict.predict`). Both happen only if robustkit knows the model is
random. Models may say so (``randomized = True`` on the model or any submodule), but a defense author
can forget -- so the attack base also *detects* randomness: two forward passes on a small probe batch that
disagree beyond float noise mean the model is random. Detection runs once per model per attack call
(:func:`refresh_randomized`, a handful of samples, negligible next to the attack) and its result is cached
per module (by weak reference; nothing is written onto the model), where
:func:`robustkit.predict.is_randomized` reads it; :func:`robustkit.predict.predict` probes a model it has
no answer for yet, so clean predictions made before any attack agree too.

Detection is a safety net, not a proof: randomness that shows only on some inputs, or only rarely, can
escape a two-pass probe. Defenses should declare ``randomized = True``; an explicit ``randomized = False``
on the top-level model switches detection off (e.g. for a model with benign float non-determinism).
"""
from __future__ import annotations

import torch
from torch import nn

from robustkit.predict import declared_randomized, detected_randomized, remember_detection

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
    module (by weak reference, :func:`robustkit.predict.remember_detection`) so that ``eot_samples`` and
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
