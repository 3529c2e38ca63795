"""``torchattacks:<Class>``: same numbers as torchattacks itself, plus robustkit's guarantees; and ``attacks list``."""
from __future__ import annotations

import csv
import inspect
import io

import pytest
import torch
import torchattacks
from torch import nn

from robustkit.attacks import build_attack, get_attack_class
from robustkit.attacks.torchattacks_wrapper import NOT_WRAPPED, TORCHATTACKS_TABLE, _MeanLogits
from robustkit.cli import main as cli_main
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel, perturbation_norm


def tiny_cnn(seed: int = 0, classes: int = 4, channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, classes)).eval()


def quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 grey images whose class (0..3) is the quadrant that is brighter: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.rand(n, 1, 8, 8, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.25
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def model_and_data():
    """A tiny CNN trained for a few steps on quadrant images (4 classes), and 32 test images it gets right."""
    model = tiny_cnn().train()
    x_train, y_train = quadrant_data(128, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    x, y = quadrant_data(64, seed=1)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    assert int(right.sum()) >= 32
    return model, x[right][:32], y[right][:32]


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


# ------------------------------------------------------------------------------------------- same numbers
def test_pgd_matches_torchattacks_under_the_same_seed(model_and_data):
    model, x, y = model_and_data
    torch.manual_seed(123)
    x_direct = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=5)(x, y)
    attack = build_attack({"name": "torchattacks:PGD", "alpha": 0.025, "steps": 5})
    torch.manual_seed(123)
    result = attack(model, x, y, ThreatModel("Linf", 0.1))
    assert 1 - float(result.success.float().mean()) == robust_accuracy(model, x_direct, y)
    assert robust_accuracy(model, x_direct, y) < 0.9  # the attack did something
    # identical up to the base class's float-rounding projection (one ulp)
    assert float((result.x_adv - x_direct).abs().max()) <= 1e-6
    assert attack.config()["implementation"] == f"torchattacks-{torchattacks.__version__}"


def test_shared_lenet5_pgd_matches_torchattacks(lenet5_clean, mnist_test):
    x, y = mnist_test.x[:100], mnist_test.y[:100]
    torch.manual_seed(0)
    x_direct = torchattacks.PGD(lenet5_clean, eps=0.3, alpha=0.05, steps=10)(x, y)
    torch.manual_seed(0)
    result = build_attack({"name": "torchattacks:PGD", "alpha": 0.05, "steps": 10})(
        lenet5_clean, x, y, ThreatModel("Linf", 0.3))
    clean = robust_accuracy(lenet5_clean, x, y)
    robust = 1 - float(result.success.float().mean())
    assert robust == robust_accuracy(lenet5_clean, x_direct, y)
    assert clean >= 0.95 and robust <= 0.2  # a standard-trained LeNet5 falls at eps 0.3


def test_per_sample_eps_is_grouped_by_value(model_and_data):
    model, x, y = model_and_data
    eps = torch.where(torch.arange(32) % 2 == 0, torch.tensor(0.03), torch.tensor(0.1))
    spec = {"name": "torchattacks:PGD", "alpha": 0.02, "steps": 3, "random_start": False}
    mixed = build_attack(spec)(model, x, y, ThreatModel("Linf", eps))
    for value in (0.03, 0.1):
        idx = (eps == value).nonzero().squeeze(1)
        alone = build_attack(spec)(model, x[idx], y[idx], ThreatModel("Linf", value))
        assert torch.equal(mixed.x_adv[idx], alone.x_adv)
    assert bool((mixed.norms <= eps.double() * (1 + 1e-6)).all())
    assert float(mixed.norms[eps == 0.1].max()) > 0.05  # the large-eps group really used its budget


def test_generator_makes_it_deterministic_and_leaves_global_rng_alone(model_and_data):
    model, x, y = model_and_data
    attack = build_attack({"name": "torchattacks:PGD", "steps": 2})  # random start from the global RNG
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        outs.append(attack(model, x, y, ThreatModel("Linf", 0.05),
                           generator=torch.Generator().manual_seed(7)).x_adv)
        assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------- configuration
def test_kwargs_pass_through_to_the_constructor(model_and_data):
    model, _, _ = model_and_data
    attack = build_attack({"name": "torchattacks:PGD", "steps": 7, "alpha": 0.004, "random_start": False})
    ta = attack.build_torchattacks(model, 0.02, "Linf")
    assert isinstance(ta, torchattacks.PGD)
    assert (ta.steps, ta.alpha, ta.random_start, ta.eps) == (7, 0.004, False, 0.02)
    apgd = build_attack({"name": "torchattacks:apgd", "loss": "dlr", "n_restarts": 2})  # case-insensitive name
    ta = apgd.build_torchattacks(model, 0.5, "L2", n_classes=4)
    assert (ta.norm, ta.eps, ta.loss, ta.n_restarts) == ("L2", 0.5, "dlr", 2)
    cw = build_attack({"name": "torchattacks:CW", "c": 0.5, "kappa": 1})  # real-valued despite int defaults
    assert (cw.build_torchattacks(model, 1.0, "L2").c, cw.params["kappa"]) == (0.5, 1.0)
    # AutoAttack's seed=None would be wall-clock time in torchattacks: the wrapper supplies one
    auto = build_attack({"name": "torchattacks:AutoAttack", "version": "standard"})
    assert auto._needs_seed() and auto.build_torchattacks(model, 0.1, "Linf", seed=5).seed == 5
    assert not apgd._needs_seed() and ta.seed == 0  # APGD keeps its own (deterministic) default


def test_unknown_kwarg_is_one_line_error_with_suggestion():
    with pytest.raises(ConfigError) as err:
        build_attack({"name": "torchattacks:PGD", "stepz": 3})
    msg = str(err.value)
    assert "unknown parameter 'stepz'" in msg and 'did you mean "steps"' in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="comes from the threat model"):
        build_attack({"name": "torchattacks:PGD", "eps": 0.1})
    with pytest.raises(ConfigError, match="comes from the threat model"):
        build_attack({"name": "torchattacks:APGD", "norm": "L2"})
    with pytest.raises(ConfigError, match='did you mean "PGD"'):
        get_attack_class("torchattacks:PDG")
    with pytest.raises(ConfigError, match="not available"):
        get_attack_class("torchattacks:LGV")
    with pytest.raises(ConfigError, match="torchattacks rejected"):
        build_attack({"name": "torchattacks:AutoAttack", "version": "fancy"})
    with pytest.raises(ConfigError, match="no targeted mode"):
        build_attack({"name": "torchattacks:DeepFool", "targeted": "random"})


