"""Conformance: what makes a registered mixer a candidate (DESIGN §3). One definition, used by
``harness check`` for any registered name (built-in or plug-in), by the test suite, and by ``run`` /
``compare`` before a candidate is trained (a nonconforming candidate is never ranked).

Every check returns a ``CheckResult``: pass, fail or skipped (with the reason), the tolerance and
the worst error measured, and on failure a sentence saying what to fix in a mixer author's words.
The checks run on CPU in float64 where they compare numbers (the two forms must agree to rounding),
at a small size: batch 2, T=40, d_model 32, a chunk size of 16 where the candidate has one (several
chunks and a ragged last one).
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness.mixer import Mixer, count_params, measure_state
from harness.registry import get_candidate

B, T, D = 2, 40, 32
#: parallel vs recurrent, float64: outputs and gradients agree to rounding
FORM_TOLERANCE = 1e-7
#: bf16 / fp16 against fp32, relative norm
LOW_PRECISION_TOLERANCE = 0.1
CAUSAL_AT = 23  # the input position the causality check perturbs
DEFAULT_DTYPES = (torch.bfloat16, torch.float16)
CHECK_NAMES = (
    "builds",
    "shapes",
    "causal",
    "forms agree",
    "gradients agree",
    "low precision",
    "deterministic",
    "gradients finite",
    "state measured",
    "shape errors",
)


@dataclass
class CheckResult:
    check: str
    status: str  # pass | fail | skipped
    detail: str = ""
    worst: float | None = None
    tolerance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["worst"] is not None and not math.isfinite(out["worst"]):
            out["worst"] = None
        return out


class Failed(Exception):
    """A check's finding: the sentence for the author, and the worst error measured."""

    def __init__(self, detail: str, worst: float | None = None) -> None:
        super().__init__(detail)
        self.detail, self.worst = detail, worst


class Skipped(Exception):
    pass


#: where the checks run: CPU (the default, and what the gate before training uses) or a CUDA
#: device (``check_candidate(..., device="cuda")``: the same checks, float64 included, on the GPU)
_DEVICE = torch.device("cpu")


@contextlib.contextmanager
def on_device(device: str | torch.device):
    """Run the checks inside the block on ``device`` (modules and inputs are moved there)."""
    global _DEVICE
    previous, _DEVICE = _DEVICE, torch.device(device)
    try:
        yield
    finally:
        _DEVICE = previous


