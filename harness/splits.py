"""Train / valid / test data that share no example.

Every split draws from its own seed (``split_seed``), and on top of that the held-out splits are
*deduplicated against the training stream*: the exact inputs of every training example a run could
see (its whole step budget, replayed from the train seed) are hashed, and a valid or test example
whose inputs match one of them is dropped and replaced by a fresh draw. So a test score never
counts an example the model was trained on, however small the task's input space is (short
parity strings, S5 words over two generators). Examples at the longer test lengths cannot occur in
training and are not filtered. If the training stream covers (almost) the whole input space, no
disjoint held-out set exists and ``HeldOutExhausted`` says so rather than testing on training data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.task import Batch, Task

_HASH_WEIGHTS_SEED = 20261130
#: give up after drawing this many times the examples asked for
_MAX_DRAW_FACTOR = 64


class HeldOutExhausted(ValueError):
    """The training stream covers (nearly) every possible input: no disjoint held-out set."""


def split_seed(task: str, split: str, seed: int) -> int:
    """Disjoint, stable data seeds per (task, split, run seed)."""
    digest = hashlib.sha256(f"{task}|{split}|{seed}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


def train_generator(task: str, seed: int) -> torch.Generator:
    """The generator every training batch of (task, seed) is drawn from, in order."""
    return torch.Generator().manual_seed(split_seed(task, "train", seed))


def row_hashes(inputs: Tensor) -> Tensor:
    """``[n]`` int64: a 64-bit hash of each row of ``inputs`` (``[n, T]`` int64), for set membership.

    A random linear form over the tokens (wrapping int64 arithmetic) with weights fixed by one seed
    and a second multiplier per position; two different rows collide with probability ~2^-60.
    """
    n, T = inputs.shape
    gen = torch.Generator().manual_seed(_HASH_WEIGHTS_SEED + T)
    w1 = torch.randint(-(2**62), 2**62, (T,), generator=gen, dtype=torch.long)
    w2 = torch.randint(-(2**62), 2**62, (T,), generator=gen, dtype=torch.long)
    x = inputs.to(torch.long).cpu() + 1
    return (x * w1).sum(dim=1) ^ ((x * x) * w2).sum(dim=1)


def training_stream_hashes(task: Task, task_name: str, seed: int, steps: int, batch_size: int) -> Tensor:
    """Sorted unique hashes of every training example a run of ``steps`` steps could see."""
    gen = train_generator(task_name, seed)
    hashes = [row_hashes(task.generate(batch_size, gen).inputs) for _ in range(steps)]
    if not hashes:
        return torch.empty(0, dtype=torch.long)
    return torch.unique(torch.cat(hashes))


@dataclass(frozen=True)
class HeldOut:
    """A held-out set: batches of at most ``eval_batch`` examples, and how many draws were dropped."""

    batches: tuple[Batch, ...]
    n: int
    dropped: int
    length: int | None = None

    def head(self, n: int) -> HeldOut:
        """The first ``n`` examples (the early-stopping checks use a prefix of the valid set)."""
        out, left = [], n
        for b in self.batches:
            if left <= 0:
                break
            k = min(left, b.inputs.shape[0])
            out.append(Batch(b.inputs[:k], b.targets[:k]))
            left -= k
        return HeldOut(tuple(out), n - max(left, 0), 0, self.length)


def held_out(
    task: Task,
    n: int,
    seed: int,
    eval_batch: int,
    exclude: Tensor | None = None,
    length: int | None = None,
) -> HeldOut:
    """``n`` examples drawn from ``seed`` (at test ``length`` if given), minus any whose inputs hash
    into ``exclude`` (the training stream's hashes)."""
    gen = torch.Generator().manual_seed(seed)
    kept_inputs: list[Tensor] = []
    kept_targets: list[Tensor] = []
    have, drawn, dropped = 0, 0, 0
    while have < n:
        if drawn >= _MAX_DRAW_FACTOR * n:
            raise HeldOutExhausted(
                f"{task.name}: after {drawn} draws only {have} of {n} held-out examples are absent from the "
                "training stream; the task's input space is too small for its step budget (make the task "
                "larger or the budget smaller)"
            )
        b = task.generate(min(eval_batch, 4 * (n - have)), gen, length=length)
        drawn += b.inputs.shape[0]
        keep = torch.ones(b.inputs.shape[0], dtype=torch.bool)
        if exclude is not None and exclude.numel() and length is None:
            keep = ~torch.isin(row_hashes(b.inputs), exclude)
        dropped += int((~keep).sum())
        kept_inputs.append(b.inputs[keep])
        kept_targets.append(b.targets[keep])
        have += int(keep.sum())
    inputs = torch.cat(kept_inputs)[:n]
    targets = torch.cat(kept_targets)[:n]
    batches = tuple(
        Batch(inputs[i : i + eval_batch], targets[i : i + eval_batch]) for i in range(0, n, eval_batch)
    )
    return HeldOut(batches, n, dropped, length)
