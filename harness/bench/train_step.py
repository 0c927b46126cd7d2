"""Per-step training cost of candidates, as a ratio to a baseline timed in the same process.

A leaderboard sweep's wall time is (steps x per-step cost) summed over candidates, and at the quick
tier's sizes (d 64, one block, batch 32, T 16-64, one thread) a step is dominated by per-op dispatch,
not FLOPs: this measures exactly what the sweep pays. Each candidate's model is built as
``harness.train`` builds it (``build_model``, ``_optimizer``); a step is data generation,
forward, cross-entropy, backward, clipping and AdamW. Candidates are stepped in interleaved rounds
(A B C A B C ...) so slow drift of a shared machine moves every candidate alike, and each is reported
as median step time / the baseline's median step time (thread CPU time with one thread).

    python -m harness.bench.train_step --candidates softmax,pd-ssm,dplr --task mqar --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from harness.allocator import tune_allocator
from harness.task import IGNORE
from harness.train import RunSpec, _optimizer, build_model, resolve, split_seed


def make_step(candidate: str, task: str, tier: str, task_overrides: dict | None = None) -> Callable[[], None]:
    """One training step of ``candidate`` on ``task`` as ``harness.train.execute`` runs it."""
    run = resolve(RunSpec(candidate, task, tier=tier, task_overrides=task_overrides or {}))
    model = build_model(run)
    opt = _optimizer(model, run.lr, run.tier.weight_decay)
    gen = torch.Generator().manual_seed(split_seed(task, "train", 0))

    def step() -> None:
        b = run.task.generate(run.tier.batch_size, gen)
        logits = model(b.inputs)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), b.targets.reshape(-1), ignore_index=IGNORE
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.tier.grad_clip)
        opt.step()

    return step


def measure(
    candidates: Sequence[str],
    task: str = "mqar",
    tier: str = "quick",
    rounds: int = 15,
    steps_per_round: int = 3,
    warmup: int = 3,
    task_overrides: dict | None = None,
) -> dict[str, float]:
    """Median seconds per step of each candidate, from interleaved rounds (one thread)."""
    tune_allocator()  # as training does
    torch.set_num_threads(1)
    steps = {c: make_step(c, task, tier, task_overrides) for c in candidates}
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {c: [] for c in candidates}
    for _ in range(rounds):
        for c, fn in steps.items():
            t0 = time.thread_time()
            for _ in range(steps_per_round):
                fn()
            samples[c].append((time.thread_time() - t0) / steps_per_round)
    return {c: statistics.median(s) for c, s in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", required=True, help="comma-separated names")
    p.add_argument("--baseline", default="softmax")
    p.add_argument("--task", default="mqar")
    p.add_argument("--tier", default="quick")
    p.add_argument("--seq-len", type=int, help="override the task's training length")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    names = [args.baseline] + [c for c in args.candidates.split(",") if c and c != args.baseline]
    overrides = {"seq_len": args.seq_len} if args.seq_len else None
    med = measure(names, args.task, args.tier, args.rounds, task_overrides=overrides)
    base = med[args.baseline]
    print(f"| candidate | ms / step | x {args.baseline} |\n|---|---|---|")
    for c in names:
        print(f"| {c} | {1e3 * med[c]:.1f} | {med[c] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
