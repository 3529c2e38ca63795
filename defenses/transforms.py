"""Input-transformation defenses, and the test bed for evaluating them honestly.

Each transform preprocesses the input before the model and says what an attack needs to see through it:

============================  ===========================================  =================================
defense (transform)           gradient                                     attack needs
============================  ===========================================  =================================
``bit-depth`` (BitDepth)      zero almost everywhere (rounding)            BPDA, identity substitute
``jpeg`` (JPEG, Pillow)       none (leaves autograd: Pillow on uint8)      BPDA, identity substitute
``median-filter``             exact (selects the median pixel)             nothing (BPDA optional)
``gaussian-noise``            exact, but random                            EOT (``randomized = True``)
============================  ===========================================  =================================

Bit-depth reduction and JPEG compression are the "obfuscated gradients" of Athalye, Carlini & Wagner
(ICML 2018): attacked naively they look robust because the attack has no gradient. With ``bpda: true``
(the default) the transform runs exactly in the forward pass and as the identity in the backward pass
(:func:`robustkit.attacks.bpda.bpda`), which is how such defenses must be evaluated. ``bpda: false``
keeps the naive behaviour on purpose, to show the difference: bit-depth then gives zero gradients and
JPEG makes gradient attacks stop with a clear error. Gaussian noise at inference declares
``randomized = True``, so attacks average gradients over passes (EOT) and verdicts are majority votes.
"""
from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks.bpda import bpda as bpda_wrap
from robustkit.errors import ConfigError

from .base import Defense, register_defense


class InputTransform(nn.Module):
    """A preprocessing step ``[0, 1] images -> [0, 1] images``; ``apply`` is the exact transform.

    With ``bpda=True`` the step is wrapped in BPDA (exact forward, identity backward) and the module
    reports itself through ``bpda`` (see :func:`robustkit.attacks.bpda.bpda_parts`).
    """

    def __init__(self, bpda: bool) -> None:
        super().__init__()
        self.bpda = bool(bpda)  # read by bpda_parts: this module's backward pass is a substitute

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bpda_wrap(self.apply)(x) if self.bpda else self.apply(x)


class BitDepth(InputTransform):
    """Reduce each pixel to ``bits`` bits: ``round(x * (2^bits - 1)) / (2^bits - 1)`` (Xu et al. 2018)."""

    def __init__(self, bits: int = 3, bpda: bool = True) -> None:
        super().__init__(bpda)
        self.levels = 2 ** int(bits) - 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x.clamp(0, 1) * self.levels) / self.levels

    def extra_repr(self) -> str:
        return f"levels={self.levels}, bpda={self.bpda}"


class JPEG(InputTransform):
    """JPEG compression at ``quality`` with Pillow, image by image (Dziugaite et al. 2016; Guo et al. 2018).

    The image is rounded to uint8 (as a saved image would be), encoded and decoded in memory. 1-channel
    inputs are encoded as greyscale, 3-channel inputs as RGB.
    """

    def __init__(self, quality: int = 75, bpda: bool = True) -> None:
        super().__init__(bpda)
        self.quality = int(quality)

    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"jpeg: expects NCHW images with 1 or 3 channels, got shape {tuple(x.shape)}")
        pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(pixels)
        for i, image in enumerate(pixels):
            pil = Image.fromarray(image[:, :, 0], mode="L") if image.shape[2] == 1 else Image.fromarray(image, mode="RGB")
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=self.quality)
            buffer.seek(0)
            decoded = np.asarray(Image.open(buffer).convert("L" if image.shape[2] == 1 else "RGB"))
            out[i] = decoded.reshape(image.shape)
        result = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0
        return result.contiguous()

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bpda={self.bpda}"


class MedianFilter(InputTransform):
    """``size`` x ``size`` median filter per channel, reflect padding (scipy.ndimage mode "mirror").

    Computed in torch, so it is differentiable almost everywhere (the gradient goes to the median pixel of
    each window) and needs no BPDA; ``bpda=True`` uses the identity substitute instead.
    """

    def __init__(self, size: int = 3, bpda: bool = False) -> None:
        super().__init__(bpda)
        self.size = int(size)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        pad = k // 2
        mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
        padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)  # (n, c, h, w, k, k)
        return windows.reshape(*windows.shape[:4], k * k).median(dim=-1).values

    def extra_repr(self) -> str:
        return f"size={self.size}, bpda={self.bpda}"


class GaussianNoise(nn.Module):
    """Add N(0, sigma^2) noise at inference (clipped back to [0, 1] when ``clip``): a randomized defense."""

    randomized = True

    def __init__(self, sigma: float = 0.1, clip: bool = True) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.clip = bool(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.sigma * torch.randn_like(x)
        return noisy.clamp(0, 1) if self.clip else noisy

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, clip={self.clip}"


class TransformDefense(Defense):
    """``model(transform(x))``; subclasses build ``self.transform`` from their parameters."""

    def __init__(self, model: nn.Module, **params: Any) -> None:
        super().__init__(model, **params)
        self.transform = self.build_transform()

    def build_transform(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


@register_defense("bit-depth", aliases=("bit-depth-reduction",))
class BitDepthDefense(TransformDefense):
    """Bit-depth reduction to ``bits`` bits per pixel (default 3), BPDA identity by default."""

    name: ClassVar[str] = "bit-depth"
    defaults: ClassVar[dict[str, Any]] = {"bits": 3, "bpda": True}

    def validate(self) -> None:
        if not 1 <= self.params["bits"] <= 16:
            raise ConfigError(f"{self.who}: bits: expected an integer between 1 and 16, got {self.params['bits']}")

    def build_transform(self) -> nn.Module:
        return BitDepth(self.params["bits"], self.params["bpda"])


@register_defense("jpeg", aliases=("jpeg-compression",))
class JPEGDefense(TransformDefense):
    """JPEG compression at ``quality`` (default 75), BPDA identity by default."""

    name: ClassVar[str] = "jpeg"
    defaults: ClassVar[dict[str, Any]] = {"quality": 75, "bpda": True}

    def validate(self) -> None:
        if not 1 <= self.params["quality"] <= 95:
            raise ConfigError(f"{self.who}: quality: expected an integer between 1 and 95 (Pillow's useful range), "
                              f"got {self.params['quality']}")

    def build_transform(self) -> nn.Module:
        return JPEG(self.params["quality"], self.params["bpda"])


@register_defense("median-filter", aliases=("median",))
class MedianFilterDefense(TransformDefense):
    """Median filter of ``size`` x ``size`` (default 3; odd), exact gradient by default."""

    name: ClassVar[str] = "median-filter"
    defaults: ClassVar[dict[str, Any]] = {"size": 3, "bpda": False}

    def validate(self) -> None:
        size = self.params["size"]
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"{self.who}: size: expected an odd integer >= 1, got {size}")

    def build_transform(self) -> nn.Module:
        return MedianFilter(self.params["size"], self.params["bpda"])


@register_defense("gaussian-noise", aliases=("noise-injection",))
class GaussianNoiseDefense(TransformDefense):
    """Gaussian noise of std ``sigma`` (default 0.1) added to the input at inference; randomized (EOT)."""

    name: ClassVar[str] = "gaussian-noise"
    defaults: ClassVar[dict[str, Any]] = {"sigma": 0.1, "clip": True}

    def validate(self) -> None:
        if not self.params["sigma"] > 0:
            raise ConfigError(f"{self.who}: sigma: expected a number > 0, got {self.params['sigma']}")

    def build_transform(self) -> nn.Module:
        return GaussianNoise(self.params["sigma"], self.params["clip"])
