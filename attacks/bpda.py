"""BPDA: Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, 2018).

A defense with a non-differentiable step (bit-depth reduction, JPEG, median filtering, a lookup table)
gives attacks a zero or missing gradient, so plain gradient attacks "fail" and the defense looks robust
when it is not. BPDA keeps the forward pass exactly as it is and, in the backward pass only, replaces the
step by the gradient of a differentiable substitute -- the identity by default, which is the right
approximation for any step that keeps its output close to its input (``g(x) ~ x``).

The substitute lives in the autograd graph, so every gradient attack -- robustkit's own and the
torchattacks-wrapped ones, which just call ``model(x)`` and ``backward()`` -- uses it with no attack-side
change. A model that contains BPDA parts reports them through :func:`bpda_parts` (each :class:`BPDA`
module has ``bpda = True``; a model may also set ``bpda = True`` or a list of part names itself), so that
a leaderboard can say that its numbers were obtained with BPDA.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from robustkit.errors import RobustkitError

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class NonDifferentiableModelError(RobustkitError):
    """The model's output is not connected to its input in the autograd graph, so no gradient exists."""


class _BPDAFunction(torch.autograd.Function):
    """Forward: ``fn(x)``. Backward: the vector-Jacobian product of ``substitute`` at ``x`` (identity if None).

    A custom autograd function rather than the straight-through expression
    ``substitute(x) + (fn(x) - substitute(x)).detach()``: that expression returns ``fn(x)`` only up to
    float rounding (``a + (b - a) != b`` in floating point), so the defended model would predict from
    slightly different values than the defense computes -- and every verdict must be on the real forward
    pass. Here the forward output *is* ``fn(x)``, bit for bit, and the substitute runs only when a
    gradient is actually requested.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: TensorFn,  # type: ignore[override]
                substitute: TensorFn | None) -> torch.Tensor:
        out = fn(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"BPDA: the wrapped step must return a tensor, got {type(out).__name__}")
        if substitute is None and out.shape != x.shape:
            raise RobustkitError(
                f"BPDA: the identity substitute needs a step that keeps the input shape, but {tuple(x.shape)} "
                f"became {tuple(out.shape)}; pass a substitute with the step's output shape"
            )
        ctx.substitute = substitute
        ctx.save_for_backward(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        substitute = ctx.substitute
        if substitute is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            approx = substitute(xg)
            if approx.shape != grad_out.shape:
                raise RobustkitError(
                    f"BPDA: the substitute returned shape {tuple(approx.shape)}, but the step it stands in for "
                    f"returned {tuple(grad_out.shape)}"
                )
            if not approx.requires_grad:
                raise NonDifferentiableModelError("BPDA: the substitute itself is not differentiable")
            (grad_in,) = torch.autograd.grad(approx, xg, grad_out.to(approx.dtype), allow_unused=True)
        if grad_in is None:
            grad_in = torch.zeros_like(x)
        return grad_in, None, None


def bpda(fn: TensorFn, substitute: TensorFn | None = None) -> TensorFn:
    """A function whose forward is ``fn(x)`` and whose backward is the gradient of ``substitute`` (identity if None).

    Use it inside a model's ``forward`` around a non-differentiable step, e.g.
    ``x = bpda(lambda t: torch.round(t * 7) / 7)(x)``.
    """

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return _BPDAFunction.apply(x, fn, substitute)

    wrapped.__name__ = f"bpda_{getattr(fn, '__name__', type(fn).__name__)}"
    wrapped.__doc__ = f"BPDA-wrapped {getattr(fn, '__name__', fn)!r}: exact forward, substitute backward."
    return wrapped


class BPDA(nn.Module):
    """Module wrapper: ``BPDA(step)`` behaves like ``step`` forward and like ``substitute`` (identity) backward.

    Both ``step`` and ``substitute`` may be modules (then they are registered as submodules, so ``.to()``
    and ``state_dict()`` reach them) or plain callables. Gradients do not flow into ``step``'s own
    parameters: BPDA is for attacking a fixed model, not for training one.
    """

    bpda = True

    def __init__(self, step: TensorFn, substitute: TensorFn | None = None) -> None:
        super().__init__()
        self.step = step
        self.substitute = substitute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BPDAFunction.apply(x, self.step, self.substitute)

    def extra_repr(self) -> str:
        if self.substitute is None:
            return "substitute=identity"
        sub = getattr(self.substitute, "__name__", type(self.substitute).__name__)
        return f"substitute={sub}"


def bpda_parts(model: nn.Module) -> list[str]:
    """Names of the parts of ``model`` whose backward pass is a BPDA substitute ([] when none).

    A submodule counts when it has a truthy ``bpda`` attribute (every :class:`BPDA` does); its dotted name
    is reported (``""`` becomes ``"<model>"``). A model may also declare parts itself with
    ``bpda = ["quantize", ...]`` or simply ``bpda = True``.
    """
    parts: list[str] = []
    for name, module in model.named_modules():
        flag = getattr(module, "bpda", False)
        if isinstance(flag, (list, tuple)):
            prefix = f"{name}." if name else ""
            parts.extend(f"{prefix}{p}" for p in flag)
        elif flag:
            parts.append(name or "<model>")
    return list(dict.fromkeys(parts))


def uses_bpda(model: nn.Module) -> bool:
    """True if gradients through ``model`` go through at least one BPDA substitute."""
    return bool(bpda_parts(model))
