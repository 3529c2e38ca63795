"""Training loops and ``robustkit train``: the methods do what their papers say, runs are reproducible under a
seed, adversarial training buys robustness, and the CLI writes a checkpoint + card that the zoo loads."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from robustkit.attacks import build_attack
from robustkit.cli import main as cli_main
from robustkit.data import load_dataset
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel, perturbation_norm
from robustkit.training import TrainConfig, accuracy, make_config, pgd_examples, trades_examples, train
from robustkit.zoo import build_arch, load_model, read_card_file

SMALL = {"in_channels": 1, "input_size": 8, "width": 16, "hidden": 64}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_arch("small-cnn", **SMALL)


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("options,message", [
    ({"method": "pgdd"}, "training method: expected one of standard, noise, pgd, fgsm, trades.*did you mean \"pgd\""),
    ({"method": "pgd"}, "training eps: expected a number > 0"),
    ({"method": "pgd", "eps": 8}, "eps: expected a number <= 1 for Linf"),
    ({"method": "noise"}, "training sigma: expected a number > 0"),
    ({"method": "standard", "eps": 0.1}, "eps: only used by methods pgd, fgsm, trades, pubdef"),
    ({"method": "fgsm", "eps": 0.1, "steps": 3}, "steps: only used by methods pgd, trades and pubdef"),
    ({"epochs": 0}, "training epochs: expected an integer >= 1"),
    ({"lr_schedule": "step"}, "lr_schedule: expected constant, cosine, cyclic"),
    ({"epoch": 3}, "unknown option 'epoch'.*did you mean \"epochs\""),
])
def test_bad_training_options_are_one_line_errors(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(**options)


def test_step_size_defaults_follow_the_papers() -> None:
    assert make_config(method="pgd", eps=0.3, steps=40).resolved_step_size == pytest.approx(2.5 * 0.3 / 40)
    assert make_config(method="fgsm", eps=8 / 255).resolved_step_size == pytest.approx(1.25 * 8 / 255)  # Wong et al.
    assert make_config(method="trades", eps=0.3).beta == 6.0
    assert TrainConfig().resolved_lr == 1e-3 and make_config(optimizer="sgd").resolved_lr == 0.1


# ------------------------------------------------------------------------------------- inner attacks
def test_training_attacks_stay_in_the_ball_and_raise_the_loss(digits) -> None:
    train_set, _ = digits
    net = _net()
    train(net, train_set.x[:400], train_set.y[:400], epochs=2, batch_size=64, lr=3e-3)
    x, y = train_set.x[:64], train_set.y[:64]
    gen = torch.Generator().manual_seed(0)
    for norm, eps in (("Linf", 0.1), ("L2", 0.5)):
        x_adv = pgd_examples(net, x, y, eps=eps, norm=norm, steps=5, step_size=2.5 * eps / 5, generator=gen)
        assert float(perturbation_norm(x, x_adv, norm).max()) <= eps * (1 + 1e-6)
        assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
        with torch.no_grad():
            assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)
    x_tr = trades_examples(net, x, eps=0.1, norm="Linf", steps=5, step_size=0.05, generator=gen)
    assert float(perturbation_norm(x, x_tr, "Linf").max()) <= 0.1 * (1 + 1e-6)
    with torch.no_grad():
        p = F.softmax(net(x), dim=1)
        kl = F.kl_div(F.log_softmax(net(x_tr), dim=1), p, reduction="batchmean")
    assert float(kl) > 1e-3


# -------------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("method,extra", [("standard", {}), ("noise", {"sigma": 0.2}), ("pgd", {"eps": 0.1, "steps": 2}),
                                          ("fgsm", {"eps": 0.1}), ("trades", {"eps": 0.1, "steps": 2})])
def test_same_seed_same_weights(digits, method, extra) -> None:
    train_set, _ = digits
    x, y = train_set.x[:128], train_set.y[:128]
    states = []
    for seed in (3, 3, 4):
        net = _net(0)
        before = torch.random.get_rng_state()
        train(net, x, y, method=method, epochs=1, batch_size=32, seed=seed, **extra)
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_adversarial_training_buys_robustness(digits) -> None:
    """Same network, data and budget: PGD (Madry) and TRADES training resist PGD far better than standard."""
    train_set, test_set = digits
    x_test, y_test = test_set.x[:200], test_set.y[:200]
    results = {}
    for method, extra in (("standard", {}), ("pgd", {"eps": 0.1, "steps": 3}), ("trades", {"eps": 0.1, "steps": 3})):
        net = _net(0)
        train(net, train_set.x, train_set.y, method=method, epochs=10, batch_size=64, lr=3e-3, seed=0, **extra)
        torch.manual_seed(0)
        attack = build_attack({"name": "pgd", "steps": 10})(net, x_test, y_test, ThreatModel("Linf", 0.1))
        results[method] = (accuracy(net, x_test, y_test), 1 - float(attack.success.float().mean()))
    print("\ndigits small-cnn, 10 epochs, (clean, PGD-10 Linf 0.1 robust):", results)
    assert all(clean >= 0.9 for clean, _ in results.values())
    assert results["pgd"][1] >= results["standard"][1] + 0.1
    assert results["trades"][1] >= results["standard"][1] + 0.1


# ---------------------------------------------------------------------------------------------- CLI
def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_writes_a_loadable_card_reproducibly(tmp_path: Path, capsys) -> None:
    args = ["train", "--arch", "small-cnn", "--arch-kwargs", "{width: 8, hidden: 32}", "--dataset", "digits",
            "--split", "train", "--n-examples", "600", "--eval-examples", "297", "--method", "fgsm", "--eps", "0.1",
            "--epochs", "2", "--batch-size", "64", "--lr", "3e-3", "--seed", "7", "--quiet"]
    digests = []
    for run in ("a", "b"):
        code, out, err = _run_cli(args + ["--out", str(tmp_path / run)], capsys)
        assert code == 0, err
        card_path = Path(out.strip())
        assert card_path == tmp_path / run / "digits-small-cnn-fgsm.yaml"
        digests.append(hashlib.sha256((tmp_path / run / "digits-small-cnn-fgsm.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]  # deterministic under --seed
    card = read_card_file(card_path)
    assert card.threat_model == "Linf 0.1" and card.arch_kwargs == {"width": 8, "hidden": 32, "in_channels": 1,
                                                                     "input_size": 8}
    assert "method=fgsm" in card.training and "examples 0..599" in card.training and "1000..1296" in card.training
    raw = yaml.safe_load(card_path.read_text())
    assert raw["checkpoint"]["sha256"] == digests[1]
    history = json.loads((tmp_path / "b" / "digits-small-cnn-fgsm.train.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    # the zoo loads it and it predicts what the card says it does
    model = load_model(str(card_path))
    full = load_dataset("digits", split="train")
    assert accuracy(model, full.x[1000:], full.y[1000:]) * 100 == pytest.approx(card.reported_clean_acc, abs=0.005)


def test_cli_train_distillation_and_noise(tmp_path: Path, capsys) -> None:
    base = ["train", "--arch", "small-cnn", "--arch-kwargs", "{width: 8, hidden: 32}", "--dataset", "digits",
            "--n-examples", "200", "--epochs", "1", "--quiet", "--out", str(tmp_path)]
    code, out, err = _run_cli(base + ["--method", "distillation", "--temperature", "20"], capsys)
    assert code == 0, err
    card = read_card_file(out.strip())
    assert "defensive distillation" in card.training and "temperature 20" in card.training
    code, out, err = _run_cli(base + ["--method", "noise", "--sigma", "0.25", "--name", "digits-noise"], capsys)
    assert code == 0, err
    assert "sigma=0.25" in read_card_file(out.strip()).training


@pytest.mark.parametrize("extra,message", [
    (["--method", "pgd"], "error: --eps: required for --method pgd"),
    (["--method", "noise"], "error: --sigma: required for --method noise"),
    (["--method", "standard", "--eps", "0.1"], "error: --eps/--steps/--step-size: only for --method pgd"),
    (["--arch", "smal-cnn"], "did you mean \"small-cnn\""),
    (["--n-examples", "2000", "--eval-examples", "10"], "must fit in the 500 examples"),
    (["--arch-kwargs", "[1, 2]"], "--arch-kwargs: expected a YAML mapping"),
    (["--arch-kwargs", "{widht: 8}"], "unknown argument 'widht'"),
])
def test_cli_train_errors_are_one_line(tmp_path: Path, capsys, extra, message) -> None:
    args = ["train", "--arch", "small-cnn", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path)]
    if "--arch" in extra:
        args = ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path)]
    code, _, err = _run_cli(args + extra, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_cli_pgd_training_on_mnist_as_documented(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """The documented command: PGD adversarial training of small-cnn on the first 5000 MNIST test images."""
    code, out, err = _run_cli(["train", "--arch", "small-cnn", "--dataset", "mnist", "--root",
                               str(shared_dir / "data" / "mnist"), "--n-examples", "5000", "--eval-examples", "1000",
                               "--method", "pgd", "--eps", "0.3", "--epochs", "5", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    model = load_model(out.strip())
    data = load_dataset("mnist", root=shared_dir / "data" / "mnist")
    x, y = data.x[-200:], data.y[-200:]
    robust = 1 - float(build_attack({"name": "pgd", "steps": 20})(model, x, y, ThreatModel("Linf", 0.3))
                       .success.float().mean())
    print(f"\nrobustkit train pgd small-cnn on MNIST 0..4999: {read_card_file(out.strip()).reported_clean_acc}% "
          f"clean (9000..9999), PGD-20 Linf 0.3 on the last 200: {robust:.1%}")
    assert robust >= 0.3


def test_cli_rejects_options_of_other_methods(tmp_path: Path, capsys) -> None:
    args = ["train", "--arch", "small-cnn", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path)]
    code, _, err = _run_cli(args + ["--method", "pgd", "--eps", "0.1", "--temperature", "50"], capsys)
    assert code == 2 and "--temperature: only for --method distillation" in err
    code, _, err = _run_cli(args + ["--beta", "3"], capsys)
    assert code == 2 and "--beta: only for --method trades" in err


def test_training_a_model_without_a_gradient_path_is_a_clear_error() -> None:
    from robustkit.attacks.bpda import BPDA

    class Frozen(torch.nn.Module):
        """A parameter behind a BPDA step: forward uses it, but no gradient reaches it."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))
            self.step = BPDA(lambda t: t * self.scale)

        def forward(self, x):
            return self.step(x).flatten(1)

    model = Frozen()
    with pytest.raises(ConfigError, match="loss does not depend on the model's parameters"):
        train(model, torch.rand(8, 1, 2, 2), torch.randint(0, 4, (8,)), epochs=1)


