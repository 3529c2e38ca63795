"""MixedNUTS on the shared CIFAR-10 models: the transform, the paper's calibration, the held-out split, the
adaptive attack's gradient path and its automatic addition to the suite, and no false flags from the checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import robustkit
from robustkit.data import load_dataset
from robustkit.defenses import MixedNUTS, build_defense, nuts_transform, sample_hashes
from robustkit.engine.sweep import ModelEntry, Sweep, build_suite
from robustkit.errors import ConfigError, RobustkitError
from robustkit.zoo import load_model

EPS = 2 / 255
CAL_ATTACKS = [{"name": "pgd", "loss": "margin", "steps": 10}]


@pytest.fixture(scope="module")
def cifar(shared_dir):
    cal = load_dataset({"name": "npz", "root": str(shared_dir / "data/cifar10/abcrown_sdp200_exact.npz"),
                        "num_classes": 10})
    ev = load_dataset({"name": "npz", "root": str(shared_dir / "data/cifar10/cifar10_test_first100_exact.npz"),
                       "num_classes": 10})
    return cal, ev


@pytest.fixture(scope="module")
def members(shared_dir):
    weights = shared_dir / "weights"
    return (load_model("cifar10-resnet20", weights_dir=weights).eval(),
            load_model("cifar10-resnet2b-pgd", weights_dir=weights).eval())


@pytest.fixture(scope="module")
def calibrated(members, cifar):
    cal, _ = cifar
    mixed = build_defense("mixednuts", list(members))
    record = mixed.calibrate(cal.x, cal.y, eps=EPS, attacks=CAL_ATTACKS, split="abcrown_sdp200_exact (200 images)",
                             generator=torch.Generator().manual_seed(0))
    return mixed, record


def test_transform_matches_the_paper_formula():
    z = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    ln = (z - z.mean()) / math.sqrt(float(z.var()) + 1e-8)  # unbiased variance, as the official LN
    u = F.gelu(ln.double() - 0.5)
    expected = 2.0 * u.abs() ** 3.0 * u.sign()
    assert torch.allclose(nuts_transform(z, 2.0, 3.0, -0.5), expected)
    # the transform keeps the order of the logits (the robust member's prediction is unchanged)
    assert nuts_transform(z, 2.0, 3.0, -0.5).argmax() == z.argmax()


def test_members_and_parameters_are_validated(members):
    acc, rob = members
    with pytest.raises(ConfigError, match="two members"):
        build_defense("mixednuts", [acc, rob, acc])
    with pytest.raises(ConfigError, match="alpha"):
        build_defense({"name": "mixednuts", "alpha": 1.5}, [acc, rob])
    with pytest.raises(ConfigError, match="clamp"):
        build_defense({"name": "mixednuts", "clamp": "tanh"}, [acc, rob])
    with pytest.raises(RobustkitError, match="not calibrated"):
        build_defense("mixednuts", [acc, rob])(torch.rand(1, 3, 32, 32))


def test_calibration_follows_the_papers_algorithm(calibrated):
    mixed, record = calibrated
    assert mixed.fitted and record["beta"] == 98.5
    assert math.isclose(mixed.params["alpha"], 1 / (1 + record["cutoff"]))
    assert record["robust_member_clean_wrong"] > 0 and record["robust_member_attack_survivors"] > 0
    # the cutoff keeps beta % of the survivors' transformed margins above it
    atk_logits, wrong_logits = mixed._calibration_logits
    p = mixed.params
    probs = F.softmax(nuts_transform(atk_logits, p["s"], p["p"], p["c"]), dim=1).topk(2, dim=1).values
    kept = float(((probs[:, 0] - probs[:, 1]) >= record["cutoff"]).double().mean())
    assert kept >= 0.985 - 1 / atk_logits.shape[0]
    # a lower beta (another operating point) never needs a larger alpha
    before = p["alpha"]
    mixed.set_operating_point(90.0)
    assert mixed.params["alpha"] <= before
    mixed.set_operating_point(98.5)
    assert mixed.params["alpha"] == before


def test_forward_is_exact_and_the_gradient_follows_the_papers_bypass(calibrated, cifar):
    mixed, _ = calibrated
    _, ev = cifar
    x = ev.x[:8].clone().requires_grad_(True)
    out = mixed(x)
    z = mixed.member_logits(ev.x[:8])
    assert torch.equal(out.detach(), mixed.mixed_log_probs(z))   # verdicts: the exact mixture, bit for bit
    (grad,) = torch.autograd.grad(F.cross_entropy(out, ev.y[:8]), x)
    # straight-through, as the official RobustBench implementation: dLoss/dOutput at the exact output, pulled
    # back through the differentiable mixture
    g_out = (F.softmax(out.detach(), dim=1) - F.one_hot(ev.y[:8], 10)) / 8
    x2 = ev.x[:8].clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(mixed.gradient_log_probs(mixed.member_logits(x2)), x2, g_out)
    assert torch.allclose(grad, ref, atol=1e-6) and grad.abs().sum() > 0
    assert robustkit.attacks.bpda.bpda_parts(mixed) == ["mixing"]


def test_calibration_split_is_held_out_and_recorded(calibrated, cifar):
    mixed, record = calibrated
    cal, ev = cifar
    assert set(sample_hashes(cal.x[:5])) <= mixed.held_out
    assert not set(sample_hashes(ev.x)) & mixed.held_out
    with pytest.raises(ConfigError, match="calibrat"):
        robustkit.evaluate(mixed, dataset=(cal.x[:4], cal.y[:4]), attacks=["fgsm"], eps=[EPS], checks="off")
    prov = mixed.provenance()
    assert prov["calibration"] == "abcrown_sdp200_exact (200 images)"
    assert prov["calibration_record"]["content_hash"] == record["content_hash"]


def test_the_evaluator_adds_the_declared_adaptive_attack(calibrated, cifar):
    mixed, _ = calibrated
    _, ev = cifar
    sweep = Sweep(dataset=ev, models=[ModelEntry("mixednuts", mixed)], attacks=build_suite(["fgsm"]), norm="Linf",
                  eps=[EPS])
    assert sweep.labels == ["fgsm", "autoattack"]
    # an attack of the same name chosen by the user counts as present
    mine = {"name": "autoattack", "version": "custom", "attacks_to_run": ["apgd-ce"]}
    sweep = Sweep(dataset=ev, models=[ModelEntry("mixednuts", mixed)], attacks=build_suite([mine]), norm="Linf",
                  eps=[EPS])
    assert sweep.labels == ["autoattack"]


@pytest.mark.slow  # full checks on a ResNet mixture: over 3 CPU minutes since AutoAttack's official components
def test_end_to_end_attack_and_no_false_flags(calibrated, cifar, tmp_path):
    mixed, _ = calibrated
    _, ev = cifar
    attacks = [{"name": "pgd", "steps": 10}, {"name": "autoattack", "version": "custom", "attacks_to_run": ["apgd-ce"]}]
    result = robustkit.evaluate(mixed, dataset=(ev.x[:12], ev.y[:12]), attacks=attacks, eps=[EPS], checks="full",
                                name="mixednuts", out=tmp_path)
    row = result.leaderboard.iloc[0]
    assert row["flags"] == "" or row["flags"] != row["flags"]  # empty (or NaN when no check fired)
    assert row["robust_acc"] <= row["clean_acc"]
    assert "mixednuts(" in row["defense"]
    report = (tmp_path / "report.md").read_text()
    assert "calibration" in report or "mixednuts" in report
