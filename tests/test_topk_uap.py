"""Ordered top-K (QuadAttack and the CW baseline) and universal perturbations (SGA and the SPGD baseline)."""
import numpy as np
import pytest
import torch
from torch import nn

from robustkit.attacks import build_attack
from robustkit.attacks.topk import final_linear, order_constraints, ordered_topk_success, solve_feature_qp
from robustkit.attacks.uap import fooling_rate
from robustkit.errors import ConfigError, RobustkitError
from robustkit.threat import ThreatModel


def test_feature_qp_is_the_closest_point_with_the_ordered_top_k():
    rng = np.random.default_rng(0)
    weight, bias, h = rng.normal(size=(10, 16)), rng.normal(size=10), rng.normal(size=16)
    targets = np.array([7, 2, 5])
    a, c = order_constraints(weight, bias, targets, kappa=0.5)
    assert a.shape == (9, 16)  # K - 1 order constraints + (classes - K) others
    h_star = solve_feature_qp(h, a, c)
    logits = weight @ h_star + bias
    assert list(np.argsort(-logits)[:3]) == [7, 2, 5]
    assert (a @ h_star - c).min() > -1e-9
    for _ in range(200):  # no feasible point nearby is closer to h
        cand = h_star + rng.normal(scale=0.3, size=16)
        if (a @ cand - c).min() >= 0:
            assert np.linalg.norm(cand - h) >= np.linalg.norm(h_star - h) - 1e-9


class _NoFinalLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return 2.0 * self.fc(x.flatten(1)).tanh()


def test_topk_errors():
    x = torch.rand(3, 3, 2, 2)
    with pytest.raises(ConfigError, match=r"needs a model whose logits are the output of a final nn.Linear layer; "
                                          r"_NoFinalLinear has none \(use method: cw\)"):
        final_linear(_NoFinalLinear(), x)
    with pytest.raises(ConfigError, match=r"k=4 needs k <= classes - 1 = 3"):
        build_attack({"name": "topk", "k": 4})(_NoFinalLinear(), x, torch.tensor([0, 1, 2]), ThreatModel("Linf", 0.1))
    with pytest.raises(ConfigError, match=r"targeted: expected random or given"):
        build_attack({"name": "topk", "targeted": "least-likely"})
    given = build_attack({"name": "topk", "k": 2, "targeted": "given", "method": "cw"})
    with pytest.raises(ConfigError, match=r"contains the sample's true label"):
        given(_NoFinalLinear(), x, torch.tensor([0, 1, 2]), ThreatModel("Linf", 0.1),
              target=torch.tensor([[1, 0], [0, 2], [0, 1]]))


@pytest.fixture(scope="module")
def cifar(shared_dir):
    from robustkit.data import load_dataset
    from robustkit.zoo import load_model

    ds = load_dataset({"name": "npz", "root": str(shared_dir / "data/cifar10/cifar10_test_first100_exact.npz")})
    model = load_model("cifar10-resnet20", weights_dir=shared_dir / "weights")
    return model, ds.x, ds.y


@pytest.mark.parametrize("method", ["quad", "cw"])
def test_topk_on_resnet20_reaches_the_ordered_targets(cifar, method):
    model, x, y = cifar
    x, y = x[:6], y[:6]
    for k in (2,):
        attack = build_attack({"name": "topk", "k": k, "method": method, "steps": 15})
        result = attack(model, x, y, ThreatModel("Linf", 4 / 255), generator=torch.Generator().manual_seed(0))
        lists = result.info["topk_targets"]
        assert lists.shape == (6, k) and not (lists == y[:, None]).any()
        with torch.no_grad():
            hit = ordered_topk_success(model(result.x_adv), lists)
            clean_hit = ordered_topk_success(model(x), lists)
        assert hit.float().mean() >= 0.5 and not clean_hit.any(), (method, k, hit)
        assert torch.equal(hit, result.info["topk_hit"])
        assert torch.equal(result.success, model(result.x_adv).argmax(1) == lists[:, 0])  # base re-prediction
        assert (result.x_adv - x).abs().max() <= 4 / 255 * (1 + 1e-6)


def test_uap_fit_then_held_out_and_its_errors(cifar):
    model, x, y = cifar
    threat = ThreatModel("Linf", 8 / 255)
    attack = build_attack({"name": "uap", "epochs": 2, "batch_size": 20, "inner_iters": 2})
    with pytest.raises(RobustkitError, match=r"call fit\(\) on a training split first"):
        attack(model, x[:4], y[:4], threat)
    info = attack.fit(model, x[:20], y[:20], threat, generator=torch.Generator().manual_seed(0))
    assert info["train_examples"] == 20 and info["method"] == "sga"
    held = attack(model, x[40:], y[40:], threat)
    delta = held.x_adv - x[40:]
    assert delta.abs().max() <= 8 / 255 * (1 + 1e-6)
    inside = (x[40:] > 8 / 255) & (x[40:] < 1 - 8 / 255)  # where clipping to [0, 1] did not bite
    per_pixel = torch.where(inside, delta, torch.nan)
    spread = (per_pixel.nanmean(0, keepdim=True) - per_pixel).abs().nan_to_num(0).max()
    assert spread < 1e-6  # one perturbation for every image
    with torch.no_grad():  # it raises the held-out loss of the clean predictions (the SGA objective)
        pred = model(x[40:]).argmax(1)
        before = nn.functional.cross_entropy(model(x[40:]), pred)
        after = nn.functional.cross_entropy(model(held.x_adv), pred)
        changed = float((model(held.x_adv).argmax(1) != pred).float().mean())
    assert after > 1.1 * before
    assert 0 < fooling_rate(model, x[40:], held.x_adv) == pytest.approx(changed)
    with pytest.raises(RobustkitError, match=r"fitted for another model or budget"):
        attack(model, x[:4], y[:4], ThreatModel("Linf", 4 / 255))