def test_eps_warmup_ramps_linearly_per_batch_then_holds() -> None:
    from robustkit.training import _eps_scale

    cfg = make_config(method="pgd", eps=0.3, epochs=4, eps_warmup=2)
    scales = [_eps_scale(cfg, e, b, 5) for e in range(4) for b in range(5)]
    assert scales[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert scales[10:] == [1.0] * 10
    assert _eps_scale(make_config(method="pgd", eps=0.3), 0, 0, 5) == 1.0
    assert "eps_warmup=2" in cfg.describe()
    with pytest.raises(ConfigError, match="eps_warmup"):
        make_config(method="pgd", eps=0.3, epochs=2, eps_warmup=3)
    with pytest.raises(ConfigError, match="eps_warmup"):
        make_config(method="standard", epochs=2, eps_warmup=1)


def test_eps_warmup_changes_the_training_examples(digits) -> None:
    """With warm-up, the first epoch trains on smaller perturbations: different weights from the same seed."""
    train_set = digits[0]
    x, y = train_set.x[:256], train_set.y[:256]
    weights = []
    for warmup in (0, 1):
        model = _net()
        train(model, x, y, method="pgd", eps=0.3, steps=3, epochs=1, batch_size=64, eps_warmup=warmup)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(weights[0], weights[1])
