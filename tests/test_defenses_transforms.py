"""Input-transformation defenses: exact transforms, declared needs (BPDA / EOT), and the test bed that shows
naive attacks overestimate their robustness (real MNIST, advertorch's clean LeNet5)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from robustkit.attacks import build_attack
from robustkit.attacks.bpda import NonDifferentiableModelError, bpda_parts
from robustkit.defenses import BitDepth, JPEG, MedianFilter, build_defense
from robustkit.errors import ConfigError
from robustkit.predict import is_randomized
from robustkit.threat import ThreatModel

N_IMAGES = 64


def test_bit_depth_rounds_to_the_grey_levels() -> None:
    x = torch.tensor([0.0, 0.07, 0.0715, 0.5, 0.93, 1.0]).reshape(1, 1, 1, 6)
    assert torch.allclose(BitDepth(3, bpda=False)(x).flatten(), torch.tensor([0, 0, 1 / 7, 4 / 7, 1, 1.0]))
    assert torch.equal(BitDepth(1, bpda=True)(x).flatten(), torch.tensor([0, 0, 0, 0, 1, 1.0]))


def test_jpeg_equals_a_pillow_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    for channels, mode in ((1, "L"), (3, "RGB")):
        x = torch.rand(2, channels, 16, 16, generator=gen)
        out = JPEG(quality=50, bpda=False)(x)
        for i in range(2):
            pixels = (x[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode).save(buf, "JPEG", quality=50)
            ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), dtype=np.float32) / 255
            assert np.array_equal(out[i].permute(1, 2, 0).numpy().reshape(ref.shape), ref)
        assert 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        JPEG()(torch.rand(1, 2, 8, 8))


def test_median_filter_matches_scipy_and_is_differentiable() -> None:
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(1))
    out = MedianFilter(3)(x)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")
    assert np.allclose(out.numpy(), ref)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(MedianFilter(3)(xg).sum(), xg)
    assert float(grad.sum()) == pytest.approx(x.numel())  # each output pixel sends its gradient to one input


def test_each_defense_declares_its_needs(lenet5_clean) -> None:
    x = torch.rand(4, 1, 28, 28)
    for spec, parts, randomized in (({"name": "bit-depth"}, ["transform"], None),
                                    ({"name": "bit-depth", "bpda": False}, [], None),
                                    ({"name": "jpeg"}, ["transform"], None),
                                    ({"name": "median-filter"}, [], None),
                                    ({"name": "gaussian-noise"}, [], True)):
        defended = build_defense(spec, lenet5_clean)
        assert bpda_parts(defended) == parts, spec
        assert defended.randomized is randomized, spec
        assert is_randomized(defended) is bool(randomized), spec
        if spec["name"] != "gaussian-noise":  # BPDA never changes the forward pass
            naive = build_defense({**spec, "bpda": False}, lenet5_clean)
            with torch.no_grad():
                assert torch.equal(defended(x), naive(x))
    with pytest.raises(ConfigError, match="size: expected an odd integer"):
        build_defense({"name": "median-filter", "size": 2}, lenet5_clean)
    with pytest.raises(ConfigError, match="quality: expected an integer between 1 and 95"):
        build_defense({"name": "jpeg", "quality": 100}, lenet5_clean)


@pytest.fixture(scope="module")
def mnist_batch(mnist_test):
    return mnist_test.x[:N_IMAGES], mnist_test.y[:N_IMAGES]


def _robust_accuracy(model, attack, x, y, threat) -> float:
    torch.manual_seed(0)
    result = build_attack(attack)(model, x, y, threat)
    return 1.0 - float(result.success.float().mean())


def test_naive_attacks_overestimate_non_differentiable_defenses(lenet5_clean, mnist_batch) -> None:
    """Bit-depth reduction and JPEG look robust to naive PGD (zero / missing gradients); with the BPDA identity
    they are broken. The median filter's gradient is exact, so plain PGD breaks it already."""
    x, y = mnist_batch
    pgd, linf = {"name": "pgd", "steps": 10}, ThreatModel("Linf", 0.3)
    naive = _robust_accuracy(build_defense({"name": "bit-depth", "bits": 3, "bpda": False}, lenet5_clean), pgd, x, y, linf)
    honest = _robust_accuracy(build_defense({"name": "bit-depth", "bits": 3}, lenet5_clean), pgd, x, y, linf)
    print(f"bit-depth 3 bits, Linf 0.3, PGD-10: naive {naive:.1%}, BPDA {honest:.1%}")
    assert naive >= 0.9 and honest <= 0.1
    with pytest.raises(NonDifferentiableModelError, match="BPDA"):
        build_attack(pgd)(build_defense({"name": "jpeg", "bpda": False}, lenet5_clean), x[:4], y[:4], linf)
    jpeg = _robust_accuracy(build_defense({"name": "jpeg", "quality": 75}, lenet5_clean), pgd, x, y, linf)
    median = _robust_accuracy(build_defense({"name": "median-filter"}, lenet5_clean), pgd, x, y, linf)
    print(f"jpeg q75 with BPDA: {jpeg:.1%}; median filter 3x3 (exact gradient): {median:.1%}")
    assert jpeg <= 0.1 and median <= 0.1


def test_naive_attacks_overestimate_randomized_defenses(lenet5_clean, mnist_batch) -> None:
    """Gaussian noise at inference (sigma 0.3): one-sample gradients (eot_iter 1) are poor; the declared
    randomness makes attacks average 20 passes (EOT) by default, which finds far more adversarial inputs."""
    x, y = mnist_batch
    noisy = build_defense({"name": "gaussian-noise", "sigma": 0.3}, lenet5_clean)
    linf = ThreatModel("Linf", 0.15)
    naive = _robust_accuracy(noisy, {"name": "fgsm", "eot_iter": 1}, x, y, linf)
    eot = _robust_accuracy(noisy, {"name": "fgsm"}, x, y, linf)
    print(f"gaussian-noise sigma 0.3, Linf 0.15, FGSM: eot_iter 1 {naive:.1%}, EOT (20, automatic) {eot:.1%}")
    assert naive >= 0.3 and eot <= 0.15 and naive - eot >= 0.2
