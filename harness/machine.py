"""Machine classes: one stable name per kind of hardware, so each kind gets its own history.

A benchmark history (asv) and a gate baseline are only comparable on the same hardware, so both are
keyed by a *machine class* derived from what is detected, never from the hostname:

- a GPU run: the GPU model, its form factor where the name tells it, and its memory, e.g.
  ``h100-sxm-80g``, ``a100-pcie-40g``, ``h200-141g``;
- a CPU run: the CPU model and the cores this process may use, e.g. ``cpu-amd-epyc-2c``,
  ``cpu-intel-xeon-platinum-8488c-4c``.

Software versions (torch, CUDA, Python) are deliberately *not* in the name: they go in every record's
environment (``harness.environment``), and a torch upgrade shows up as a step in the same history
rather than starting a new one. The asv machine entry written here holds the same hardware facts
(the OS is recorded as its family only, not the kernel release, so a kernel update does not split
the graphs).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.environment import cpu_model, resolve_device

# Marketing memory sizes (GB) of data-centre GPUs: the detected total (GiB, less reserved memory)
# snaps to the nearest one within 8 %, so "80GB" parts are called 80g, not 79g.
_GPU_MEMORY_SIZES_GB = (8, 12, 16, 24, 32, 40, 48, 64, 80, 94, 96, 120, 141, 180, 192, 288)
_CPU_NOISE = re.compile(
    r"\((r|tm|c)\)|\bcpu\b|\bprocessor\b|@.*$|\b\d+-core\b|\bwith radeon.*$|\bgraphics\b",
    re.IGNORECASE,
)
_GPU_DROP_TOKENS = {"nvidia", "tesla", "geforce", "amd", "instinct", "radeon"}


@dataclass(frozen=True)
class MachineInfo:
    """What identifies a machine class, plus descriptive facts for the asv machine entry."""

    name: str
    device: str  # "cpu" or "cuda": where the benchmarks of this class run
    cpu: str
    cores: int
    arch: str
    os: str
    ram_gb: int
    gpu: str | None = None
    gpu_memory_bytes: int | None = None
    gpu_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def asv_entry(self) -> dict[str, str]:
        """asv's machine fields (all strings, as asv writes them) plus ``gpu``."""
        gpu = "none"
        if self.gpu:
            gpu = self.gpu
            if self.gpu_memory_bytes:
                gpu += f" ({self.gpu_memory_bytes / 2**30:.1f} GiB)"
            if self.gpu_count > 1:
                gpu += f" x{self.gpu_count}"
        return {
            "machine": self.name,
            "os": self.os,
            "arch": self.arch,
            "cpu": self.cpu,
            "num_cpu": str(self.cores),
            "ram": f"{self.ram_gb}GB",
            "gpu": gpu,
        }


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def cpu_slug(model: str) -> str:
    """``Intel(R) Xeon(R) Platinum 8488C CPU @ 2.40GHz`` -> ``intel-xeon-platinum-8488c``."""
    slug = _slug(_CPU_NOISE.sub(" ", model))
    return slug[:48].strip("-") or "unknown"


def gpu_memory_gb(name: str, total_bytes: int | None) -> int | None:
    """The part's memory in GB: from the name when it says (``80GB``), else the snapped total."""
    m = re.search(r"(\d+)\s*GB", name, re.IGNORECASE)
    if m:
        return int(m.group(1))
    if not total_bytes:
        return None
    gib = total_bytes / 2**30
    nearest = min(_GPU_MEMORY_SIZES_GB, key=lambda s: abs(s - gib))
    return nearest if abs(nearest - gib) <= 0.08 * nearest else round(gib)


def gpu_slug(name: str, total_bytes: int | None = None) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100-sxm-80g``; ``NVIDIA A100-PCIE-40GB`` -> ``a100-pcie-40g``.

    The form factor is kept when the name states it (SXM*, PCIe, NVL) and inferred as SXM for
    parts named by their HBM memory (the SXM H100 reports "H100 80GB HBM3", the PCIe one "H100 PCIe").
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    form = None
    model: list[str] = []
    hbm = False
    for t in tokens:
        if t in _GPU_DROP_TOKENS or re.fullmatch(r"\d+gb", t):
            continue
        if t.startswith("sxm"):
            form = "sxm"
        elif t in ("pcie", "nvl"):
            form = t
        elif t.startswith("hbm"):
            hbm = True
        else:
            model.append(t)
    if form is None and hbm:
        form = "sxm"
    mem = gpu_memory_gb(name, total_bytes)
    parts = ["-".join(model) or "gpu"]
    if form:
        parts.append(form)
    if mem:
        parts.append(f"{mem}g")
    return "-".join(parts)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ram_gb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return 0


def detect(device: str = "auto") -> MachineInfo:
    """The machine class for benchmarks that run on ``device`` (``auto``: CUDA if available)."""
    import torch

    device = resolve_device(device).type
    cpu = cpu_model()
    cores = _usable_cores()
    gpu = mem = None
    count = 0
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        gpu = torch.cuda.get_device_name(0)
        mem = int(torch.cuda.get_device_properties(0).total_memory)
    if device == "cuda":
        name = gpu_slug(gpu or "gpu", mem)
    else:
        name = f"cpu-{cpu_slug(cpu)}-{cores}c"
    return MachineInfo(
        name=name,
        device=device,
        cpu=cpu,
        cores=cores,
        arch=platform.machine(),
        os=platform.system(),
        ram_gb=_ram_gb(),
        gpu=gpu,
        gpu_memory_bytes=mem,
        gpu_count=count,
    )
