"""The official Linf ``SquareAttack`` vs robustkit's native one: CPU seconds, passes, and that they agree.

    python benchmarks/square_native_speed.py                         # mnist-cnn-distilled, 32 images
    python benchmarks/square_native_speed.py --model mnist-lenet5-pgd --n 8 --queries 1000

One process, one torch thread, the images and models of ``benchmarks/autoattack_speed.py``. Each round runs
``SquareAttack(...).perturb`` of the installed official package (AutoAttack's settings: p_init 0.8, margin
loss, no rescaled schedule, seed 0) and ``robustkit.attacks._square_native.perturb`` with the same settings on
the same batch, alternating (``--rounds`` times each), and prints the CPU seconds of this process
(``time.process_time``) for each, the forward sample-passes and whether the returned tensors are equal bit
for bit (they must be; the script exits 1 otherwise). This is Square on the whole batch, not only on the
images AutoAttack's earlier components leave; images the initial stripes or a few queries break cost little
in both, so the difference comes from the images that survive many queries.
"""
from __future__ import annotations

import argparse
import time

import torch

import autoattack_speed as bench  # benchmarks/ is on sys.path when this file is run as a script
from robustkit.attacks import _aa_official, _square_native
from robustkit.passes import PassCounter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mnist-cnn-distilled", choices=sorted(bench.MODELS))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dataset, eps = bench.MODELS[args.model]
    model = bench.build_model(args.model, bench.SHARED, bench.ROOT / "runs" / "mnist-defenses" / "models")
    x, y = bench.images(dataset, args.n, bench.SHARED)
    package = _aa_official.require_official()

    def official() -> torch.Tensor:
        attack = package.square.SquareAttack(model, norm="Linf", n_queries=args.queries, eps=eps, p_init=0.8,
                                             n_restarts=1, seed=0, verbose=False, resc_schedule=False)
        return attack.perturb(x, y)

    def native() -> torch.Tensor:
        return _square_native.perturb(model, x, y, eps=eps, n_queries=args.queries, n_restarts=1, p_init=0.8,
                                      seed=0)

    results: dict[str, list[torch.Tensor]] = {"official": [], "native": []}
    for _ in range(args.rounds):
        for name, fn in (("official", official), ("native", native)):
            with PassCounter(model) as counter:
                start = time.process_time()
                adv = fn()
                cpu = time.process_time() - start
            with torch.no_grad():
                broken = int((model(adv).argmax(1) != y).sum())
            results[name].append(adv)
            print(f"{args.model} n={args.n} queries={args.queries} {name:8s} {cpu:6.2f} CPU s  "
                  f"{counter.forward} forward passes  {broken} broken", flush=True)
    same = all(torch.equal(a.view(torch.int32), b.view(torch.int32))
               for a, b in zip(results["official"], results["native"]))
    print("returned tensors equal bit for bit:", same)
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
