"""The digits quickstart zoo: small models trained locally on first use, so ``robustkit eval`` works offline.

scikit-learn ships the 8x8 digits data, so this zoo needs no download at all: the first call trains three
small models on the digits *train* split (seeded, a few seconds each on a laptop CPU), saves them as
safetensors with YAML cards, and later calls reuse them. The cache folder name carries a recipe version and
the content hash of the training data, so a change to either retrains instead of reusing stale weights.

Models: ``digits-cnn`` (standard training), ``digits-cnn-pgd`` (PGD adversarial training, Linf eps 0.15,
Madry et al.) and ``digits-mlp`` (a fully connected baseline). They are trained by the one trainer,
:func:`robustkit.training.train` (whose PGD is the one loop of :mod:`robustkit.pgd_loop`, as the ``pgd``
attack's), and written by the one card writer, :func:`robustkit.zoo.cards.write_card`. Neither depends on
``robustkit.attacks``, whose job is to *evaluate* these models.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from robustkit.data import LoadedData, load_dataset
from robustkit.errors import RobustkitError
from robustkit.training import TrainConfig, accuracy, train

from .arch_registry import build_arch
from .cards import write_card
from .download import CACHE_ENV, cache_root

# 2: trained through robustkit.training (PGD examples made in eval mode on the summed cross-entropy)
DIGITS_ZOO_VERSION = "2"
SEED = 0
DIGITS_LICENCE = "weights: MIT (robustkit); data: UCI optdigits via scikit-learn, CC BY 4.0"


@dataclass(frozen=True)
class DigitsRecipe:
    """How one digits-zoo model is built and trained."""

    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    epochs: int
    lr: float
    batch_size: int
    pgd_eps: float | None = None
    pgd_steps: int = 5
    shift_aug: bool = False
    summary: str = field(default="")

    def train_config(self) -> TrainConfig:
        """The recipe as :mod:`robustkit.training` settings: Adam with a one-cycle schedule, seed 0."""
        adversarial = {"method": "pgd", "norm": "Linf", "eps": self.pgd_eps, "steps": self.pgd_steps} \
            if self.pgd_eps else {}
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam", lr=self.lr,
                           lr_schedule="onecycle", augment="shift" if self.shift_aug else "none", seed=SEED,
                           **adversarial)

    def training_text(self, n_train: int, data_hash: str) -> str:
        return (f"{self.summary} ({self.train_config().describe()}; digits train split: {n_train} images, "
                f"content hash {data_hash[:12]})")


_CNN = {"in_channels": 1, "input_size": 8, "width": 32, "hidden": 128}
RECIPES: tuple[DigitsRecipe, ...] = (
    DigitsRecipe("digits-cnn", "small-cnn", _CNN, epochs=20, lr=3e-3, batch_size=32, shift_aug=True,
                 summary="standard training"),
    DigitsRecipe("digits-cnn-pgd", "small-cnn", _CNN, epochs=20, lr=3e-3, batch_size=64, pgd_eps=0.15,
                 pgd_steps=5, summary="PGD adversarial training, Linf 0.15"),
    DigitsRecipe("digits-mlp", "mlp", {"in_features": 64, "hidden": 256, "depth": 2}, epochs=30, lr=3e-3,
                 batch_size=32, summary="standard training"),
)
DIGITS_MODEL_NAMES: tuple[str, ...] = tuple(r.name for r in RECIPES)


def _load_split(split: str) -> LoadedData:
    return load_dataset("digits", split=split)


def digits_zoo_dir(cache_dir: str | os.PathLike | None = None, *, train_hash: str | None = None) -> Path:
    """The card folder for the current recipe version and training data (it may not exist yet)."""
    if train_hash is None:
        train_hash = _load_split("train").content_hash
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "digits_zoo" / f"v{DIGITS_ZOO_VERSION}-{train_hash[:12]}"


def is_complete(folder: Path) -> bool:
    """True when every card and weights file of the zoo is present."""
    return all((folder / f"{r.name}.yaml").is_file() and (folder / f"{r.name}.safetensors").is_file()
               for r in RECIPES)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run on one intra-op thread: these batches are far too small to gain from more, and on a busy machine
    extra OpenMP threads spin-wait and slow training down by an order of magnitude. One thread also makes
    the result independent of the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_recipe(recipe: DigitsRecipe, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Train one model deterministically (fixed seed; the caller's global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]), _single_thread():
        torch.manual_seed(SEED)
        model = build_arch(recipe.arch, num_classes=10, **recipe.arch_kwargs)
        train(model, x, y, recipe.train_config())
    return model.eval()


def _card(recipe: DigitsRecipe, clean_acc: float, n_train: int, train_hash: str) -> dict[str, Any]:
    return {
        "name": recipe.name,
        "arch": recipe.arch,
        "arch_kwargs": dict(recipe.arch_kwargs),
        "num_classes": 10,
        "dataset": "digits",
        "normalization": None,
        "training": recipe.training_text(n_train, train_hash),
        "threat_model": recipe.train_config().threat_model,
        "source": f"robustkit digits quickstart zoo v{DIGITS_ZOO_VERSION} (trained locally; clean accuracy "
                  f"measured on the 500-image digits test split)",
        "reported_clean_acc": round(clean_acc, 2),
        "licence": DIGITS_LICENCE,
    }


def placeholder_cards() -> list[dict[str, Any]]:
    """Cards (without checkpoints or accuracies) describing the zoo before it has been trained, for listings."""
    return [{"name": r.name, "arch": r.arch, "arch_kwargs": dict(r.arch_kwargs), "num_classes": 10,
             "dataset": "digits", "normalization": None, "checkpoint": None, "training": r.summary,
             "threat_model": r.train_config().threat_model,
             "source": f"robustkit digits quickstart zoo v{DIGITS_ZOO_VERSION}", "licence": DIGITS_LICENCE}
            for r in RECIPES]


def ensure_digits_zoo(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the digits zoo card folder, training the models first if this version is not cached yet.

    Safe against concurrent first use: each process trains into its own temporary folder and the first
    to finish renames it into place; the others discard theirs.
    """
    train = _load_split("train")
    final = digits_zoo_dir(cache_dir, train_hash=train.content_hash)
    if is_complete(final):
        return final
    test = _load_split("test")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustkitError(f"cannot create the digits zoo folder {final.parent} ({exc.strerror or exc}); "
                             f"set ${CACHE_ENV} to a writable folder") from exc
    print(f"robustkit: training the digits quickstart zoo once ({', '.join(DIGITS_MODEL_NAMES)}); "
          f"cached in {final}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for recipe in RECIPES:
            start = time.perf_counter()
            model = train_recipe(recipe, train.x, train.y)
            card = _card(recipe, 100.0 * accuracy(model, test.x, test.y), len(train), train.content_hash)
            _, _, card = write_card(tmp, card, model.state_dict(),
                                    metadata={"robustkit_digits_zoo": DIGITS_ZOO_VERSION})
            print(f"robustkit:   {recipe.name}: {card['reported_clean_acc']:.2f}% clean on digits test "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        if final.exists() and not is_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # a partial folder left by an interrupted old version
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # not "another process finished first": a real problem
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
