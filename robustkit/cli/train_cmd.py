"""``robustkit train``: train a zoo architecture (standard, noise, PGD, FGSM-RS, TRADES or distillation) and
write a safetensors checkpoint with its model card, ready for ``robustkit eval --model OUT/NAME.yaml``.

A thin layer over :func:`robustkit.zoo_training.train_zoo_entry`; every setting is a flag, validated before any
data is read, and deterministic under ``--seed``. Per-epoch progress goes to stderr, the card path to stdout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robustkit.data import load_dataset
from robustkit.defenses.adaptive_smoothing import train_mixing_network
from robustkit.errors import ConfigError, RobustkitError, short_repr
from robustkit.threat import parse_eps
from robustkit.train_config import AUGMENTATIONS, LR_SCHEDULES, make_config
from robustkit.userfiles import load_yaml_text
from robustkit.zoo import ARCHS, load_model
from robustkit.zoo_training import train_zoo_entry

CLI_METHODS = ("standard", "noise", "pgd", "fgsm", "trades", "pubdef", "distillation", "mixing-network")


def _load_models(option: str, specs: tuple[str, ...], weights_dir: str | None) -> dict[str, Any]:
    """name -> loaded model for each zoo name or card path of a repeatable option."""
    loaded = {}
    for spec in specs:
        try:
            loaded[Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec] = load_model(spec, weights_dir=weights_dir)
        except RobustkitError as exc:
            raise ConfigError(f"{option} {spec!r}: {exc}") from None
    return loaded


def _arch_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = load_yaml_text(text, "--arch-kwargs")
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"--arch-kwargs: expected a YAML mapping like '{{width: 16}}', got {short_repr(text)}")
    return value


def _normalization(text: str | None) -> Any:
    if text is None or text.strip().lower() in ("", "none", "null"):
        return None
    if text.strip().startswith("{"):
        return load_yaml_text(text, "--normalization")
    return text.strip()


@click.command("train")
@click.option("--arch", default=None, help="Architecture name (see `robustkit zoo list`), e.g. small-cnn.")
@click.option("--arch-kwargs", help="Architecture arguments as YAML, e.g. '{width: 16}' (in_channels and "
                                    "input_size default to the data's).")
@click.option("--dataset", required=True, help="Dataset name, e.g. mnist, digits, cifar10.")
@click.option("--root", help="Dataset folder.")
@click.option("--split", help="Dataset split, when the dataset has several (e.g. train, test).")
@click.option("--n-examples", type=int, help="Train on the first N examples (default: all but --eval-examples).")
@click.option("--eval-examples", type=int, default=0, show_default=True,
              help="Measure the card's clean accuracy on the LAST N examples (disjoint from the training ones).")
@click.option("--method", type=click.Choice(CLI_METHODS, case_sensitive=False), default="standard", show_default=True,
              help="standard; noise (Gaussian augmentation, --sigma); pgd (Madry et al.); fgsm (random start, Wong "
                   "et al.); trades (Zhang et al., --beta); pubdef (Sitawarin et al., transfer examples of each "
                   "--surrogate); distillation (Papernot et al., --temperature); mixing-network (the adaptive-"
                   "smoothing mixing network of two --member models, Bai et al.).")
@click.option("--surrogate", "surrogates", multiple=True,
              help="pubdef: a public surrogate model (zoo name or card path); repeat for several.")
@click.option("--member", "members", multiple=True,
              help="mixing-network: the adaptive-smoothing members, accurate first, robust second (zoo names or "
                   "card paths); --arch is then ignored.")
@click.option("--accurate-layer", "accurate_layers", multiple=True,
              help="mixing-network: a layer of the accurate member whose output the mixing network reads (module "
                   "name, e.g. maxpool2; repeatable; default: the member's logits).")
@click.option("--robust-layer", "robust_layers", multiple=True,
              help="mixing-network: a layer of the robust member whose output the mixing network reads (repeatable; "
                   "default: the member's logits).")
@click.option("--weights-dir", help="pubdef / mixing-network: folder with the surrogates' or members' checkpoints "
                                    "(default: the zoo's cache).")
@click.option("--eps", help="Training radius for pgd/fgsm/trades, a number or a fraction like 8/255.")
@click.option("--norm", default="Linf", show_default=True, help="Linf or L2 (pgd/fgsm/trades).")
@click.option("--steps", type=int, help="Attack steps for pgd/trades (default 10).")
@click.option("--step-size", type=float, help="Attack step size (default 2.5*eps/steps; fgsm 1.25*eps).")
@click.option("--eps-warmup", type=int, default=0, show_default=True,
              help="pgd/fgsm/trades: epochs over which eps ramps linearly from 0 (helps small models at large eps).")
@click.option("--beta", type=float, help="TRADES trade-off (default 6).")
@click.option("--sigma", type=float, help="Noise std for method noise.")
@click.option("--temperature", type=float, help="Distillation temperature (default 100, as in Papernot et al.).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(("adam", "sgd"), case_sensitive=False), default="adam", show_default=True)
@click.option("--lr", type=float, help="Learning rate (default 1e-3 for adam, 0.1 for sgd).")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES, case_sensitive=False),
              default="constant", show_default=True)
@click.option("--augment", type=click.Choice(AUGMENTATIONS, case_sensitive=False), default="none", show_default=True,
              help="shift: random translation by -1, 0 or +1 pixel per axis.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--normalization", help="Input normalization inside the model: a preset (mnist, cifar10, imagenet, "
                                      "...) or '{mean: [...], std: [...]}'; default none.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for initialization, data order and noise.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--name", help="Model name (file stem and card name); default <dataset>-<arch>-<method>.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch lines.")
def train(arch: str, arch_kwargs: str | None, dataset: str, root: str | None, split: str | None,
          n_examples: int | None, eval_examples: int, method: str, surrogates: tuple[str, ...],
          members: tuple[str, ...], accurate_layers: tuple[str, ...], robust_layers: tuple[str, ...],
          weights_dir: str | None,
          eps: str | None, norm: str, steps: int | None,
          step_size: float | None, eps_warmup: int, beta: float | None, sigma: float | None, temperature: float | None, epochs: int,
          batch_size: int, optimizer: str, lr: float | None, lr_schedule: str, augment: str, momentum: float, weight_decay: float,
          normalization: str | None, seed: int, device: str, name: str | None, out: Path, quiet: bool) -> None:
    """Train a model and write OUT/NAME.safetensors, its model card OUT/NAME.yaml and OUT/NAME.train.json."""
    method = method.lower()
    distill = method == "distillation"
    if name is not None and (not name.strip() or "/" in name or "\\" in name):
        raise ConfigError(f"--name: expected a plain name without '/' or '\\', got {name!r}")
    if n_examples is not None and n_examples < 1:
        raise ConfigError(f"--n-examples: expected a positive integer, got {n_examples}")
    if eval_examples < 0:
        raise ConfigError(f"--eval-examples: expected an integer >= 0, got {eval_examples}")
    if method == "mixing-network":
        if len(members) != 2:
            raise ConfigError(f"--member: --method mixing-network needs exactly two (accurate, then robust), got "
                              f"{len(members)}")
        arch = arch or "mixing-network"
    elif members or accurate_layers or robust_layers:
        raise ConfigError(f"--member/--accurate-layer/--robust-layer: only for --method mixing-network, not {method}")
    elif arch is None:
        raise ConfigError("--arch: required (see `robustkit zoo list`)")
    else:
        ARCHS.get(arch)  # unknown architecture: one line with the known names, before any data is read
    options: dict[str, Any] = {
        "method": {"distillation": "standard", "mixing-network": "pgd"}.get(method, method), "epochs": epochs, "batch_size": batch_size,
        "optimizer": optimizer.lower(), "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "lr_schedule": lr_schedule.lower(), "augment": augment.lower(), "seed": seed,
    }
    if surrogates and method != "pubdef":
        raise ConfigError(f"--surrogate: only for --method pubdef, not {method}")
    if method == "pubdef" and not surrogates:
        raise ConfigError("--surrogate: --method pubdef needs at least one public surrogate model (repeat the option)")
    if method in ("pgd", "fgsm", "trades", "pubdef", "mixing-network"):
        if eps is None:
            raise ConfigError(f"--eps: required for --method {method}")
        options.update(norm=norm, eps=parse_eps(eps, "--eps"), steps=steps, step_size=step_size)
        if eps_warmup:
            options["eps_warmup"] = eps_warmup
    elif eps is not None or steps is not None or step_size is not None or eps_warmup:
        raise ConfigError(f"--eps/--steps/--step-size: only for --method pgd, fgsm or trades, not {method}")
    if beta is not None:
        if method != "trades":
            raise ConfigError(f"--beta: only for --method trades, not {method}")
        options["beta"] = beta
    if temperature is not None and not distill:
        raise ConfigError(f"--temperature: only for --method distillation, not {method}")
    temperature = 100.0 if temperature is None else temperature
    if method == "noise":
        if sigma is None:
            raise ConfigError("--sigma: required for --method noise (the noise std, e.g. 0.25)")
        options["sigma"] = sigma
    elif sigma is not None:
        raise ConfigError(f"--sigma: only for --method noise, not {method}")
    config = make_config(**options)
    if distill and not temperature > 0:
        raise ConfigError(f"--temperature: expected a number > 0, got {temperature}")

    spec: dict[str, Any] = {"name": dataset}
    if root is not None:
        spec["root"] = root
    if split is not None:
        spec["split"] = split
    data = load_dataset(spec)

    def report(entry: dict[str, float]) -> None:
        if not quiet:
            click.echo(f"epoch {entry['epoch']:>3}: loss {entry['loss']:.4f}, train acc {100 * entry['train_acc']:.2f}%"
                       f", lr {entry['lr']:.3g} ({entry['seconds']:.1f} s)", err=True)

    loaded = _load_models("--surrogate", surrogates, weights_dir) if surrogates else None
    if method == "mixing-network":
        total = len(data)
        n_train = total - eval_examples if n_examples is None else n_examples
        if n_train < 1 or n_train + eval_examples > total:
            raise ConfigError(f"--n-examples ({n_train}) + --eval-examples ({eval_examples}) must fit in the {total} "
                              f"examples of {data.name!r} without overlapping")
        fit = {k: v for k, v in options.items() if k not in ("method", "momentum", "lr_schedule", "optimizer")}
        path = train_mixing_network(
            _load_models("--member", members, weights_dir), data.x[:n_train], data.y[:n_train], out=out,
            name=name or f"{data.name}-adaptive-smoothing", x_eval=data.x[total - eval_examples:],
            y_eval=data.y[total - eval_examples:], on_epoch=report,
            features=[list(accurate_layers) or [""], list(robust_layers) or [""]]
            if accurate_layers or robust_layers else None,
            data_note=f"data: {data.name} examples 0..{n_train - 1}", **fit)
        click.echo(str(path))
        return
    result = train_zoo_entry(arch=arch, dataset=data, out=out, config=config, name=name,
                             arch_kwargs=_arch_kwargs(arch_kwargs), normalization=_normalization(normalization),
                             n_examples=n_examples, eval_examples=eval_examples,
                             distillation_temperature=temperature if distill else None, device=device,
                             on_epoch=report, surrogates=loaded)
    acc = result.card.get("reported_clean_acc")
    if acc is not None:
        click.echo(f"clean accuracy on the last {eval_examples} examples: {acc:.2f}%", err=True)
    click.echo(str(result.card_path))
