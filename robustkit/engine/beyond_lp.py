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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

import robustkit
from robustkit import identity
from robustkit.attacks import Attack, eval_mode
from robustkit.corruptions import check_image_size, corrupt_images
from robustkit.errors import BudgetViolationError, ConfigError
from robustkit.outputs import write_bytes
from robustkit.patch import PATCH_EPS, patch_side, positions, square_masks
from robustkit.predict import model_device, predict
from robustkit.threat import RTOL, ThreatModel, check_budget

from .beyond_lp_verify import check_kept_patches, kept_payload, rows_differ, save_patch_examples, verify_extra_job
from .cascade import SampleState, run_cascade
from .progress import SweepProgress
from .store import ResultStore
from .sweep import Sweep
from .threat_specs import ThreatSpec, is_universal

CORRUPTED_DIR = "corrupted"
UNIVERSAL_ROWS = "adv_pred-of-every-held-out-image"
UNIVERSAL_DIR = "universal"
PATCH_DIR = "patch"  # every breaking patched example, for the verification on read


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
                if spec.kind == "universal":  # rows of clean mistakes carry their perturbed prediction (fooling)
                    ident["rows"] = UNIVERSAL_ROWS
                jobs.append(ExtraJob(identity.job_id(ident), ident, entry.name, i, spec.kind, level,
                                     spec.train_examples))
    return jobs


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).numpy()