def test_wrong_norm_and_channels_are_config_errors(model_and_data):
    model, x, y = model_and_data
    with pytest.raises(ConfigError, match="supports norms Linf, not L2"):
        build_attack("torchattacks:PGD")(model, x, y, ThreatModel("L2", 0.5))
    with pytest.raises(ConfigError, match="3-channel"):
        build_attack("torchattacks:TIFGSM")(model, x, y, ThreatModel("Linf", 0.1))


def test_table_covers_every_torchattacks_class():
    exported = {name for name, obj in vars(torchattacks).items()
                if inspect.isclass(obj) and issubclass(obj, torchattacks.attack.Attack)
                and obj is not torchattacks.attack.Attack}
    assert exported == set(TORCHATTACKS_TABLE) | set(NOT_WRAPPED)


@pytest.mark.parametrize("class_name", sorted(TORCHATTACKS_TABLE))
def test_every_class_in_the_table_builds(class_name):
    cls = get_attack_class(f"torchattacks:{class_name}")
    spec = TORCHATTACKS_TABLE[class_name]
    attack = cls()
    ta = attack.build_torchattacks(tiny_cnn(channels=3), 0.1, spec.norms[0], n_classes=4)
    assert type(ta) is getattr(torchattacks, class_name)
    assert cls.norms == spec.norms and cls.kind == spec.kind
    if spec.eps_arg:
        assert getattr(ta, "eps", getattr(ta, "max_epsilon", None)) == 0.1
    assert cls.supports_targeted == ("targeted" in ta.supported_mode)


# --------------------------------------------------------------------------------------------- running
@pytest.mark.parametrize("spec,norm,eps,n", [
    ({"name": "torchattacks:FGSM"}, "Linf", 0.3, 16),
    ({"name": "torchattacks:PGDL2", "steps": 5, "alpha": 0.3}, "L2", 1.5, 16),
    ({"name": "torchattacks:APGD", "steps": 3}, "L2", 1.5, 16),
    ({"name": "torchattacks:Square", "n_queries": 30}, "Linf", 0.3, 16),
    ({"name": "torchattacks:FAB", "steps": 5, "targeted": "random"}, "Linf", 0.5, 8),
    ({"name": "torchattacks:DeepFool", "steps": 5}, "L2", 3.0, 4),
    ({"name": "torchattacks:MIFGSM", "steps": 3, "alpha": 0.1}, "Linf", 0.3, 16),
])
def test_representative_attacks_run_and_break_a_tiny_cnn(model_and_data, spec, norm, eps, n):
    model, x, y = model_and_data
    result = build_attack(spec)(model, x[:n], y[:n], ThreatModel(norm, eps), generator=torch.Generator().manual_seed(0))
    assert bool((result.norms <= eps * (1 + 1e-6)).all())
    assert int(result.success.sum()) > 0
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    expected = pred == result.target if result.target is not None else pred != y[:n]
    assert torch.equal(result.success, expected)


def test_apgdt_reads_the_number_of_classes_from_the_model(model_and_data):
    model, x, y = model_and_data  # 4 classes; torchattacks' default n_classes=10 would index out of range
    result = build_attack({"name": "torchattacks:APGDT", "steps": 2})(model, x[:8], y[:8], ThreatModel("Linf", 0.3))
    assert result.x_adv.shape == x[:8].shape


