"""``robustkit eval``: run (or resume) a sweep and print its leaderboard.

Three ways in, one engine (:func:`robustkit.engine.runner.run_sweep`):

* ``robustkit eval --config sweep.yaml`` -- a YAML sweep (docs/engine.md);
* ``robustkit eval --model NAME_OR_CARD --dataset NAME [--root DIR] --eps 8/255 [--attack pgd ...]`` -- ad hoc;
* ``robustkit eval`` -- the bundled quickstart on the 8x8 digits.

Progress bars go to stderr, the final leaderboard (markdown) to stdout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robustkit.errors import ConfigError, short_repr
from robustkit.userfiles import load_yaml_text
from robustkit.defenses.certification import DEFAULT_RADII
from robustkit.engine.config import load_config, parse_config, resolve_config
from robustkit.engine.dry_run import format_plan, plan_sweep
from robustkit.engine.identity import canonical_json, sha256_text
from robustkit.engine.leaderboard import LEADERBOARD_CSV, PER_SAMPLE_CSV, to_markdown
from robustkit.engine.quickstart import DEFAULT_ATTACKS, QUICKSTART_OUT, quickstart_sweep
from robustkit.engine.runner import RunResult, run_sweep
from robustkit.report.html import PLOTS_DIR, REPORT_HTML

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


def _report(result: RunResult, quiet: bool) -> None:
    click.echo(to_markdown(result.leaderboard), nl=False)
    names = [LEADERBOARD_CSV, "leaderboard.md", PER_SAMPLE_CSV, "report.md", REPORT_HTML]
    if result.curve is not None:
        names += ["curve.csv", "curve.png"]
    names.append(PLOTS_DIR + "/")
    files = [str(result.out / n) for n in names if (result.out / n).exists()]
    listed = ", ".join(files[:-1]) + f" and {files[-1]}" if len(files) > 1 else "".join(files)
    click.echo(f"wrote {listed} ({result.batches_computed} batches computed, {result.batches_reused} reused)",
               err=True)


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
def eval_cmd(config_path: Path | None, out: Path | None, device: str | None, n_examples: int | None,
             batch_size: int | None, seed: int | None, fresh: bool, quiet: bool, models: tuple[str, ...],
             dataset: str | None, root: str | None, attacks: tuple[str, ...], eps: tuple[str, ...],
             norm: str | None, checks: str | None = None, wait: bool = False, dry_run: bool = False) -> None:
    """Evaluate models against an attack suite and print the leaderboard.

    With no arguments, runs the quickstart: the small digits models against the built-in suite.
    """
    adhoc = bool(models or dataset or root or attacks or eps or norm)
    overrides = {"n_examples": n_examples, "device": device, "batch_size": batch_size, "seed": seed}
    if config_path is not None:
        if adhoc:
            raise ConfigError(f"{COMMAND_LINE}: use either --config or --model/--dataset/--root/--attack/--eps/"
                              f"--norm, not both")
        cfg = load_config(config_path)
        sweep = resolve_config(cfg, **overrides)
        target = out or cfg.output or Path("runs") / config_path.stem
    elif adhoc:
        raw = _adhoc_config(models, dataset, root, attacks, eps, norm)
        cfg = parse_config(raw, source=COMMAND_LINE, base_dir=Path.cwd())
        sweep = resolve_config(cfg, **overrides)
        key = sha256_text(canonical_json({**raw, "seed": sweep.seed, "n_examples": n_examples}))[:8]
        target = out or Path("runs") / f"{sweep.dataset.name}-{sweep.norm}-{key}"
    else:
        sweep = quickstart_sweep(device=device or "auto", n_examples=n_examples, batch_size=batch_size,
                                 seed=0 if seed is None else seed)
        target = out or QUICKSTART_OUT
    if dry_run:
        click.echo(format_plan(sweep, target, plan_sweep(sweep, target)), nl=False)
        return
    from_config = config_path is not None or adhoc
    mode = checks or (cfg.checks if from_config else "cheap")
    radii = cfg.certified_radii if from_config else DEFAULT_RADII
    result = run_sweep(sweep, target, fresh=fresh, quiet=quiet, checks=mode, radii=radii, wait=wait)
    _report(result, quiet)
