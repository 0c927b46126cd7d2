"""One training run: a candidate in the fixed backbone, on one task, one seed, one learning rate.

The protocol (DESIGN §4) is identical for every candidate: AdamW, linear warmup then cosine decay,
fixed steps per tier, gradient clipping, fresh training batches from the train seed; the valid and
test sets come from seeds disjoint from training. A run's ``identity`` is everything that fixes its
result; its hash is the record's ``run_id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.allocator import tune_allocator
from harness.backbone import SequenceModel, count_correct, set_training_progress
from harness.environment import environment
from harness.mixer import count_params, measure_state
from harness.registry import get_candidate, get_task
from harness.results import run_id_for
from harness.task import IGNORE, Task
from harness.tiers import TierConfig, get_tier

# Bump when the protocol changes in a way that changes results (it is part of every identity).
PROTOCOL_VERSION = "1"
# Training runs single-threaded: results then do not depend on the machine's core count, and a
# sweep uses its cores by running that many runs at once (tiny models gain little from threads).
TRAIN_THREADS = 1
_ENGINE_FILES = ("backbone.py", "train.py", "task.py")


def engine_source_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _ENGINE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def split_seed(task: str, split: str, seed: int) -> int:
    """Disjoint, stable data seeds per (task, split, run seed)."""
    digest = hashlib.sha256(f"{task}|{split}|{seed}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


@dataclass(frozen=True)
class RunSpec:
    candidate: str
    task: str
    tier: str = "quick"
    seed: int = 0
    lr: float | None = None  # None: the tier's first learning rate
    hparams: dict[str, Any] = field(default_factory=dict)
    task_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


@dataclass
class ResolvedRun:
    spec: RunSpec
    tier: TierConfig
    task: Task
    hparams: dict[str, Any]
    lr: float
    identity: dict[str, Any]
    run_id: str


def resolve(spec: RunSpec) -> ResolvedRun:
    """Validate every name and value and compute the identity (no training)."""
    cand = get_candidate(spec.candidate)
    task_spec = get_task(spec.task)
    task = task_spec.cls.from_tier(spec.tier, spec.task_overrides)
    tier = get_tier(spec.tier)
    tier = tier.with_overrides({**task_spec.cls.train_overrides(spec.tier), **spec.train_overrides})
    hparams = cand.validate_hparams(spec.hparams)
    lr = float(spec.lr if spec.lr is not None else tier.lrs[0])
    train_settings = {k: v for k, v in dataclasses.asdict(tier).items() if k not in ("lrs", "n_seeds")}
    identity = {
        "kind": "train",
        "protocol": PROTOCOL_VERSION,
        "engine_source": engine_source_hash(),
        "candidate": spec.candidate,
        "hparams": hparams,
        "candidate_source": cand.source_hash(),
        "task": spec.task,
        "task_config": task.config_dict(),
        "task_source": task_spec.source_hash(),
        "tier": spec.tier,
        "train": train_settings,
        "lr": lr,
        "seed": spec.seed,
        "device": torch.device(spec.device).type,
        "threads": TRAIN_THREADS,
    }
    return ResolvedRun(spec, tier, task, hparams, lr, identity, run_id_for(identity))


def lr_at(step: int, total: int, warmup_frac: float, base: float) -> float:
    warmup = max(1, int(round(total * warmup_frac)))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_model(run: ResolvedRun) -> SequenceModel:
    cand = get_candidate(run.spec.candidate)
    torch.manual_seed(split_seed(run.spec.task, "model", run.spec.seed))
    return SequenceModel(
        run.task.vocab_size,
        run.tier.d_model,
        run.tier.n_layers,
        run.tier.mlp_ratio,
        lambda: cand.build(run.tier.d_model, **run.hparams),
        short_conv=run.tier.short_conv,
    ).to(run.spec.device)


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, n: int, batch: int, seed: int, device: str, length=None):
    """Token and sequence accuracy on ``n`` examples from ``seed`` (at test ``length`` if given).

    At a test length the ``beyond_*`` accuracies count only positions at or after the training
    length — positions whose labels the model never trained on — so in-distribution prefixes do
    not flatter extrapolation. The leaderboard's ``extrap`` column uses ``beyond_token_acc``.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(2, 4, dtype=torch.long)
    done = 0
    while done < n:
        b = task.generate(min(batch, n - done), gen, length=length)
        logits = model(b.inputs.to(device))
        targets = b.targets.to(device)
        counts[0] += torch.tensor(count_correct(logits, targets, IGNORE))
        if length is not None:
            beyond = targets.clone()
            beyond[:, : task.seq_len] = IGNORE
            counts[1] += torch.tensor(count_correct(logits, beyond, IGNORE))
        done += b.inputs.shape[0]
    model.train()
    out = {
        "token_acc": _ratio(counts[0, 0], counts[0, 1]),
        "seq_acc": _ratio(counts[0, 2], counts[0, 3]),
        "n": n,
    }
    if length is not None:
        out["beyond_token_acc"] = _ratio(counts[1, 0], counts[1, 1])
        out["beyond_seq_acc"] = _ratio(counts[1, 2], counts[1, 3])
    return out


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num) / max(int(den), 1)


