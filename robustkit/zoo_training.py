"""Train a zoo architecture on a dataset and write it as a zoo entry (the engine of ``robustkit train``).

It sits above training, the zoo, the datasets and the defenses (distillation), which it combines: the
trainer itself (:mod:`robustkit.training`) stays below all of them, so that the zoo and the defenses can
train through it. The card and weights are written by the zoo's one writer, :func:`robustkit.zoo.write_card`.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from robustkit import __version__
from robustkit.data import content_hash, load_dataset
from robustkit.defenses.distillation import DefensiveDistillation
from robustkit.engine.devices import resolve_device
from robustkit.errors import ConfigError
from robustkit.outputs import output_dir, write_text
from robustkit.training import TrainConfig, accuracy, train
from robustkit.zoo import ARCHS, build_arch, with_normalization, write_card
from robustkit.zoo.normalize import parse_normalization


@dataclass
class ZooEntryResult:
    """What :func:`train_zoo_entry` wrote: the card and checkpoint paths, the card itself and the history."""

    card_path: Any
    checkpoint_path: Any
    card: dict[str, Any]
    history: Any  # list of per-epoch entries; {"teacher": [...], "student": [...]} for distillation


def _fill_shape_kwargs(arch: str, arch_kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
    """Add ``in_channels`` / ``input_size`` from the data when the architecture takes them and none were given."""
    try:
        params = inspect.signature(ARCHS.get(arch)).parameters
    except (TypeError, ValueError):
        return dict(arch_kwargs)
    out = dict(arch_kwargs)
    if "in_channels" in params and "in_channels" not in out:
        out["in_channels"] = int(x.shape[1])
    if "input_size" in params and "input_size" not in out and x.shape[2] == x.shape[3]:
        out["input_size"] = int(x.shape[2])
    return out


def train_zoo_entry(*, arch: str, dataset: Any, out: Any, config: TrainConfig, name: str | None = None,
                    arch_kwargs: dict[str, Any] | None = None, normalization: Any = None,
                    n_examples: int | None = None, eval_examples: int = 0, distillation_temperature: float | None = None,
                    device: str = "auto", on_epoch: Callable[[dict[str, float]], None] | None = None,
                    surrogates: dict[str, nn.Module] | None = None) -> ZooEntryResult:
    """Train a zoo architecture on a dataset and write ``<name>.safetensors`` + the model card ``<name>.yaml``
    (+ ``<name>.train.json`` with the full config and per-epoch history) into ``out``.

    Training uses the first ``n_examples`` examples (all when None); the card's ``reported_clean_acc`` is
    measured on the *last* ``eval_examples`` examples, which must not overlap them. With
    ``distillation_temperature`` the model is trained by defensive distillation (teacher and student at that
    temperature, ``config`` used for both) and the card describes the deployed student. ``surrogates`` (name ->
    model) are method pubdef's public models; the card's training line names them. The checkpoint holds
    the bare network's weights; the normalization is recorded in the card (the zoo re-attaches it).
    """
    data = load_dataset(dataset) if not hasattr(dataset, "x") else dataset
    total = len(data)
    n_train = total - eval_examples if n_examples is None else n_examples
    if isinstance(eval_examples, bool) or not isinstance(eval_examples, int) or eval_examples < 0:
        raise ConfigError(f"eval_examples: expected an integer >= 0, got {eval_examples!r}")
    if n_train < 1 or n_train + eval_examples > total:
        raise ConfigError(f"n_examples ({n_train}) + eval_examples ({eval_examples}) must fit in the {total} examples "
                          f"of dataset {data.name!r} without overlapping")
    x, y = data.x[:n_train], data.y[:n_train]
    norm = parse_normalization(normalization, field="normalization")
    kwargs = _fill_shape_kwargs(arch, arch_kwargs or {}, x)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build_arch(arch, num_classes=data.num_classes, **kwargs)
    model = with_normalization(net, norm).to(dev)
    if distillation_temperature is not None:
        if config.method != "standard":
            raise ConfigError(f"distillation trains teacher and student with standard training, not {config.method}")
        options = {k: v for k, v in asdict(config).items() if k not in ("method", "temperature", "seed")}
        distilled = DefensiveDistillation(model, temperature=distillation_temperature)
        distilled.fit(x, y, on_epoch=on_epoch, seed=config.seed, **options)
        how = (f"defensive distillation (Papernot et al. 2016), temperature {distillation_temperature:g}, student "
               f"deployed at T=1; teacher and student each: {config.describe()}")
        history: Any = distilled.training_history
    else:
        models = None if surrogates is None else [m.to(dev).eval() for m in surrogates.values()]
        history = train(model, x, y, config, on_epoch=on_epoch, surrogates=models).history
        how = config.describe()
        if surrogates:
            how += f" surrogates={','.join(surrogates)}"
    model.eval()
    clean = round(100.0 * accuracy(model, data.x[total - eval_examples:], data.y[total - eval_examples:]), 2) \
        if eval_examples else None
    name = name or f"{data.name}-{arch}-{'distillation' if distillation_temperature else config.method}"
    split = data.spec.get("split") if isinstance(data.spec, dict) else None
    where = f"{data.name}{f' {split} split' if split else ''} examples 0..{n_train - 1} (content hash " \
            f"{_hash_prefix(x, y)})"
    evaluated = f"; clean accuracy on examples {total - eval_examples}..{total - 1}" if eval_examples else ""
    threat = config.threat_model
    if config.method == "pubdef":  # PubDef defends against transfer attacks from these public models only
        threat = f"transfer from public models ({', '.join(surrogates or {})}), {threat}"
    card = {
        "name": name, "arch": arch, "arch_kwargs": kwargs, "num_classes": int(data.num_classes),
        "dataset": data.name,
        "normalization": None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])},
        "training": f"robustkit train: {how}; data: {where}{evaluated}",
        "threat_model": threat,
        "source": f"trained with robustkit {__version__} (robustkit train)",
        "reported_clean_acc": clean,
        "licence": None,
    }
    folder = output_dir(out)
    # one metadata key: safetensors writes a multi-key map in a random order, and the same seed must give
    # the same file bytes (and sha256)
    card_path, ckpt, card = write_card(folder, card, net.state_dict(), metadata={
        "robustkit": json.dumps({"version": __version__, "training": how}, sort_keys=True)})
    write_text(folder / f"{name}.train.json",
               json.dumps({"config": asdict(config), "distillation_temperature": distillation_temperature,
                           "n_train": n_train, "eval_examples": eval_examples, "history": history}, indent=2))
    return ZooEntryResult(card_path=card_path, checkpoint_path=ckpt, card=card, history=history)


def _hash_prefix(x: torch.Tensor, y: torch.Tensor) -> str:
    return content_hash(x.contiguous(), y.contiguous())[:12]
