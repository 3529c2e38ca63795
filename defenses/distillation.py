"""Defensive distillation (Papernot, McDaniel, Wu, Jha & Swami, IEEE S&P 2016).

Procedure (:meth:`DefensiveDistillation.fit`): train a teacher with the softmax at temperature T
(``CE(logits / T, y)``); label the training set with the teacher's soft labels ``softmax(teacher / T)``;
train the student, same architecture, at the same T on those soft labels; deploy the student at T = 1,
i.e. its raw logits (``forward``). The paper uses T = 100 (``temperature``).

Why it is in a robustness toolkit: it is the textbook case of *gradient masking*. Deployed at T = 1, the
student's logits are ~T times larger than they were during training, its softmax saturates, and the
cross-entropy gradient underflows to exactly zero in float32 -- FGSM and PGD on the cross-entropy "fail".
Carlini & Wagner (2017) showed that an attack on the logits (their margin loss) breaks it completely.
robustkit's evaluation shows both (tests/test_defenses_distillation.py); report the margin-loss / CW
numbers, never the cross-entropy ones alone.
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import ConfigError
from robustkit.training import train

from .base import Defense, register_defense


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights (drawn from ``seed``, leaving the global RNG as it was) for every submodule that can
    reset itself: Papernot et al. train teacher and student from scratch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


@register_defense("distillation", aliases=("defensive-distillation",))
class DefensiveDistillation(Defense):
    """Student deployed at T = 1; ``fit`` runs teacher and student training at ``temperature`` (default 100).

    The model given is the student (its architecture is also the teacher's). Built from a checkpoint of an
    already distilled student (e.g. in a sweep config), the defense is just that student: ``forward`` is its
    logits at T = 1, and the parameters are recorded so the leaderboard names the defense.
    """

    name: ClassVar[str] = "distillation"
    defaults: ClassVar[dict[str, Any]] = {"temperature": 100.0}

    def validate(self) -> None:
        if not self.params["temperature"] > 0:
            raise ConfigError(f"{self.who}: temperature: expected a number > 0, got {self.params['temperature']}")

    @property
    def temperature(self) -> float:
        return float(self.params["temperature"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.no_grad()
    def soft_labels(self, teacher: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """``softmax(teacher(x) / T)`` for the whole training set, in eval mode."""
        was_training = teacher.training
        teacher.eval()
        device = next(iter(teacher.parameters())).device
        out = [F.softmax(teacher(x[i:i + batch_size].to(device)).float() / self.temperature, dim=1).cpu()
               for i in range(0, x.shape[0], batch_size)]
        teacher.train(was_training)
        return torch.cat(out)

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, teacher: nn.Module | None = None,
            **options: Any) -> "DefensiveDistillation":
        """Train a teacher at T (unless ``teacher`` is given, already trained at T), then the student at T on
        its soft labels. ``options`` go to :func:`robustkit.training.train` for both (epochs, lr, seed, ...);
        the teacher and the student both start from fresh random weights of the student's architecture."""
        for key in ("method", "temperature"):
            if key in options:
                raise ConfigError(f"{self.who}: fit sets {key} itself (standard training at the defense's temperature)")
        seed = options.pop("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{self.who}: seed: expected an integer, got {seed!r}")
        history: dict[str, list[dict[str, float]]] = {"teacher": []}
        if teacher is None:
            teacher = reinitialize(copy.deepcopy(self.model), seed)
            history["teacher"] = train(teacher, x, y, method="standard", temperature=self.temperature, seed=seed,
                                       **options).history
        soft = self.soft_labels(teacher, x)
        # the student's own draws (init, data order) differ from the teacher's, still fixed by the seed
        reinitialize(self.model, seed + 1)
        history["student"] = train(self.model, x, soft, method="standard", temperature=self.temperature,
                                   seed=seed + 1, **options).history
        self.training_history = history  # a plain attribute: per-epoch loss/accuracy of both networks
        return self