def execute(run: ResolvedRun, on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train and evaluate; always returns a record (status ok, diverged or failed)."""
    spec, tier, task = run.spec, run.tier, run.task
    record: dict[str, Any] = {
        "kind": "train",
        "run_id": run.run_id,
        "identity": run.identity,
        "candidate": spec.candidate,
        "task": spec.task,
        "tier": spec.tier,
        "seed": spec.seed,
        "lr": run.lr,
        "environment": {**environment(spec.device), "threads": TRAIN_THREADS},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tune_allocator()
    t0 = time.perf_counter()
    losses: list[tuple[int, float]] = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        model = build_model(run)
        mixer = model.mixers()[0]
        record["params_total"] = count_params(model)
        record["params_mixer"] = count_params(mixer)
        record["state"] = measure_state(mixer, task.seq_len)
        opt = _optimizer(model, run.lr, tier.weight_decay)
        gen = torch.Generator().manual_seed(split_seed(spec.task, "train", spec.seed))
        log_every = max(1, tier.steps // 50)
        status = "ok"
        steps_done = 0
        for step in range(tier.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, tier.steps, tier.warmup_frac, run.lr)
            set_training_progress(model, step / max(1, tier.steps - 1))
            b = task.generate(tier.batch_size, gen)
            logits = model(b.inputs.to(spec.device))
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                b.targets.to(spec.device).reshape(-1),
                ignore_index=IGNORE,
            )
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                status = "diverged"
                record["diverged_at_step"] = step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tier.grad_clip)
            opt.step()
            steps_done += 1
            if step % log_every == 0 or step == tier.steps - 1:
                losses.append((step, loss_value))
            if on_step is not None:
                on_step(step, loss_value)
        train_s = time.perf_counter() - t0
        record["train_seconds"] = train_s
        record["steps_done"] = steps_done
        record["train_tokens_per_s"] = tier.batch_size * task.seq_len * steps_done / max(train_s, 1e-9)
        record["loss_curve"] = losses
        record["final_loss"] = losses[-1][1] if losses else None
        record["status"] = status
        if status == "ok":
            set_training_progress(model, 1.0)
            record["valid"] = evaluate(
                model,
                task,
                tier.n_valid,
                tier.eval_batch,
                split_seed(spec.task, "valid", spec.seed),
                spec.device,
            )
            test_seed = split_seed(spec.task, "test", spec.seed)
            record["test"] = evaluate(model, task, tier.n_test, tier.eval_batch, test_seed, spec.device)
            record["test_lengths"] = {
                str(L): evaluate(
                    model, task, tier.n_test, tier.eval_batch, test_seed + L, spec.device, length=L
                )
                for L in task.test_lengths()
            }
    except Exception as e:  # a candidate that raises is a result too: recorded, the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=8)
        record["loss_curve"] = losses
    finally:
        torch.set_num_threads(previous_threads)
    record["wall_seconds"] = time.perf_counter() - t0
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record
