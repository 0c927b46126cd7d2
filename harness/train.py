"""One run: a candidate in the fixed backbone, on one task, one seed, one learning rate.

``resolve`` validates a ``RunSpec`` and computes its identity (everything that fixes the result,
``harness.identity``) without training; ``execute`` trains it to a verdict (``harness.training``)
and returns the record (status ``ok``, ``diverged`` or ``failed``) that ``harness.results`` stores.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.allocator import tune_allocator
from harness.environment import environment
from harness.identity import engine_source_hash, run_id_for
from harness.mixer import count_params, measure_state
from harness.registry import get_candidate, get_task
from harness.task import Task
from harness.tiers import TierConfig, get_tier
from harness.training import (
    TRAIN_THREADS,
    build_model,
    final_scores,
    make_splits,
    train_to_verdict,
)

# Bump when the protocol changes in a way that changes results (it is part of every identity).
# 2: train to a verdict (early stopping on valid), held-out sets deduplicated against training.
PROTOCOL_VERSION = "2"
#: training settings that are not part of a single run (they shape the sweep around it)
_SWEEP_SETTINGS = ("lrs", "n_seeds")


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


def task_tier(task_name: str, tier: str, train_overrides: dict[str, Any] | None = None) -> TierConfig:
    """The tier's training settings with the task's own (its step budget, ...) and the user's on top."""
    cls = get_task(task_name).cls
    return get_tier(tier).with_overrides({**cls.train_overrides(tier), **(train_overrides or {})})


def resolve(spec: RunSpec) -> ResolvedRun:
    """Validate every name and value and compute the identity (no training)."""
    cand = get_candidate(spec.candidate)
    task_spec = get_task(spec.task)
    task = task_spec.cls.from_tier(spec.tier, spec.task_overrides)
    tier = task_tier(spec.task, spec.tier, spec.train_overrides)
    hparams = cand.validate_hparams(spec.hparams)
    lr = float(spec.lr if spec.lr is not None else tier.lrs[0])
    train_settings = {k: v for k, v in dataclasses.asdict(tier).items() if k not in _SWEEP_SETTINGS}
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


def record_header(run: ResolvedRun) -> dict[str, Any]:
    """The fields every training record starts with: what the run is, and where it ran."""
    spec = run.spec
    return {
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


def failed_record(run: ResolvedRun, error: str, **extra: Any) -> dict[str, Any]:
    """A ``failed`` record of a run that produced none itself: its worker died (``crash``: signal or
    exit code, node), or could not run it. Written by the driver, from what it knows of the run."""
    record = record_header(run)
    record.update(status="failed", error=error, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
    return record


def execute(run: ResolvedRun) -> dict[str, Any]:
    """Train to a verdict and evaluate; always returns a record (status ok, diverged or failed)."""
    spec, tier, task = run.spec, run.tier, run.task
    record = record_header(run)
    tune_allocator()
    t0, cpu0 = time.perf_counter(), time.process_time()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        cand = get_candidate(spec.candidate)
        model = build_model(
            lambda: cand.build(tier.d_model, **run.hparams), task, spec.task, tier, spec.seed, spec.device
        )
        mixer = model.mixers()[0]
        record["params_total"] = count_params(model)
        record["params_mixer"] = count_params(mixer)
        record["state"] = measure_state(mixer, task.seq_len)
        splits = make_splits(task, spec.task, tier, spec.seed)
        record["held_out"] = {"train_examples": splits.train_examples, "dropped_as_seen": splits.dropped()}
        t_train = time.perf_counter()
        outcome = train_to_verdict(model, task, spec.task, tier, run.lr, spec.seed, splits, spec.device)
        train_s = time.perf_counter() - t_train
        record.update(
            status=outcome.status,
            steps_budget=tier.steps,
            steps_done=outcome.steps_done,
            steps_to_solve=outcome.steps_to_solve,
            solved=outcome.steps_to_solve is not None,
            train_seconds=train_s,
            train_tokens_per_s=tier.batch_size * task.seq_len * outcome.steps_done / max(train_s, 1e-9),
            loss_curve=outcome.loss_curve,
            check_curve=outcome.check_curve,
            final_loss=outcome.loss_curve[-1][1] if outcome.loss_curve else None,
        )
        if outcome.status == "diverged":
            record["diverged_at_step"] = outcome.diverged_at_step
        else:
            record.update(final_scores(model, task, splits, spec.device))
    except Exception as e:  # a candidate that raises is a result too: recorded, the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=8)
    finally:
        torch.set_num_threads(previous_threads)
    record["wall_seconds"] = time.perf_counter() - t0
    record["cpu_seconds"] = time.process_time() - cpu0  # the run's cost where other work shares the cores
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record
