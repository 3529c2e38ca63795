"""Train-mode or batch dependence: a sample's prediction must not depend on the other samples in its batch.

The engine evaluates models in eval mode, but a layer that ignores that flag (``BatchNorm`` with
``track_running_stats=False``, a custom layer normalising over the batch, a model that switches itself to
train mode) computes statistics over the batch: its robust accuracy then depends on the batch size and on
which samples were attacked together, and an attack can "win" by choosing the other samples. The check
predicts a few samples one at a time and inside a batch of other samples and compares the logits.
"""
from __future__ import annotations

import torch

from .autoattack_flags import _same
from .base import CheckContext, CheckResult

ALONE = 8           # samples predicted one at a time
BATCH = 32          # the batch they are compared in
RTOL, ATOL = 1e-3, 1e-4


def check_batch_dependence(ctx: CheckContext) -> list[CheckResult]:
    if "passes" in ctx.cache:
        passes = ctx.cache["passes"]
        if not _same(passes[0], passes[1]):
            return [CheckResult("batch-dependence", False, "randomized model: batch comparison is not meaningful",
                                applicable=False)]
    x, _ = ctx.head(BATCH)
    if x.shape[0] < 2:
        return [CheckResult("batch-dependence", False, "fewer than 2 samples", applicable=False)]
    n = min(ALONE, x.shape[0])
    with torch.no_grad():
        batched = ctx.model(x).float()[:n]
        alone = torch.cat([ctx.model(x[i:i + 1]).float() for i in range(n)])
        # the same samples inside a batch of different companions (reversed order of the rest)
        mixed = ctx.model(torch.cat([x[:n], x[n:].flip(0)])).float()[:n]
    differ = ~torch.isclose(alone, batched, rtol=RTOL, atol=ATOL).all(dim=1)
    differ |= ~torch.isclose(mixed, batched, rtol=RTOL, atol=ATOL).all(dim=1)
    pred_changed = int((alone.argmax(1) != batched.argmax(1)).sum())
    k = int(differ.sum())
    training = [name or "(root)" for name, m in ctx.model.named_modules() if m.training]
    fired = k > 0
    msg = (f"outputs of {k}/{n} samples change with the batch they are in ({pred_changed} predictions change): the "
           f"model uses batch statistics (BatchNorm without running stats, or train mode)"
           + (f"; modules in train mode: {', '.join(training[:5])}" if training else "")
           + "; fix the model (eval mode, running statistics)" if fired else "outputs do not depend on the batch")
    return [CheckResult("batch-dependence", fired, msg, details={"samples": n, "differ": k,
                                                                 "predictions_changed": pred_changed})]
