"""Where a sweep's runs execute: in this process, in local worker processes, or on a Ray cluster.

The sweep loop (``harness.sweep``) owns the queue, the cells and the store; an executor only runs
runs. Its interface is small:

- ``capacity()``: how many runs it can have in flight now (the loop keeps that many submitted, so
  its longest-first order holds, and follow-ups join the queue in their place);
- ``submit(run) -> Future``: start a ``ResolvedRun``; the future's result is an ``Outcome``: the run's
  record (from ``harness.train.execute``), or what is known of a worker that died while running
  it (signal or exit code, node, pid), or an error that kept the worker from running it;
- ``close(cancel)``: stop; with ``cancel`` the runs in flight are abandoned (nothing is recorded).

Workers return records and the driver writes them (``RecordStore.save``), so a cluster needs no
shared filesystem, and a crash in a worker never leaves half a record.

Executors:

- ``InlineExecutor``: in this process, one run at a time (``--jobs 1``: the debugging mode; a crash in
  native code ends the command, as any crash of the command would).
- ``LocalExecutor``: ``jobs`` worker processes, each a *supervised child* (``Supervised``): a fresh
  interpreter (spawn) that trains one run at a time and stays up for the next. A child that dies
  (a signal: an OOM kill, a segfault in a plug-in, ``kill -9``) is seen by its supervisor the moment
  it dies, with its exit status; that run becomes a ``failed`` record, the child is replaced on the
  next run, and the sweep goes on.
- ``RayExecutor``: Ray core tasks (``ray.remote`` with ``num_cpus`` / ``num_gpus``, fractional GPUs
  allowed). Each task runs its run in a supervised child of the Ray worker, so a training process
  that dies is reported with its signal and node exactly as locally; a Ray worker or node that dies
  (a node removed from the cluster) comes back as Ray's error, recorded as ``failed`` with the node
  where Ray can tell it. Tasks are never retried by Ray (``max_retries=0``): retrying is the sweep's
  policy (``--retries``), counted in the records.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from harness.train import ResolvedRun, RunSpec

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'mixer-harness[ray]' (or: pip install 'ray[default]')"


@dataclass
class Outcome:
    """What came back for one run: a record, or why there is none (a dead worker, an error)."""

    record: dict[str, Any] | None = None
    crash: dict[str, Any] | None = None  # signal, signal_name, exit_code, node, pid, executor
    error: str | None = None  # the worker could not run it (e.g. a plug-in missing on that node)

    def describe(self) -> str:
        return describe_crash(self.crash) if self.crash else (self.error or "")


def describe_crash(crash: dict[str, Any]) -> str:
    """``worker died: killed by signal 9 (SIGKILL) on node vm (pid 123)`` and the like."""
    if crash.get("signal") is not None:
        how = f"killed by signal {crash['signal']} ({crash.get('signal_name') or '?'})"
    elif crash.get("exit_code") is not None:
        how = f"exited with code {crash['exit_code']}"
    else:
        how = crash.get("detail") or "died"
    where = f" on node {crash.get('node') or 'unknown'}"
    if crash.get("pid"):
        where += f" (pid {crash['pid']})"
    hint = ""
    if crash.get("signal") == signal.SIGKILL:
        hint = "; SIGKILL is what the kernel's OOM killer sends"
    elif crash.get("signal") == signal.SIGSEGV:
        hint = "; a segfault is a crash in native code (a kernel or extension)"
    return f"worker died while running it: {how}{where}{hint}"


def _signal_name(signum: int) -> str | None:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return None


# -- the supervised child ---------------------------------------------------------------------------
def _child_init() -> None:
    """In the child: Ctrl-C is the driver's to handle (it stops the children); on Linux, ask for
    SIGTERM when the supervising thread dies, so a killed sweep leaves no orphan trainers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _add_paths(paths: list[str]) -> bool:
    """Put the driver's import paths (plug-ins installed there) on this process's ``sys.path``;
    True if any was new."""
    new = [p for p in paths if p not in sys.path and os.path.isdir(p)]
    for p in reversed(new):
        sys.path.insert(0, p)
    return bool(new)


def _child_main(conn) -> None:
    """The child's loop: receive ``(spec, paths)``, train, send back ``("record", rec)`` or
    ``("error", text)``; ``None`` ends it."""
    _child_init()
    from harness import registry
    from harness.train import execute, resolve

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        spec, paths = msg
        if _add_paths(paths):
            registry.reload_plugins()
        try:
            reply = ("record", execute(resolve(spec)))
        except Exception as e:  # resolve failed here (a plug-in missing on this node, ...)
            reply = ("error", f"{type(e).__name__}: {e}")
        conn.send(reply)