def perturbed_mistakes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[Attack],
                      threat: ThreatModel, state: SampleState) -> None:
    """Give the clean mistakes of a universal batch their prediction under the perturbation(s), in ``adv_pred``.

    The cascade never attacks an image the model gets wrong, but the fooling rate (Moosavi-Dezfooli et al.
    2017) counts every held-out image whose predicted class changes. Each of the section's universal
    perturbations is applied in order (budget-checked and re-predicted like any attack output); a mistake's
    ``adv_pred`` becomes the first prediction that differs from its clean one (else it stays the clean one).
    """
    wrong = (~state.clean_correct).nonzero().squeeze(1)
    if not wrong.numel():
        return
    idx = wrong.to(x.device)
    xs, ys, sub = x[idx], y[idx], threat.subset(idx)
    clean = state.clean_pred[wrong]
    changed = torch.zeros(len(wrong), dtype=torch.bool)
    for attack in attacks:
        result = attack(model, xs, ys, sub)
        x_adv = getattr(result, "x_adv", result).detach().to(device=xs.device, dtype=torch.float32)
        check_budget(xs, x_adv, sub.eps, threat.norm, rtol=RTOL, who=f"attack {attack.label!r} (engine check)",
                     mask=sub.mask, patch_side=threat.patch_side)
        pred = predict(model, x_adv).cpu()
        new = (pred != clean) & ~changed
        for k in new.nonzero().squeeze(1).tolist():
            state.adv_pred[int(wrong[k])] = int(pred[k])
        changed |= new


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
        self.bad_payloads: set[str] = set()  # jobs whose kept universal perturbation failed verification

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
        if self.store.finished_batches(job.job_id):
            self._verify(model, job, spec, n, batch_size)
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

    def _verify(self, model: nn.Module, job: ExtraJob, spec: ThreatSpec, n: int, batch_size: int) -> None:
        """Verify the job's stored batches (:mod:`robustkit.engine.beyond_lp_verify`); failing ones are dropped."""
        recheck = None
        if job.kind == "corruption":
            recheck = lambda b, lo, hi, stored: rows_differ(  # noqa: E731
                self._recheck_corruption(model, job, lo, hi), stored)
        elif job.kind == "patch":
            recheck = lambda b, lo, hi, stored: check_kept_patches(  # noqa: E731
                self._patch_path(job, lo, hi), model, self.sweep.dataset.x[lo:hi], lo, stored,
                self._threat(job, spec, lo, hi), self.device)
        else:
            self._fit_universal(model, job, spec)
            if job.job_id in self.bad_payloads:  # the verdicts came from a perturbation that is not trusted
                self.store.drop_batches(job.job_id, list(self.store.finished_batches(job.job_id)))
                print(f"results store: recomputing every batch of {job.model} {job.kind} {job.eps:g}: its kept "
                      f"universal perturbation fails the budget check (fitted again)", file=sys.stderr)
            recheck = lambda b, lo, hi, stored: rows_differ(self._batch(  # noqa: E731
                model, job, spec, lo, hi, identity.batch_seed(self.sweep.seed, job.job_id, b))[0], stored)
        try:
            dropped = verify_extra_job(self.store, job.job_id, job.kind, first=job.start, n_examples=n,
                                       batch_size=batch_size, labels=self.sweep.dataset.y.numpy(),
                                       n_attacks=len(spec.attacks), recheck=recheck)
        except BudgetViolationError as exc:  # a kept universal perturbation out of its budget: fit it again
            for path in (self.out / UNIVERSAL_DIR).glob(f"{job.job_id}-*.pt"):
                path.unlink()
            self.store.drop_batches(job.job_id, list(self.store.finished_batches(job.job_id)))
            dropped = [f"every batch (its kept universal perturbation fails the budget check: {exc})"]
        if dropped:
            what = f"{job.level[0]} s{job.level[1]}" if job.kind == "corruption" else f"{job.eps:g}"
            print(f"results store: recomputing {len(dropped)} batch(es) of {job.model} {job.kind} {what} that failed "
                  f"verification: {'; '.join(dropped)[:300]}", file=sys.stderr)

    def _recheck_corruption(self, model: nn.Module, job: ExtraJob, lo: int, hi: int) -> list[tuple[Any, ...]]:
        """The batch's rows again from its cached corrupted images, after checking that the cache holds what
        the seed gives (its first image corrupted again, byte for byte; else the cache is made again)."""
        name, severity = job.level
        x = self.sweep.dataset.x[lo:hi]
        path = self._corrupted_path(name, severity, lo, hi)
        if path.is_file():
            cached = np.load(path, allow_pickle=False)
            again = corrupt_images(x[:1], name, severity, seed=self.sweep.seed, indices=[lo])
            if cached.shape != tuple(x.shape) or not np.array_equal(cached[:1], _as_uint8(again)):
                print(f"results store: {path} is not what seed {self.sweep.seed} gives for {name} s{severity}; "
                      f"corrupting the batch again", file=sys.stderr)
                path.unlink()
        with torch.no_grad():
            return self._corruption_rows(model, job, x, self.sweep.dataset.y[lo:hi].to(self.device), lo)

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
            kept: tuple[list[int], list[torch.Tensor]] = ([], [])
            keep = (lambda i, xa: (kept[0].extend(lo + k for k in i), kept[1].append(xa.cpu()))  # noqa: E731
                    if job.kind == "patch" else None)
            state = run_cascade(model, x.to(self.device), y, spec.attacks, threat, generator=generator, keep=keep)
            if job.kind == "patch":  # kept before the batch is committed, so that every stored batch has them
                path = self._patch_path(job, lo, hi)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(path, save_patch_examples(*kept))
            if job.kind == "universal":
                perturbed_mistakes(model, x.to(self.device), y, spec.attacks, threat, state)
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
        path = self._corrupted_path(name, severity, lo, lo + x.shape[0])
        if path.is_file():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == tuple(x.shape):
                return torch.from_numpy(arr).float().div(255.0)
        xc = corrupt_images(x, name, severity, seed=self.sweep.seed, indices=range(lo, lo + x.shape[0]))
        buf = io.BytesIO()
        np.save(buf, _as_uint8(xc))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buf.getvalue())
        return xc

    def _patch_path(self, job: ExtraJob, lo: int, hi: int) -> Path:
        return self.out / PATCH_DIR / f"{job.job_id}-{lo}-{hi}.npz"

    def _corrupted_path(self, name: str, severity: int, lo: int, hi: int) -> Path:
        key = identity.sha256_text(f"{self.sweep.dataset.content_hash}:{name}:{severity}:{self.sweep.seed}:"
                                   f"{lo}:{hi}")[:24]
        return self.out / CORRUPTED_DIR / f"{key}.npy"

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
                saved = kept_payload(path, attack.name, threat.norm, eps)
                if saved is not None:
                    attack.restore(model, threat.norm, eps, saved["payload"].to(self.device), saved["info"])
                    continue
                path.unlink()  # damaged or outside its budget: never used, fitted again (and its batches redone)
                self.bad_payloads.add(job.job_id)
            generator = torch.Generator(device=self.device).manual_seed(
                identity.batch_seed(self.sweep.seed, job.job_id, -1))
            info = attack.fit(model, self.sweep.dataset.x[:n_train], self.sweep.dataset.y[:n_train], threat,
                              generator=generator)
            buf = io.BytesIO()
            torch.save({"payload": attack.fitted_payload(model, torch.tensor([eps]), threat.norm).cpu(),
                        "info": info}, buf)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, buf.getvalue())
