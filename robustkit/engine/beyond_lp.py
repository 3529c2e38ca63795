"""Running the non-Lp sections of a sweep (corruption, patch, universal) through the same results store.

Each (model, section, level) is a *job* -- level = (corruption, severity), patch area or universal eps --
whose id hashes what can change its numbers (model, examples, section and attack configs, level, seed,
version), stored in the same ``jobs``/``batches``/``samples`` tables as the Lp jobs, one transaction per
batch, so these sections resume exactly like the Lp ones. The store's ``norm`` column says the section
(``corruption:fog``, ``patch:random``, ``universal:Linf``) and ``eps`` the level (severity, area, eps).

* corruption: every example of the batch is corrupted (:mod:`robustkit.corruptions`, seeded per example),
  the corrupted batch is cached as uint8 under ``<out>/corrupted/`` (shared by every model), and the
  verdict is the prediction on it: accuracy under corruption counts every example, as in Hendrycks &
  Dietterich, also those misclassified clean (``clean_correct`` is stored next to it).
* patch / universal: the section's attacks run as a cascade (:func:`robustkit.engine.cascade.run_cascade`,
  clean-first, engine budget check with the patch mask, re-prediction). Patch places are drawn once per
  (seed, area, location) for the whole dataset, so every model sees the same places. Universal attacks are
  fitted on examples ``0..train_examples-1`` (payload cached under ``<out>/universal/``) and every attack of
  the section is evaluated on ``train_examples..end`` only.
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

import robustkit
from robustkit import identity
from robustkit.attacks import eval_mode
from robustkit.corruptions import check_image_size, corrupt_images
from robustkit.errors import ConfigError
from robustkit.outputs import write_bytes
from robustkit.patch import PATCH_EPS, patch_side, positions, square_masks
from robustkit.predict import model_device, predict
from robustkit.threat import ThreatModel

from .cascade import run_cascade
from .progress import SweepProgress
from .store import ResultStore
from .sweep import Sweep
from .threat_specs import ThreatSpec, is_universal

CORRUPTED_DIR = "corrupted"
UNIVERSAL_DIR = "universal"


@dataclass(frozen=True)
class ExtraJob:
    """One (model, non-Lp section, level) job."""

    job_id: str
    identity: dict[str, Any]
    model: str
    spec_index: int
    kind: str
    level: Any
    start: int  # first evaluated example (the training split ends before it)

    @property
    def norm(self) -> str:
        return f"{self.kind}:{self.level[0]}" if self.kind == "corruption" else f"{self.kind}:{self.identity['spec_key']}"

    @property
    def eps(self) -> float:
        return float(self.level[1]) if self.kind == "corruption" else float(self.level)


def _spec_key(spec: ThreatSpec) -> str:
    return spec.location if spec.kind == "patch" else spec.norm


def check_specs(sweep: Sweep) -> None:
    """Refuse what only the loaded data and models can reveal, before any compute."""
    shape = tuple(sweep.dataset.x.shape[1:])
    names = [m.name for m in sweep.models]
    for i, spec in enumerate(sweep.extra_threats):
        where = f"threat_model[{i}]"
        if spec.kind == "corruption":
            check_image_size(shape, where)
            if spec.baseline is not None and spec.baseline not in names:
                raise ConfigError(f"{where}.baseline: {spec.baseline!r} is not one of the sweep's models "
                                  f"({', '.join(names)})")
        if spec.kind == "patch":
            for area in spec.levels:
                side = patch_side(area, shape[1], shape[2], f"{where}.area")
                if spec.location == "fixed":
                    positions(1, shape[1], shape[2], side, "fixed", spec.position)
        if spec.train_examples and spec.train_examples >= len(sweep.dataset):
            raise ConfigError(f"{where}.train_examples: {spec.train_examples} leaves no held-out example of the "
                              f"{len(sweep.dataset)} in the dataset")


def plan_extra_jobs(sweep: Sweep, fingerprints: dict[str, dict[str, Any]]) -> list[ExtraJob]:
    """Every non-Lp job of the sweep, in model order."""
    jobs = []
    for entry in sweep.models:
        for i, spec in enumerate(sweep.extra_threats):
            for level in spec.levels:
                ident = {"model": fingerprints[entry.name], "dataset": {"content_hash": sweep.dataset.content_hash,
                                                                        "n_examples": len(sweep.dataset)},
                         "section": spec.describe(), "spec_key": _spec_key(spec), "level": level,
                         "seed": int(sweep.seed), "robustkit_version": robustkit.__version__}
                jobs.append(ExtraJob(identity.job_id(ident), ident, entry.name, i, spec.kind, level,
                                     spec.train_examples))
    return jobs


@contextlib.contextmanager
def _model_on(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    original = model_device(model)
    model.to(device)
    try:
        with eval_mode(model):
            yield model
    finally:
        model.to(original)


class ExtraRunner:
    """Runs the missing batches of non-Lp jobs; counts computed and reused batches like the Lp runner."""

    def __init__(self, sweep: Sweep, store: ResultStore, out: Path, run_id: str, attempt: int,
                 device: torch.device, batch_size: int, quiet: bool) -> None:
        self.sweep, self.store, self.out, self.run_id, self.attempt = sweep, store, Path(out), run_id, attempt
        self.device, self.batch_size, self.quiet = device, batch_size, quiet
        self.computed = self.reused = 0

    def run(self, jobs: list[ExtraJob]) -> None:
        for entry in self.sweep.models:
            model_jobs = [j for j in jobs if j.model == entry.name]
            if not model_jobs:
                continue
            with _model_on(entry.model, self.device) as model:
                for job in model_jobs:
                    self._run_job(model, job)

    def _run_job(self, model: nn.Module, job: ExtraJob) -> None:
        spec = self.sweep.extra_threats[job.spec_index]
        n = len(self.sweep.dataset) - job.start
        batch_size = self.store.ensure_job(job.job_id, job.identity, model=job.model, dataset=self.sweep.dataset.name,
                                           norm=job.norm, eps=job.eps, prev_job_id=None, n_examples=n,
                                           batch_size=self.batch_size, attack_labels=spec.labels)
        done = self.store.finished_batches(job.job_id)
        self.reused += len(done)
        n_batches = -(-n // batch_size)
        if len(done) == n_batches:
            return
        fit_seconds = 0.0  # the fit is this job's compute too: counted in its first computed batch
        if any(is_universal(a) for a in spec.attacks):
            t0 = time.perf_counter()
            self._fit_universal(model, job, spec)
            fit_seconds = time.perf_counter() - t0
        level = f"{job.level[0]} s{job.level[1]}" if job.kind == "corruption" else f"{job.eps:g}"
        with SweepProgress(f"{job.model} {job.kind} {level}", n, done=sum(b.stop - b.start for b in done.values()),
                         quiet=self.quiet) as bar:
            for b in range(n_batches):
                if b in done:
                    continue
                lo, hi = job.start + b * batch_size, min(len(self.sweep.dataset), job.start + (b + 1) * batch_size)
                seed = identity.batch_seed(self.sweep.seed, job.job_id, b)
                with torch.no_grad() if job.kind == "corruption" else contextlib.nullcontext():
                    rows, seconds = self._batch(model, job, spec, lo, hi, seed)
                seconds, fit_seconds = seconds + fit_seconds, 0.0
                self.store.commit_batch(job_id=job.job_id, batch_index=b, start=lo, stop=hi, seed=seed,
                                        chunk_size=hi - lo, n_attacked=hi - lo, seconds=seconds, run_id=self.run_id,
                                        attempt=self.attempt, rows=rows)
                self.computed += 1
                bar.update(hi - lo, sum(r[5] for r in rows))
        self.store.mark_job_finished(job.job_id)

    def _batch(self, model: nn.Module, job: ExtraJob, spec: ThreatSpec, lo: int, hi: int,
               seed: int) -> tuple[list[tuple[Any, ...]], float]:
        t0 = time.perf_counter()
        x = self.sweep.dataset.x[lo:hi]
        y = self.sweep.dataset.y[lo:hi].to(self.device)
        if job.kind == "corruption":
            rows = self._corruption_rows(model, job, x, y, lo)
        else:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            threat = self._threat(job, spec, lo, hi)
            state = run_cascade(model, x.to(self.device), y, spec.attacks, threat, generator=generator)
            rows = state.rows(lo)
        return rows, time.perf_counter() - t0

    def _corruption_rows(self, model: nn.Module, job: ExtraJob, x: torch.Tensor, y: torch.Tensor,
                         lo: int) -> list[tuple[Any, ...]]:
        name, severity = job.level
        xc = self._corrupted(x, name, severity, lo)
        clean = predict(model, x.to(self.device)).cpu()
        pred = predict(model, xc.to(self.device)).cpu()
        rows = []
        for i, (label, c, p) in enumerate(zip(y.cpu().tolist(), clean.tolist(), pred.tolist())):
            ok = p == label
            rows.append((lo + i, label, c, int(c == label), "1" if ok else "0", int(ok),
                         None if ok else f"corruption:{name}", None if ok else float(severity),
                         None if ok else int(p), None, 1))
        return rows

    def _corrupted(self, x: torch.Tensor, name: str, severity: int, lo: int) -> torch.Tensor:
        """The corrupted batch, from ``<out>/corrupted/`` when an earlier job (any model) made it."""
        key = identity.sha256_text(f"{self.sweep.dataset.content_hash}:{name}:{severity}:{self.sweep.seed}:"
                                   f"{lo}:{lo + x.shape[0]}")[:24]
        path = self.out / CORRUPTED_DIR / f"{key}.npy"
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == tuple(x.shape):
                return torch.from_numpy(arr).float().div(255.0)
        xc = corrupt_images(x, name, severity, seed=self.sweep.seed, indices=range(lo, lo + x.shape[0]))
        buf = io.BytesIO()
        np.save(buf, (xc * 255).round().to(torch.uint8).numpy())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buf.getvalue())
        return xc

    def _threat(self, job: ExtraJob, spec: ThreatSpec, lo: int, hi: int) -> ThreatModel:
        if job.kind == "universal":
            return ThreatModel(spec.norm, float(job.level))
        height, width = self.sweep.dataset.x.shape[-2:]
        side = patch_side(float(job.level), height, width)
        if spec.location == "searched":
            return ThreatModel("Linf", PATCH_EPS, patch_side=side)
        gen = torch.Generator().manual_seed(identity.batch_seed(self.sweep.seed, f"patch:{spec.location}:{job.level}", 0))
        rows, cols = positions(len(self.sweep.dataset), height, width, side, spec.location, spec.position, gen)
        mask = square_masks(height, width, side, rows[lo:hi], cols[lo:hi]).to(self.device)
        return ThreatModel("Linf", PATCH_EPS, mask=mask, patch_side=side)

    def _fit_universal(self, model: nn.Module, job: ExtraJob, spec: ThreatSpec) -> None:
        """Fit (or read back) every universal attack of the section on the training split."""
        n_train = spec.train_examples
        for attack in spec.attacks:
            if not is_universal(attack):
                continue
            threat = self._threat(job, spec, 0, n_train)
            eps = float(threat.eps)
            path = self.out / UNIVERSAL_DIR / f"{job.job_id}-{identity.sha256_text(attack.label)[:8]}.pt"
            if path.is_file():
                saved = torch.load(path, map_location="cpu", weights_only=True)
                attack.restore(model, threat.norm, eps, saved["payload"].to(self.device), saved["info"])
                continue
            generator = torch.Generator(device=self.device).manual_seed(
                identity.batch_seed(self.sweep.seed, job.job_id, -1))
            info = attack.fit(model, self.sweep.dataset.x[:n_train], self.sweep.dataset.y[:n_train], threat,
                              generator=generator)
            buf = io.BytesIO()
            torch.save({"payload": attack.fitted_payload(model, torch.tensor([eps]), threat.norm).cpu(),
                        "info": info}, buf)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, buf.getvalue())