def test_unbounded_cw_does_not_count_examples_over_eps(model_and_data):
    model, x, y = model_and_data
    x, y = x[:16], y[:16]
    torch.manual_seed(0)
    x_direct = torchattacks.CW(model, c=10, steps=20, lr=0.1)(x, y)
    norms_direct = perturbation_norm(x, x_direct, "L2")
    with torch.no_grad():
        fooled_direct = model(x_direct).argmax(1) != y
    eps = float(norms_direct[fooled_direct].median())  # half of CW's successes lie beyond eps
    result = build_attack({"name": "torchattacks:CW", "c": 10, "steps": 20, "lr": 0.1})(
        model, x, y, ThreatModel("L2", eps))
    over = fooled_direct & (norms_direct > eps)
    assert int(over.sum()) > 0 and result.info["discarded_over_eps"] >= int(over.sum())
    assert not bool(result.success[over].any())
    assert torch.equal(result.x_adv[over], x[over])  # returned unchanged, not rescaled into the ball
    within = fooled_direct & (norms_direct <= eps)
    assert bool(result.success[within].all())
    assert bool((result.norms <= eps * (1 + 1e-6)).all())


# --------------------------------------------------------------------------------------- model handling
class _ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5),
                                 nn.Linear(16, 5))
        self.seen_training: set[bool] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training.update(m.training for m in self.modules())
        return self.net(x)


def test_train_state_is_restored_and_attack_runs_in_eval_mode(model_and_data):
    _, x, _ = model_and_data
    model = _ModeRecorder()
    model.train()
    model.net[2].eval()  # mixed states must come back exactly
    y = torch.zeros(x.shape[0], dtype=torch.long)
    build_attack({"name": "torchattacks:PGD", "steps": 2})(model, x, y, ThreatModel("Linf", 0.1))
    assert model.seen_training == {False}
    assert model.training and model.net[1].training and not model.net[2].training and model.net[3].training


def test_targets_reach_torchattacks_as_resolved(model_and_data, monkeypatch):
    """Function mode (true labels in ``labels``) for PGD; target in ``labels`` for SPSA."""
    model, x, y = model_and_data
    seen = {}

    def spy(name):
        def forward(self, images, labels=None):
            seen[name] = (labels.clone(), self.get_target_label(images, labels).clone() if self.targeted else None)
            return images.clone()
        return forward

    monkeypatch.setattr(torchattacks.PGD, "forward", spy("PGD"))
    monkeypatch.setattr(torchattacks.SPSA, "forward", spy("SPSA"))
    for name in ("PGD", "SPSA"):
        result = build_attack({"name": f"torchattacks:{name}", "targeted": "random"})(
            model, x, y, ThreatModel("Linf", 0.1), generator=torch.Generator().manual_seed(3))
        labels, target = seen[name]
        assert torch.equal(target, result.target) and not bool((result.target == y).any())
        assert torch.equal(labels, y if name == "PGD" else result.target)


def test_randomized_model_gets_eot(model_and_data):
    model, x, y = model_and_data

    class Noisy(nn.Module):
        randomized = True

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x + 0.01 * torch.randn_like(x))

    noisy = Noisy().eval()
    pgd = build_attack({"name": "torchattacks:PGD", "steps": 2, "eot_iter": 3})
    attacked, native = pgd._eot_setting(noisy)
    assert isinstance(attacked, _MeanLogits) and attacked.n == 3 and native is None
    apgd = build_attack({"name": "torchattacks:APGD", "steps": 2})
    assert apgd._eot_setting(noisy) == (noisy, 20)  # native eot_iter, robustkit's default for random models
    result = pgd(noisy, x[:8], y[:8], ThreatModel("Linf", 0.1), generator=torch.Generator().manual_seed(0))
    assert result.x_adv.shape == x[:8].shape


# ------------------------------------------------------------------------------------------ attacks list
def test_attacks_list_csv_and_table(capsys):
    assert cli_main(["attacks", "list", "--format", "csv"]) == 0
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    version = torchattacks.__version__
    assert rows["torchattacks:PGD"] == {"name": "torchattacks:PGD", "kind": "white-box", "norms": "Linf",
                                        "targeted": "yes", "implementation": f"torchattacks-{version}", "notes": ""}
    assert rows["torchattacks:CW"]["kind"] == "minimum-norm" and "unbounded" in rows["torchattacks:CW"]["notes"]
    assert rows["torchattacks:Square"]["kind"] == "score-based"
    assert rows["torchattacks:DeepFool"]["targeted"] == "no"
    assert rows["transfer"]["kind"] == "transfer" and rows["transfer"]["implementation"] == "robustkit"
    for name in ("fgsm", "pgd"):
        assert rows[name]["implementation"] == "robustkit" and rows[name]["kind"] == "white-box"
    assert {f"torchattacks:{c}" for c in TORCHATTACKS_TABLE} <= set(rows)

    assert cli_main(["attacks", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == ["name", "kind", "norms", "targeted", "implementation", "notes"]
    col = header.index("kind")
    pgd_line = next(line for line in lines if line.startswith("torchattacks:PGD "))
    assert pgd_line[col:].startswith("white-box")
