"""Training to a verdict: the loop and the evaluation every candidate gets, identically.

AdamW, linear warmup then cosine decay over the task's step budget, gradient clipping, fresh
training batches from the train seed. Every ``eval_every`` steps the *selection score* is measured
on a prefix of the valid set; once it reaches ``solve_threshold`` the task is solved and training
stops (``steps_to_solve`` records when: a sample-efficiency figure). A run that never gets there
trains its whole budget. Then the full valid and test sets are scored.

The selection score is what ranks the task, measured on valid: test-set token accuracy's valid
twin for tasks without a length axis; for tasks with one, accuracy at the longer test lengths
counting only positions beyond the training length (extrapolation is what state tracking is
about, and in-distribution accuracy is often solved by shortcuts). The learning rate is chosen on
the same score (``harness.verdict``), so selection and ranking agree.

This module and what it imports are the engine part of every run's identity (``harness.identity``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from harness.backbone import SequenceModel, count_correct, set_training_progress
from harness.splits import HeldOut, held_out, split_seed, train_generator, training_stream_hashes
from harness.task import IGNORE, Task
from harness.tiers import TierConfig

# Training runs single-threaded: results then do not depend on the machine's core count, and a
# sweep uses its cores by running that many runs at once (tiny models gain little from threads).
TRAIN_THREADS = 1


def build_model(
    make_mixer: Callable[[], torch.nn.Module],
    task: Task,
    task_name: str,
    tier: TierConfig,
    seed: int,
    device: str,
) -> SequenceModel:
    torch.manual_seed(split_seed(task_name, "model", seed))
    return SequenceModel(
        task.vocab_size, tier.d_model, tier.n_layers, tier.mlp_ratio, make_mixer, short_conv=tier.short_conv
    ).to(device)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def lr_at(step: int, total: int, warmup_frac: float, base: float) -> float:
    warmup = max(1, int(round(total * warmup_frac)))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- data ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Splits:
    """The held-out sets of one (task, seed): in distribution and at each longer test length."""

    valid: HeldOut
    test: HeldOut
    valid_lengths: dict[int, HeldOut]
    test_lengths: dict[int, HeldOut]
    train_examples: int  # distinct training examples the held-out sets were deduplicated against

    def check_sets(self, n: int) -> tuple[HeldOut, dict[int, HeldOut]]:
        """Prefixes of the valid sets that the early-stopping checks score."""
        return self.valid.head(n), {L: h.head(n) for L, h in self.valid_lengths.items()}

    def dropped(self) -> dict[str, int]:
        return {"valid": self.valid.dropped, "test": self.test.dropped}


def make_splits(task: Task, task_name: str, tier: TierConfig, seed: int) -> Splits:
    exclude = training_stream_hashes(task, task_name, seed, tier.steps, tier.batch_size)

    def one(split: str, n: int, length: int | None = None) -> HeldOut:
        name = split if length is None else f"{split}@{length}"
        return held_out(task, n, split_seed(task_name, name, seed), tier.eval_batch, exclude, length)

    return Splits(
        valid=one("valid", tier.n_valid),
        test=one("test", tier.n_test),
        valid_lengths={L: one("valid", tier.n_valid, L) for L in task.test_lengths()},
        test_lengths={L: one("test", tier.n_test, L) for L in task.test_lengths()},
        train_examples=int(exclude.numel()),
    )


# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, data: HeldOut, device: str) -> dict[str, Any]:
    """Token and sequence accuracy on a held-out set.

    At a test length the ``beyond_*`` accuracies count only positions at or after the training
    length — positions whose labels the model never trained on — so in-distribution prefixes do
    not flatter extrapolation.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, 4, dtype=torch.long)
    for b in data.batches:
        logits = model(b.inputs.to(device))
        targets = b.targets.to(device)
        counts[0] += torch.tensor(count_correct(logits, targets, IGNORE))
        if data.length is not None:
            beyond = targets.clone()
            beyond[:, : task.seq_len] = IGNORE
            counts[1] += torch.tensor(count_correct(logits, beyond, IGNORE))
    model.train(was_training)
    out: dict[str, Any] = {
        "token_acc": _ratio(counts[0, 0], counts[0, 1]),
        "seq_acc": _ratio(counts[0, 2], counts[0, 3]),
        "n": data.n,
    }
    if data.length is not None:
        out["beyond_token_acc"] = _ratio(counts[1, 0], counts[1, 1])
        out["beyond_seq_acc"] = _ratio(counts[1, 2], counts[1, 3])
    return out


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num) / max(int(den), 1)


def selection_score(in_dist: dict[str, Any], at_lengths: dict[Any, dict[str, Any]]) -> float:
    """The score that ranks a task: mean beyond-length accuracy over the test lengths where the
    task has them, else in-distribution token accuracy."""
    if at_lengths:
        return sum(v["beyond_token_acc"] for v in at_lengths.values()) / len(at_lengths)
    return in_dist["token_acc"]


# -- the loop --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str = "ok"  # ok | diverged
    steps_done: int = 0
    steps_to_solve: int | None = None
    diverged_at_step: int | None = None
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    check_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, valid selection score)


def train_to_verdict(
    model: SequenceModel,
    task: Task,
    task_name: str,
    tier: TierConfig,
    lr: float,
    seed: int,
    splits: Splits,
    device: str,
) -> Outcome:
    """Train until the valid selection score reaches ``tier.solve_threshold`` or the budget ends."""
    out = Outcome()
    opt = make_optimizer(model, lr, tier.weight_decay)
    gen = train_generator(task_name, seed)
    check_valid, check_lengths = splits.check_sets(tier.n_check)
    log_every = max(1, tier.steps // 50)
    for step in range(tier.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tier.steps, tier.warmup_frac, lr)
        set_training_progress(model, step / max(1, tier.steps - 1))
        b = task.generate(tier.batch_size, gen)
        logits = model(b.inputs.to(device))
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), b.targets.to(device).reshape(-1), ignore_index=IGNORE
        )
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            out.status, out.diverged_at_step = "diverged", step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tier.grad_clip)
        opt.step()
        out.steps_done = step + 1
        if step % log_every == 0 or step == tier.steps - 1:
            out.loss_curve.append((step, loss_value))
        if out.steps_done % tier.eval_every == 0 or out.steps_done == tier.steps:
            score = selection_score(
                evaluate(model, task, check_valid, device),
                {L: evaluate(model, task, h, device) for L, h in check_lengths.items()},
            )
            out.check_curve.append((out.steps_done, score))
            if score >= tier.solve_threshold:
                out.steps_to_solve = out.steps_done
                break
    return out


def final_scores(model: SequenceModel, task: Task, splits: Splits, device: str) -> dict[str, Any]:
    """Every held-out set scored, and the valid selection score the learning rate is chosen on.

    The model is scored as training left it (an annealed candidate at the annealing progress of the
    step it stopped at: the state its early-stopping check saw)."""
    valid = evaluate(model, task, splits.valid, device)
    valid_lengths = {str(L): evaluate(model, task, h, device) for L, h in splits.valid_lengths.items()}
    return {
        "valid": valid,
        "valid_lengths": valid_lengths,
        "valid_score": selection_score(valid, valid_lengths),
        "test": evaluate(model, task, splits.test, device),
        "test_lengths": {str(L): evaluate(model, task, h, device) for L, h in splits.test_lengths.items()},
    }