def build(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> Mixer:
    spec = get_candidate(name)
    overrides = {"chunk_size": 16} if "chunk_size" in spec.hparam_defaults else {}
    torch.manual_seed(seed)
    return spec.build(D, **overrides).to(device=_DEVICE, dtype=dtype)


def inputs(dtype: torch.dtype = torch.float64, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, D, generator=g, dtype=torch.float64).to(device=_DEVICE, dtype=dtype)


def _worst_position(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Largest relative difference of [B, T, ...] tensors, and the time step where it occurs."""
    scale = b.abs().max().clamp_min(1e-12)
    diff = (a - b).abs().flatten(2).amax(dim=(0, 2)) / scale
    t = int(diff.argmax())
    return float(diff[t]), t


# -- the checks -------------------------------------------------------------------------------------
def _builds(name: str) -> str:
    m = build(name)
    n = count_params(m)
    if n == 0:
        raise Failed("the mixer has no trainable parameters: register them as nn.Parameter / submodules")
    return f"{n:,} parameters at d_model={D}"


def _shapes(name: str) -> str:
    m = build(name, torch.float32)
    y = m(inputs(torch.float32))
    if tuple(y.shape) != (B, T, D) or y.dtype != torch.float32:
        raise Failed(f"forward returned {tuple(y.shape)} {y.dtype}; expected {(B, T, D)} float32")
    if not torch.isfinite(y).all():
        raise Failed("forward returned non-finite values in float32 on random inputs")
    return "[B, T, d_model] in, same out, float32, finite"


def _causal(name: str) -> tuple[str, float]:
    m = build(name).eval()
    x = inputs()
    x2 = x.clone()
    x2[:, CAUSAL_AT:] = torch.randn_like(x2[:, CAUSAL_AT:]) * 3
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    before = (y[:, :CAUSAL_AT] - y2[:, :CAUSAL_AT]).abs().amax(dim=(0, 2))
    worst = float(before.max())
    if worst > 1e-10:
        t = int((before > 1e-10).nonzero()[0])
        raise Failed(
            f"output at t={t} changed when inputs from t={CAUSAL_AT} on changed: the parallel form is not "
            "causal (it reads the future; check masks, reversed cumsums, padding of convolutions)",
            worst,
        )
    if torch.allclose(y[:, CAUSAL_AT:], y2[:, CAUSAL_AT:]):
        raise Failed("the output does not change when the input changes: the mixer ignores its input", 0.0)
    return f"outputs before t={CAUSAL_AT} unchanged when later inputs change", worst


def _recurrent(m: Mixer, x: torch.Tensor) -> torch.Tensor:
    try:
        return m.forward_recurrent(x)
    except NotImplementedError as e:
        raise Failed(f"no recurrent form: {e} (init_state and step are required)") from None


def _forms_agree(name: str) -> tuple[str, float]:
    m = build(name).eval()
    x = inputs()
    with torch.no_grad():
        par, rec = m(x), _recurrent(m, x)
    worst, t = _worst_position(par, rec)
    if not worst <= FORM_TOLERANCE:
        raise Failed(
            f"parallel and recurrent outputs differ by {worst:.1e} at t={t} (tolerance {FORM_TOLERANCE:g}): "
            "does `step` apply the same transition, gates and readout as `forward`?",
            worst,
        )
    return "forward == forward_recurrent in float64", worst


def _gradients_agree(name: str) -> tuple[str, float]:
    m = build(name)
    x = inputs()
    cot = torch.randn(B, T, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(_DEVICE)

    def grads(form: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        (form(xi) * cot).sum().backward()
        params = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return xi.grad.clone(), params

    gx_par, gp_par = grads(m.forward)
    gx_rec, gp_rec = grads(lambda xi: _recurrent(m, xi))
    worst, t = _worst_position(gx_par, gx_rec)
    if not worst <= FORM_TOLERANCE:
        raise Failed(
            f"input gradients of the parallel and recurrent forms differ by {worst:.1e} at t={t} "
            f"(tolerance {FORM_TOLERANCE:g}): their backward passes compute different functions "
            "(e.g. different straight-through estimators or detached terms in one form)",
            worst,
        )
    for pname in sorted(set(gp_par) | set(gp_rec)):
        a, b = gp_par.get(pname), gp_rec.get(pname)
        if a is None or b is None:
            raise Failed(f"parameter {pname!r} gets a gradient in only one of the two forms", math.inf)
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        if not err <= FORM_TOLERANCE:
            raise Failed(
                f"gradients of parameter {pname!r} differ by {err:.1e} between the parallel and recurrent "
                f"forms (tolerance {FORM_TOLERANCE:g})",
                err,
            )
        worst = max(worst, err)
    return "input and parameter gradients agree in float64", worst


def _low_precision(name: str, dtypes: tuple[torch.dtype, ...]) -> tuple[str, float]:
    cls = get_candidate(name).cls
    checked, worst = [], 0.0
    for dtype in dtypes:
        if dtype not in getattr(cls, "supported_dtypes", ()):
            continue
        m = build(name, torch.float32)
        with torch.no_grad():
            ref = m(inputs(torch.float32))
            y = m.to(dtype)(inputs(dtype))
        if y.dtype != dtype or tuple(y.shape) != (B, T, D):
            raise Failed(f"in {dtype} forward returned {tuple(y.shape)} {y.dtype}")
        if not torch.isfinite(y).all():
            raise Failed(f"non-finite output in {dtype} on random inputs", math.inf)
        rel = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-6))
        worst = max(worst, rel)
        if rel > LOW_PRECISION_TOLERANCE:
            raise Failed(
                f"{dtype} output is {rel:.3f} away from float32 (relative norm, tolerance "
                f"{LOW_PRECISION_TOLERANCE}): accumulate in float32 or drop {dtype} from supported_dtypes",
                rel,
            )
        checked.append(str(dtype).replace("torch.", ""))
    if not checked:
        raise Skipped("no low-precision dtype is in the candidate's supported_dtypes")
    return f"{', '.join(checked)} within {LOW_PRECISION_TOLERANCE} of float32", worst


def _deterministic(name: str) -> str:
    x = inputs(torch.float32)
    y1 = build(name, torch.float32, seed=3)(x)
    y2 = build(name, torch.float32, seed=3)(x)
    if not torch.equal(y1, y2):
        raise Failed("two builds with the same seed give different outputs: draw randomness from torch's RNG")
    return "same seed, same output"


def _gradients_finite(name: str) -> str:
    m = build(name, torch.float32)
    x = inputs(torch.float32).requires_grad_(True)
    m(x).square().mean().backward()
    if not (torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0):
        raise Failed("the input gradient is zero or non-finite in float32")
    for pname, p in m.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise Failed(f"non-finite gradient in parameter {pname!r}")
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    if dead:
        shown = ", ".join(dead[:6]) + (", ..." if len(dead) > 6 else "")
        raise Failed(
            f"{len(dead)} parameter(s) receive no gradient ({shown}): they do not reach the output "
            "(a modifier's output_gate is unused when a mixer does not end forward/step with "
            "self.readout(o, x))"
        )
    return "finite, nonzero input and parameter gradients"


def _state_measured(name: str) -> str:
    m = build(name, torch.float32)
    try:
        s8, s16 = measure_state(m, 8), measure_state(m, 16)
    except NotImplementedError as e:
        raise Failed(f"no recurrent form to measure the state with: {e}") from None
    if s8["state_bytes"] <= 0:
        raise Failed("init_state/step return no tensors: the state cannot be measured")
    if s16["state_bytes"] < s8["state_bytes"]:
        raise Failed("the state shrinks as the sequence grows")
    return f"{s8['state_bytes']:,} B after 8 steps, {s16['state_bytes']:,} B after 16"


def _shape_errors(name: str) -> str:
    m = build(name, torch.float32)
    for bad, words in (
        (torch.zeros(B, T, D + 1, device=_DEVICE), "d_model"),
        (torch.zeros(T, D, device=_DEVICE), "batch, time, d_model"),
    ):
        try:
            m(bad)
        except ValueError as e:
            if words not in str(e):
                raise Failed(
                    f"a wrong input shape raised ValueError({e!r}), which does not name {words!r}"
                ) from None
        else:
            raise Failed(
                f"input of shape {tuple(bad.shape)} was accepted: call Mixer.__init__ (it checks shapes)"
            )
    return "wrong shapes are clear ValueErrors"


def _checks(name: str, dtypes: tuple[torch.dtype, ...]) -> dict[str, tuple[Callable[[], Any], float | None]]:
    """Each check of ``name``: the function and its tolerance, in ``CHECK_NAMES`` order."""
    return {
        "builds": (lambda: _builds(name), None),
        "shapes": (lambda: _shapes(name), None),
        "causal": (lambda: _causal(name), 1e-10),
        "forms agree": (lambda: _forms_agree(name), FORM_TOLERANCE),
        "gradients agree": (lambda: _gradients_agree(name), FORM_TOLERANCE),
        "low precision": (lambda: _low_precision(name, dtypes), LOW_PRECISION_TOLERANCE),
        "deterministic": (lambda: _deterministic(name), None),
        "gradients finite": (lambda: _gradients_finite(name), None),
        "state measured": (lambda: _state_measured(name), None),
        "shape errors": (lambda: _shape_errors(name), None),
    }


def run_check(name: str, check: str, dtypes: tuple[torch.dtype, ...] = DEFAULT_DTYPES) -> CheckResult:
    """One check of one candidate (the test suite runs them one by one)."""
    fn, tol = _checks(name, dtypes)[check]
    try:
        out = fn()
        detail, worst = out if isinstance(out, tuple) else (out, None)
        return CheckResult(check, "pass", detail, worst, tol)
    except Failed as f:
        return CheckResult(check, "fail", f.detail, f.worst, tol)
    except Skipped as s:
        return CheckResult(check, "skipped", str(s), None, tol)
    except Exception as e:  # a crash inside a check is a failure of the candidate, said plainly
        where = traceback.extract_tb(e.__traceback__)[-1]
        return CheckResult(
            check, "fail", f"raised {type(e).__name__}: {e} (at {where.filename}:{where.lineno})", None, tol
        )


def check_candidate(
    name: str, dtypes: tuple[torch.dtype, ...] = DEFAULT_DTYPES, device: str = "cpu"
) -> list[CheckResult]:
    """Every check on one registered name, in order; after a failed build the rest are skipped.
    ``device``: where they run (default CPU; ``cuda`` runs the same checks on the GPU)."""
    spec = get_candidate(name)
    if spec.needs_cuda and not torch.cuda.is_available():
        return [CheckResult(c, "skipped", "needs CUDA; this machine has none") for c in CHECK_NAMES]
    results: list[CheckResult] = []
    with on_device(device):
        for check in CHECK_NAMES:
            if results and results[0].status == "fail":
                results.append(CheckResult(check, "skipped", "the candidate does not build"))
            else:
                results.append(run_check(name, check, dtypes))
    return results


def conforms(results: list[CheckResult]) -> bool:
    return all(r.status != "fail" for r in results)


# -- the gate before training ---------------------------------------------------------------------
def conformance_identity(name: str) -> dict[str, Any]:
    """What fixes a candidate's conformance verdict: its sources and resolved hyperparameters, and
    the checks' own sources. A record under this identity is reused until one of them changes."""
    from harness.identity import closure, hash_files, source_files

    spec = get_candidate(name)
    return {
        "kind": "conformance",
        "candidate": name,
        "hparams": spec.validate_hparams({}),
        "candidate_source": spec.source_hash(),
        "checks_source": hash_files(source_files(closure(["harness.conformance"]))),
        "device": "cpu",
    }


def _check_in_worker(name: str) -> list[dict[str, Any]]:
    """Worker entry point (a fresh process: plug-ins load there too)."""
    return [r.as_dict() for r in check_candidate(name)]


def _check_isolated(name: str) -> list[CheckResult]:
    """``check_candidate`` in a child process, so a candidate that crashes the interpreter
    (a segfault in a plug-in's kernel) is a failed check, not a dead command."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return [CheckResult(**r) for r in pool.submit(_check_in_worker, name).result()]
        except BrokenProcessPool:
            dead = "the process checking it died (a crash in native code, e.g. a segfault, or it was killed)"
            return [CheckResult("builds", "fail", dead)] + [
                CheckResult(c, "skipped", "the candidate crashed the checks") for c in CHECK_NAMES[1:]
            ]


def conformance_record(name: str, store, force: bool = False, isolated: bool = False) -> dict[str, Any]:
    """The stored conformance verdict of ``name``, checked now if there is none for its current
    sources (once per candidate source hash); ``isolated`` runs the checks in a child process."""
    from harness.identity import run_id_for

    identity = conformance_identity(name)
    run_id = run_id_for(identity)
    if not force:
        existing = store.get("conformance", run_id)
        if existing is not None:
            return existing
    results = _check_isolated(name) if isolated else check_candidate(name)
    record = {
        "kind": "conformance",
        "run_id": run_id,
        "identity": identity,
        "candidate": name,
        "status": "conforms" if conforms(results) else "nonconforming",
        "failed": [r.check for r in results if r.status == "fail"],
        "results": [r.as_dict() for r in results],
    }
    store.save(record)
    return record


def stored_verdict(name: str, store) -> dict[str, Any] | None:
    """The conformance record of ``name`` for its current sources, if one is stored (no checking)."""
    from harness.identity import run_id_for

    try:
        return store.get("conformance", run_id_for(conformance_identity(name)))
    except (KeyError, ValueError):
        return None
