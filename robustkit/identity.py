"""Fingerprints that decide when stored results may be reused, and the per-batch seeds.

A job's identity is everything that can change its numbers: the model's weights and structure, the exact
examples, the attack suite (each ``attack.config()``, in order), the threat model, the seed, the robustkit
version and -- because of the nested-ball rule -- the job at the previous (smaller) eps. Anything left out of
it could let a resumed sweep mix results from different setups, so fingerprints err on the side of
including too much: a spurious new job costs compute, a wrong reuse costs a wrong published number.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable

import torch
from torch import nn

JOB_ID_HEX = 20  # 80 bits: collisions are not a practical concern for a results folder
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of each tensor, in the given order."""
    h = hashlib.sha256()
    for name, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies a model's behaviour: checkpoint sha256, every parameter and buffer, its structure.

    Buffers are hashed including non-persistent ones (an input normalization lives there, outside the state
    dict), and the module ``repr`` (with memory addresses removed) catches structural differences that share
    the same weights, such as a different activation or a defense wrapper's settings.
    """
    tensors = [(f"param:{n}", p) for n, p in model.named_parameters()]
    tensors += [(f"buffer:{n}", b) for n, b in model.named_buffers()]
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "checkpoint_sha256": getattr(model, "robustkit_checkpoint_sha256", None),
        "tensors_sha256": hash_tensors(tensors),
        "structure_sha256": sha256_text(_ADDRESS.sub("", repr(model))),
    }


def job_identity(*, model: dict[str, Any], dataset_hash: str, n_examples: int, attacks: list[dict[str, Any]],
                 norm: str, eps: float, seed: int, version: str, previous_job: str | None) -> dict[str, Any]:
    """The JSON-able description that :func:`job_id` hashes (also stored next to the job, for audits)."""
    return {
        "model": model,
        "dataset": {"content_hash": dataset_hash, "n_examples": int(n_examples)},
        "attacks": attacks,
        "threat_model": {"norm": norm, "eps": float(eps)},
        "seed": int(seed),
        "robustkit_version": version,
        "previous_job": previous_job,
    }


def job_id(identity: dict[str, Any]) -> str:
    return sha256_text(canonical_json(identity))[:JOB_ID_HEX]


def run_id(parts: Any) -> str:
    """A run's id: a hash of its jobs and display names, so the same sweep always gets the same id."""
    return sha256_text(canonical_json(parts))[:12]


def batch_seed(seed: int, job: str, batch_index: int, chunk_offset: int = 0) -> int:
    """A 63-bit seed for one batch (or, after an out-of-memory split, one chunk of it).

    Derived only from the sweep seed, the job and the batch position, so it does not depend on which
    batches ran before in this process: a resumed sweep draws exactly the random numbers a fresh one would.
    """
    key = f"{int(seed)}:{job}:{int(batch_index)}"
    if chunk_offset:
        key += f":{int(chunk_offset)}"
    return int(sha256_text(key)[:16], 16) & ((1 << 63) - 1)