class Supervised:
    """One persistent child process that trains one run at a time; ``run`` returns an ``Outcome``.

    The child is started on first use and after it died. ``env_keys`` are environment variables
    whose change restarts it (a Ray worker's ``CUDA_VISIBLE_DEVICES`` differs per task)."""

    env_keys = ("CUDA_VISIBLE_DEVICES",)

    def __init__(self, executor: str = "local") -> None:
        self.executor = executor
        self.proc = None
        self.conn = None
        self.env: tuple[str | None, ...] = ()
        self.stopping = False

    def _start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        self.env = tuple(os.environ.get(k) for k in self.env_keys)

    def run(self, spec: RunSpec, paths: list[str]) -> Outcome:
        from multiprocessing.connection import wait

        if self.proc is not None and (
            not self.proc.is_alive() or self.env != tuple(os.environ.get(k) for k in self.env_keys)
        ):
            self.stop()
        if self.proc is None:
            self._start()
        proc, conn = self.proc, self.conn  # ``stop`` from another thread may clear them meanwhile
        try:
            conn.send((spec, paths))
            wait([conn, proc.sentinel])
            kind, value = conn.recv()  # a dead child: EOFError (its pipe closed with it)
        except (EOFError, OSError):
            return Outcome(crash=self._died(proc))
        return Outcome(record=value) if kind == "record" else Outcome(error=value)

    def _died(self, proc) -> dict[str, Any]:
        proc.join(timeout=10)
        code = proc.exitcode
        if self.proc is proc:
            self.proc, self.conn = None, None
        crash = {
            "executor": self.executor,
            "node": socket.gethostname(),
            "pid": proc.pid,
            "signal": -code if code is not None and code < 0 else None,
            "exit_code": code if code is not None and code >= 0 else None,
        }
        crash["signal_name"] = _signal_name(crash["signal"]) if crash["signal"] else None
        if self.stopping:
            crash["detail"] = "stopped by the sweep"
        return crash

    def stop(self) -> None:
        """End the child (a run in it is lost)."""
        proc, conn = self.proc, self.conn
        self.proc, self.conn = None, None
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        if conn is not None:
            conn.close()


# -- executors --------------------------------------------------------------------------------------
class InlineExecutor:
    """Runs in this process, one at a time (``--jobs 1``)."""

    name = "inline"

    def __init__(self, execute: Callable[[ResolvedRun], dict[str, Any]]) -> None:
        self.execute = execute

    def capacity(self) -> int:
        return 1

    def submit(self, run: ResolvedRun) -> Future:
        fut: Future = Future()
        fut.set_result(Outcome(record=self.execute(run)))
        return fut

    def close(self, cancel: bool = False) -> None:
        pass


class LocalExecutor:
    """``jobs`` supervised worker processes on this machine."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._local = threading.local()
        self._children: list[Supervised] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="harness-run")
        self._closed = False

    def capacity(self) -> int:
        return self.jobs

    def _child(self) -> Supervised:
        child = getattr(self._local, "child", None)
        if child is None:
            child = self._local.child = Supervised("local")
            with self._lock:
                self._children.append(child)
        return child

    def _run(self, spec: RunSpec, paths: list[str]) -> Outcome:
        if self._closed:
            return Outcome(error="the sweep stopped before this run started")
        return self._child().run(spec, paths)

    def submit(self, run: ResolvedRun) -> Future:
        return self._pool.submit(self._run, run.spec, list(sys.path))

    def close(self, cancel: bool = False) -> None:
        self._closed = True
        with self._lock:
            children = list(self._children)
        if cancel:
            for child in children:
                child.stopping = True
                child.stop()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
        for child in children:
            child.stop()


_RAY_CHILD: Supervised | None = None


def _ray_task(spec: RunSpec, paths: list[str], key: str, where) -> Outcome:
    """The Ray task: note where it runs (so a worker or node that dies can be named), then the run
    in a supervised child of this Ray worker (the child is kept for the next task)."""
    global _RAY_CHILD
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    where.note.remote(key, socket.gethostname(), node_id, os.getpid())
    if _RAY_CHILD is None:
        _RAY_CHILD = Supervised("ray")
    outcome = _RAY_CHILD.run(spec, paths)
    if outcome.crash is not None:
        outcome.crash["ray_node_id"] = node_id
    return outcome


class _Where:
    """A small Ray actor: which node and worker each task started on."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[str, str, int]] = {}

    def note(self, key: str, host: str, node_id: str, pid: int) -> None:
        self.started[key] = (host, node_id, pid)

    def lookup(self, key: str) -> tuple[str, str, int] | None:
        return self.started.pop(key, None)

    def forget(self, key: str) -> None:
        self.started.pop(key, None)


def import_ray():
    """``ray``, or a ``UsageError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        from harness.validate import UsageError

        raise UsageError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def connect_ray(address: str):
    """Join the Ray cluster at ``address`` (``auto``, ``host:port``), or a ``UsageError`` saying
    there is none; ``ray``. Called while the flags are checked, so nothing runs before it."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except ConnectionError as e:
        from harness.validate import UsageError

        raise UsageError(
            f"--address {address}: no Ray cluster there ({str(e).split('. ')[0]}); start one with "
            "`ray start --head`, or leave --address out to start a local one"
        ) from None
    return ray


