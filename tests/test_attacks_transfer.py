"""The ``transfer`` attack: crafted on surrogates, judged by the target, worst case per sample."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from robustkit.attacks import build_attack
from robustkit.attacks.transfer import TransferAttack, module_fingerprint
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel

PGD_NO_RANDOM_START = {"name": "torchattacks:PGD", "steps": 10, "alpha": 0.06, "random_start": False}
EPS_PARTIAL = 0.22  # trained surrogates transfer to part of the samples
EPS_STRONG = 0.3    # white-box breaks (nearly) everything


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 4))


def quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 grey images whose class (0..3) is the quadrant that is brighter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.5
    return x.clamp(0, 1), y


def trained(seed: int, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    model = tiny_cnn(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def zoo():
    """Target and two independently trained surrogates (same data, different seeds), plus test data."""
    x_train, y_train = quadrant_data(128, seed=0)
    target, s1, s2 = (trained(seed, x_train, y_train) for seed in (1, 2, 4))
    x, y = quadrant_data(64, seed=5)
    with torch.no_grad():
        assert bool((target(x).argmax(1) == y).all())
    return {"target": target, "s1": s1, "s2": s2, "random": tiny_cnn(3).eval(), "x": x, "y": y}


def transfer(surrogates, attacks=(PGD_NO_RANDOM_START,), **params) -> TransferAttack:
    return build_attack({"name": "transfer", "surrogates": list(surrogates), "attacks": list(attacks), **params})


def test_identical_surrogate_equals_white_box(zoo):
    target, x, y = zoo["target"], zoo["x"], zoo["y"]
    for eps in (EPS_PARTIAL, EPS_STRONG):
        threat = ThreatModel("Linf", eps)
        white = build_attack(PGD_NO_RANDOM_START)(target, x, y, threat)
        via_copy = transfer([copy.deepcopy(target)])(target, x, y, threat)
        assert torch.equal(via_copy.success, white.success)
        assert 0 < int(white.success.sum())
    # robustkit's own pgd (the default inner attack, random start from the generator) agrees as well
    threat = ThreatModel("Linf", EPS_PARTIAL)
    white = build_attack({"name": "pgd", "steps": 10})(target, x, y, threat, generator=torch.Generator().manual_seed(0))
    default = build_attack({"name": "transfer", "surrogates": [copy.deepcopy(target)],
                            "attacks": [{"name": "pgd", "steps": 10}]})
    via_copy = default(target, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(via_copy.success, white.success)


def test_random_weight_surrogate_transfers_almost_nothing(zoo):
    target, x, y = zoo["target"], zoo["x"], zoo["y"]
    threat = ThreatModel("Linf", EPS_STRONG)
    white = build_attack(PGD_NO_RANDOM_START)(target, x, y, threat)
    useless = transfer([zoo["random"]])(target, x, y, threat)
    assert float(white.success.float().mean()) >= 0.9
    assert float(useless.success.float().mean()) <= 0.1
    assert useless.info["pairs"][0]["surrogate_success"] > 0  # it did fool its own surrogate


def test_worst_case_over_two_surrogates_is_the_union(zoo):
    target, x, y = zoo["target"], zoo["x"], zoo["y"]
    threat = ThreatModel("Linf", EPS_PARTIAL)
    alone1 = transfer([zoo["s1"]])(target, x, y, threat)
    alone2 = transfer([zoo["s2"]])(target, x, y, threat)
    both = transfer([zoo["s1"], zoo["s2"]])(target, x, y, threat)
    assert 0 < int(alone1.success.sum()) < x.shape[0] and 0 < int(alone2.success.sum()) < x.shape[0]
    assert torch.equal(both.success, alone1.success | alone2.success)
    assert int(both.success.sum()) >= max(int(alone1.success.sum()), int(alone2.success.sum()))
    # deterministic order: a sample broken by the first surrogate keeps the first surrogate's example
    assert torch.equal(both.x_adv[alone1.success], alone1.x_adv[alone1.success])
    only2 = alone2.success & ~alone1.success
    assert torch.equal(both.x_adv[only2], alone2.x_adv[only2])
    assert torch.equal(both.x_adv[~both.success], x[~both.success])
    pairs = both.info["pairs"]
    assert [p["attacked"] for p in pairs] == [x.shape[0], x.shape[0] - int(alone1.success.sum())]


def test_targeted_transfer_aims_every_surrogate_at_the_resolved_target(zoo):
    target, x, y = zoo["target"], zoo["x"], zoo["y"]
    threat = ThreatModel("Linf", EPS_STRONG)
    result = transfer([copy.deepcopy(target)], targeted="random")(target, x, y, threat,
                                                                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = target(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == result.target)
    assert int(result.success.sum()) > x.shape[0] // 2


def test_surrogate_config_is_serialisable_and_identifies_weights(zoo, tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")  # only its existence is checked when the attack is configured
    card = {"name": "lenet5-adv", "arch": "lenet5", "checkpoint": "w.pt"}
    attack = transfer([zoo["s1"], card], base_dir=tmp_path)
    cfg = attack.config()
    json.dumps(cfg)
    assert cfg["surrogates"][0] == {"module": "Sequential", "state_sha256": module_fingerprint(zoo["s1"])}
    assert cfg["surrogates"][1]["name"] == "lenet5-adv"
    assert cfg["attacks"][0]["name"] == "torchattacks:PGD"
    assert module_fingerprint(zoo["s1"]) != module_fingerprint(zoo["s2"])
    assert module_fingerprint(copy.deepcopy(zoo["s1"])) == module_fingerprint(zoo["s1"])


def test_bad_configurations_are_one_line_errors(zoo):
    with pytest.raises(ConfigError, match="surrogates: expected a list"):
        build_attack("transfer")
    with pytest.raises(ConfigError, match="at least one surrogate"):
        transfer([])
    with pytest.raises(ConfigError, match=r"surrogates\[0\]: expected"):
        transfer([42])
    with pytest.raises(ConfigError, match=r'surrogates\[1\]: unknown zoo model .*did you mean "mnist-lenet5-pgd"'):
        transfer([zoo["s1"], "mnist-lenet5-pgdd"])
    with pytest.raises(ConfigError, match=r"surrogates\[0\]: checkpoint file not found"):
        transfer([{"name": "x", "arch": "lenet5", "checkpoint": "does-not-exist.pt"}])
    with pytest.raises(ConfigError, match="set targeted on the transfer attack"):
        transfer([zoo["s1"]], attacks=[{"name": "torchattacks:PGD", "targeted": "random"}])
    with pytest.raises(ConfigError, match="has no targeted mode"):
        transfer([zoo["s1"]], attacks=["torchattacks:DeepFool"], targeted="random")
    with pytest.raises(ConfigError, match="supports norms Linf, not L2"):
        transfer([zoo["s1"]])(zoo["target"], zoo["x"], zoo["y"], ThreatModel("L2", 1.0))


def test_shared_lenet5_transfer_from_adv_trained_surrogate(shared_dir, lenet5_clean, mnist_test):
    """Real models: PGD crafted on advertorch's adversarially trained LeNet5 (a card dict, loaded by the zoo),
    judged on the standard-trained one; it transfers, but less than the white-box attack on the target."""
    x, y = mnist_test.x[:32], mnist_test.y[:32]
    threat = ThreatModel("Linf", 0.3)
    pgd = {"name": "torchattacks:PGD", "steps": 10, "alpha": 0.05, "random_start": False}
    card = {"name": "lenet5-adv", "arch": "lenet5",
            "checkpoint": str(shared_dir / "weights/advertorch/mnist_lenet5_advtrained.pt")}
    white = build_attack(pgd)(lenet5_clean, x, y, threat)
    moved = transfer([card], attacks=[pgd])(lenet5_clean, x, y, threat)
    assert 0 < int(moved.success.sum()) <= int(white.success.sum())
