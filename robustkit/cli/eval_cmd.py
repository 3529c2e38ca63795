"""``robustkit eval``: run (or resume) a sweep and print its leaderboard.

Three ways in, one engine (:func:`robustkit.engine.runner.run_sweep`):

* ``robustkit eval --config sweep.yaml`` -- a YAML sweep (docs/engine.md);
* ``robustkit eval --model NAME_OR_CARD --dataset NAME [--root DIR] --eps 8/255 [--attack pgd ...]`` -- ad hoc;
* ``robustkit eval`` -- the bundled quickstart on the 8x8 digits.

Progress bars go to stderr, the final leaderboard (markdown) to stdout.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import click

from robustkit.engine.config import load_config, parse_config, resolve_config
from robustkit.engine.distributed import DistributedExecutor, launched_by_torchrun
from robustkit.engine.dry_run import format_plan, plan_sweep
from robustkit.engine.launch import DEFAULT_RDZV_TIMEOUT, Launch, launch
from robustkit.engine.leaderboard import to_markdown
from robustkit.engine.options import RunOptions
from robustkit.engine.quickstart import DEFAULT_ATTACKS, QUICKSTART_OUT, quickstart_sweep
from robustkit.engine.runner import RunResult, run_sweep
from robustkit.errors import ConfigError, short_repr
from robustkit.identity import canonical_json, sha256_text
from robustkit.userfiles import load_yaml_text

COMMAND_LINE = "command line"


def _attack_spec(text: str) -> Any:
    """``pgd`` or an inline YAML mapping such as ``{name: pgd, steps: 100}``."""
    text = text.strip()
    if text.startswith("{"):
        spec = load_yaml_text(text, f"{COMMAND_LINE}: --attack {short_repr(text)}")
        if not isinstance(spec, dict):
            raise ConfigError(f"{COMMAND_LINE}: --attack {short_repr(text)}: expected a mapping like {{name: pgd, steps: 40}}")
        return spec
    return text


def _adhoc_config(models: tuple[str, ...], dataset: str | None, root: str | None, attacks: tuple[str, ...],
                  eps: tuple[str, ...], norm: str | None) -> dict[str, Any]:
    if not models:
        raise ConfigError(f"{COMMAND_LINE}: --model: required for an ad hoc evaluation (or use --config)")
    if not dataset:
        raise ConfigError(f"{COMMAND_LINE}: --dataset: required for an ad hoc evaluation (or use --config)")
    if not eps:
        raise ConfigError(f"{COMMAND_LINE}: --eps: required, e.g. --eps 8/255 (repeatable)")
    data: dict[str, Any] = {"name": dataset}
    if root:
        data["root"] = root
    return {
        "dataset": data,
        "models": list(models),
        "threat_model": {"norm": norm or "Linf", "eps": list(eps)},
        "attacks": [_attack_spec(a) for a in attacks] if attacks else list(DEFAULT_ATTACKS),
    }


def _report(result: RunResult) -> None:
    if len(result.leaderboard):
        click.echo(to_markdown(result.leaderboard), nl=False)
    for kind, table in (result.sections or {}).items():  # the corruption / patch / universal sections
        click.echo(f"{kind}: {len(table)} row(s) in {kind}.csv", err=True)
    files = [str(f) for f in result.files]
    listed = ", ".join(files[:-1]) + f" and {files[-1]}" if len(files) > 1 else "".join(files)
    click.echo(f"wrote {listed} ({result.batches_computed} batches computed, {result.batches_reused} reused)",
               err=True)


# Options that shape how the processes start; they are not passed on to the workers.
LAUNCH_PARAMS = ("workers", "nnodes", "rdzv_endpoint", "rdzv_timeout", "max_restarts")
# How each other option is written on the workers' command line (flags and repeatable options).
_FLAGS = {"config_path": "--config", "out": "--out", "device": "--device", "n_examples": "--n-examples",
          "batch_size": "--batch-size", "seed": "--seed", "fresh": "--fresh", "quiet": "--quiet", "wait": "--wait",
          "checks": "--checks",
          "models": "--model", "dataset": "--dataset", "root": "--root", "attacks": "--attack", "eps": "--eps",
          "norm": "--norm"}


def _worker_args(params: dict[str, Any]) -> list[str]:
    """``eval`` and every given option except the launch options: what each worker process runs."""
    args = ["eval"]
    for name, flag in _FLAGS.items():
        value = params.get(name)
        if value is None or value is False or value == ():
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, tuple):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    return args


@click.command("eval")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML sweep config (relative paths in it resolve against its folder).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (results.sqlite, leaderboard.csv/.md, per_sample.csv).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--n-examples", type=int, help="Evaluate only the first N examples.")
@click.option("--batch-size", type=int, help="Batch size (default: from the config, else automatic).")
@click.option("--seed", type=int, help="Override the seed (default: from the config, else 0).")
@click.option("--fresh", is_flag=True, help="Discard previous results in the output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--wait", is_flag=True,
              help="If another run holds the output folder, wait for it (default: fail with one line naming it).")
@click.option("--checks", "checks", type=click.Choice(["cheap", "full", "off"]), default=None,
              help="Evaluation checks (docs/checks.md): cheap (default), full or off; overrides the config.")
@click.option("--model", "models", multiple=True, help="Ad hoc: zoo name or model card path (repeatable).")
@click.option("--dataset", help="Ad hoc: dataset name.")
@click.option("--root", help="Ad hoc: dataset folder.")
@click.option("--attack", "attacks", multiple=True,
              help="Ad hoc: attack name or '{name: pgd, steps: 40}' (repeatable, in cascade order).")
@click.option("--eps", multiple=True, help="Ad hoc: radius, a number or a fraction like 8/255 (repeatable).")
@click.option("--norm", help="Ad hoc: Linf (default), L2 or L1.")
@click.option("--dry-run", is_flag=True, help="Print the plan (jobs, batches, reused batches, an upper bound of "
                                              "model passes) and compute nothing.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes on this machine (torchrun's launcher; default: the config's workers, else 1).")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --workers: machines taking part (each runs this same command).")
@click.option("--rdzv-endpoint", help="With --nnodes > 1: HOST:PORT of the c10d rendezvous (the first machine).")
@click.option("--rdzv-timeout", type=click.IntRange(min=1), default=DEFAULT_RDZV_TIMEOUT, show_default=True,
              help="Seconds to wait for the rendezvous before a one-line error.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --workers: restart all workers this many times after a failure (each resumes).")
def eval_cmd(config_path: Path | None, out: Path | None, device: str | None, n_examples: int | None,
             batch_size: int | None, seed: int | None, fresh: bool, quiet: bool, models: tuple[str, ...],
             dataset: str | None, root: str | None, attacks: tuple[str, ...], eps: tuple[str, ...],
             norm: str | None, checks: str | None = None, wait: bool = False, dry_run: bool = False,
             workers: int | None = None, nnodes: int = 1, rdzv_endpoint: str | None = None,
             rdzv_timeout: int = DEFAULT_RDZV_TIMEOUT, max_restarts: int = 0) -> None:
    """Evaluate models against an attack suite and print the leaderboard.

    With no arguments, runs the quickstart: the small digits models against the built-in suite. Under
    torchrun (or with --workers N) the sweep is shared by the processes (docs/distributed.md).
    """
    adhoc = bool(models or dataset or root or attacks or eps or norm)
    overrides = {"n_examples": n_examples, "device": device, "batch_size": batch_size, "seed": seed}
    if config_path is not None and adhoc:
        raise ConfigError(f"{COMMAND_LINE}: use either --config or --model/--dataset/--root/--attack/--eps/"
                          f"--norm, not both")
    raw = _adhoc_config(models, dataset, root, attacks, eps, norm) if adhoc else None
    cfg = (load_config(config_path) if config_path is not None else
           parse_config(raw, source=COMMAND_LINE, base_dir=Path.cwd()) if raw is not None else None)
    options = cfg.options if cfg is not None else RunOptions()
    if checks is not None:
        options = dataclasses.replace(options, checks=checks)  # click has validated it
    spec = Launch(workers or options.workers, nnodes, rdzv_endpoint, rdzv_timeout, max_restarts)
    if not launched_by_torchrun() and not dry_run and (spec.workers > 1 or spec.nnodes > 1):
        launch(spec, _worker_args(click.get_current_context().params))
        return
    executor = DistributedExecutor(device or (cfg.device if cfg else "auto")) if launched_by_torchrun() else None
    try:
        with executor.rank0_first() if executor is not None else contextlib.nullcontext():
            if cfg is not None and config_path is not None:
                sweep = resolve_config(cfg, **overrides)
                target = out or cfg.output or Path("runs") / config_path.stem
            elif cfg is not None:
                sweep = resolve_config(cfg, **overrides)
                key = sha256_text(canonical_json({**(raw or {}), "seed": sweep.seed, "n_examples": n_examples}))[:8]
                target = out or Path("runs") / f"{sweep.dataset.name}-{sweep.norm}-{key}"
            else:
                sweep = quickstart_sweep(device=device or "auto", n_examples=n_examples, batch_size=batch_size,
                                         seed=0 if seed is None else seed)
                target = out or QUICKSTART_OUT
        if dry_run:
            if executor is None or executor.rank == 0:
                click.echo(format_plan(sweep, target, plan_sweep(sweep, target)), nl=False)
            return
        result = run_sweep(sweep, target, fresh=fresh, quiet=quiet, options=options, executor=executor,
                           wait=wait)
    finally:
        if executor is not None:
            executor.close()
    if result.rank == 0:
        _report(result)