@dataclass
class RayExecutor:
    """Ray core tasks on an existing cluster (``address``) or a local one started here."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    num_cpus: int | None = None  # of a local cluster started here (default: this machine's cores)
    num_gpus: int | None = None
    name: str = "ray"
    _started: bool = field(default=False, init=False)
    _refs: dict = field(default_factory=dict, init=False)
    _capacity: tuple[float, int] = field(default=(0.0, 1), init=False)
    _count: Any = field(default_factory=itertools.count, init=False)

    def __post_init__(self) -> None:
        ray = import_ray()
        self._ray = ray
        if not ray.is_initialized():
            if self.address:
                connect_ray(self.address)
            else:
                kw: dict[str, Any] = {"num_cpus": self.num_cpus or os.cpu_count() or 1}
                if self.num_gpus is not None:
                    kw["num_gpus"] = self.num_gpus
                ray.init(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False, **kw)
                self._started = True  # a cluster of this command's own: stopped at the end
        if self.gpus_per_run and not ray.cluster_resources().get("GPU"):
            from harness.validate import UsageError

            self.close()
            raise UsageError(
                f"--gpus-per-run {self.gpus_per_run:g}: the Ray cluster has no GPUs "
                f"(its resources: {', '.join(sorted(ray.cluster_resources()))})"
            )
        self._remote = ray.remote(_ray_task)
        self._options = {
            "num_cpus": self.cpus_per_run,
            "num_gpus": self.gpus_per_run,
            "max_retries": 0,  # retrying is the sweep's policy (--retries), counted in the records
            "retry_exceptions": False,
        }
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._where = ray.remote(_Where).options(num_cpus=0, scheduling_strategy=here).remote()

    def capacity(self) -> int:
        """Runs the cluster can hold at once (refreshed every few seconds: clusters grow and shrink)."""
        now = time.monotonic()
        if now - self._capacity[0] > 5.0:
            res = self._ray.cluster_resources()
            n = int(res.get("CPU", 0) // self.cpus_per_run) if self.cpus_per_run else 10**6
            if self.gpus_per_run:
                n = min(n, int(res.get("GPU", 0) // self.gpus_per_run + 1e-9))
            self._capacity = (now, max(n, 1))
        return self._capacity[1]

    def submit(self, run: ResolvedRun) -> Future:
        spec = run.spec
        key = f"{run.run_id}-{next(self._count)}"
        name = f"harness {spec.candidate}/{spec.task}/seed {spec.seed}"
        ref = self._remote.options(**self._options, name=name).remote(spec, list(sys.path), key, self._where)
        out: Future = Future()
        self._refs[ref] = out
        inner = ref.future()

        def done(f: Future) -> None:
            self._refs.pop(ref, None)
            if out.done():
                return
            try:
                out.set_result(f.result())
                self._where.forget.remote(key)
            except BaseException as e:  # a Ray error: the worker or its node died, or cancelled
                # asking the actor where it ran is a Ray call: not on Ray's callback thread
                failure = e
                threading.Thread(
                    target=lambda: out.set_result(self._ray_failure(key, failure)), daemon=True
                ).start()

        inner.add_done_callback(done)
        return out

    def _ray_failure(self, key: str, e: BaseException) -> Outcome:
        exc = self._ray.exceptions
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, exc.TaskCancelledError):
            return Outcome(error="cancelled")
        if isinstance(e, exc.RayTaskError):  # an exception in our task code (a bug): say it plainly
            return Outcome(error=f"{type(e.cause).__name__ if e.cause else 'error'}: {text[:300]}")
        try:
            where = self._ray.get(self._where.lookup.remote(key), timeout=10)
        except Exception:  # the actor's node is gone too: the node stays unknown
            where = None
        host, node_id, pid = where or (None, None, None)
        if node_id is None:  # Ray's own message names the node that died
            m = re.search(r"Node IP: ([^,\s]+), node ID: ([0-9a-f]+)", str(e))
            if m:
                host, node_id = m.group(1), m.group(2)
        crash = {
            "executor": "ray",
            "node": host,
            "ray_node_id": node_id,
            "pid": pid,
            "signal": None,
            "signal_name": None,
            "exit_code": None,
            "detail": f"the Ray worker running it died ({type(e).__name__}: {text.split('. ')[0][:200]})",
        }
        return Outcome(crash=crash)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in list(self._refs):
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone
                    pass
        if self._started:
            self._ray.shutdown()


def make_executor(
    kind: str,
    jobs: int,
    execute: Callable[[ResolvedRun], dict[str, Any]],
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    num_gpus: int | None = None,
):
    """The executor of ``--executor``: ``local`` (inline for one job) or ``ray``."""
    if kind == "ray":
        return RayExecutor(
            address=address,
            cpus_per_run=cpus_per_run,
            gpus_per_run=gpus_per_run,
            num_cpus=jobs,
            num_gpus=num_gpus,
        )
    if kind != "local":
        raise ValueError(f"unknown executor {kind!r}; allowed: {', '.join(EXECUTORS)}")
    return InlineExecutor(execute) if jobs <= 1 else LocalExecutor(jobs)
