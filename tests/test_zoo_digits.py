"""The digits quickstart zoo trains once, deterministically, into sensible and loadable models."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchattacks

from robustkit.data import load_dataset
from robustkit.errors import RobustkitError
from robustkit.zoo import ensure_digits_zoo, load_model, read_card_file
from robustkit.zoo.digits_zoo import DIGITS_MODEL_NAMES, RECIPES, digits_zoo_dir, train_recipe


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="session")
def digits_zoo(digits_cache) -> Path:
    return ensure_digits_zoo(digits_cache)


@pytest.fixture(scope="session")
def digits_test():
    return load_dataset("digits", split="test")


def test_zoo_folder_holds_valid_cards_and_weights(digits_zoo, digits_cache):
    assert digits_zoo == digits_zoo_dir(digits_cache)
    assert digits_zoo.name.startswith("v") and digits_cache in digits_zoo.parents
    names = set()
    for path in sorted(digits_zoo.glob("*.yaml")):
        card = read_card_file(path)
        names.add(card.name)
        assert card.checkpoint.path.suffix == ".safetensors" and card.checkpoint.sha256
        assert card.dataset == "digits" and card.reported_clean_acc is not None
    assert names == set(DIGITS_MODEL_NAMES)
    assert not [p for p in digits_zoo.parent.iterdir() if p.name.startswith(".")]  # no leftover temp folders


def test_models_are_accurate_and_match_their_cards(digits_zoo, digits_test):
    for name in DIGITS_MODEL_NAMES:
        model = load_model(name, zoo_dirs=[digits_zoo])
        with torch.no_grad():
            acc = float((model(digits_test.x).argmax(1) == digits_test.y).float().mean()) * 100
        assert acc > 90, (name, acc)
        assert acc == pytest.approx(model.robustkit_card["reported_clean_acc"], abs=0.01)


def test_adversarially_trained_model_is_more_robust(digits_zoo, digits_test):
    """Checked with torchattacks' PGD (independent of robustkit's own attacks)."""
    x, y = digits_test.x[:100], digits_test.y[:100]
    robust = {}
    for name in ("digits-cnn", "digits-cnn-pgd"):
        model = load_model(name, zoo_dirs=[digits_zoo])
        attack = torchattacks.PGD(model, eps=0.15, alpha=0.03, steps=10, random_start=True)
        torch.manual_seed(0)
        x_adv = attack(x, y)
        with torch.no_grad():
            robust[name] = float((model(x_adv).argmax(1) == y).float().mean())
    assert robust["digits-cnn-pgd"] > robust["digits-cnn"] + 0.2, robust
    assert robust["digits-cnn-pgd"] > 0.4, robust


def test_second_call_reuses_the_cache(digits_zoo, digits_cache):
    stamps = {p.name: p.stat().st_mtime_ns for p in digits_zoo.iterdir()}
    assert ensure_digits_zoo(digits_cache) == digits_zoo
    assert {p.name: p.stat().st_mtime_ns for p in digits_zoo.iterdir()} == stamps


def test_names_resolve_through_the_default_cache(digits_zoo, digits_cache, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(digits_cache))
    model = load_model("digits-mlp")
    assert model.robustkit_card["checkpoint_path"] == str((digits_zoo / "digits-mlp.safetensors").resolve())


def test_training_is_deterministic():
    """Every random choice (init, shuffling, shifts, PGD starts) is seeded; one epoch exercises them all."""
    train = load_dataset("digits", split="train")
    recipe = dataclasses.replace(next(r for r in RECIPES if r.name == "digits-cnn-pgd"), epochs=1, shift_aug=True)
    before = torch.random.get_rng_state()
    a = train_recipe(recipe, train.x, train.y).state_dict()
    b = train_recipe(recipe, train.x, train.y).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")  # a file where a folder should be: mkdir fails, even for root
    with pytest.raises(RobustkitError, match="cannot create the digits zoo folder"):
        ensure_digits_zoo(blocker / "cache")
