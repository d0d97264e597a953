"""This machine, as every measured figure records it, and the facts passes choose by.

The x86 ISA decides which integer kernels onnxruntime's MLAS runs (see
``graphslim.passes._quant_isa``) and the channel block of its NCHWc float convolutions:
MLAS lays channels out in blocks of ``NchwcBlockSize`` floats, 16 on AVX-512F and 8 otherwise
(onnxruntime ``core/mlas/lib/platform.cpp``). A channel count that is not a multiple of the
block leaves a partly filled block that costs a full one.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger(__name__)

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni")  # kernel / py-cpuinfo spellings
REPORTED_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "fma")


def cpu_flags() -> tuple[set[str], str]:
    """The CPU feature flags of this machine and where they came from (empty if unknown)."""
    path = Path("/proc/cpuinfo")
    if path.is_file():
        try:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split()), "/proc/cpuinfo"
        except OSError as exc:  # a restricted container: fall through to py-cpuinfo
            log.debug("cannot read /proc/cpuinfo: %s", exc)
    try:
        import cpuinfo  # py-cpuinfo, optional

        return set(cpuinfo.get_cpu_info().get("flags", [])), "py-cpuinfo"
    except Exception:  # not installed, or it failed on this platform
        return set(), "unknown"


def cpu_model() -> str:
    path = Path("/proc/cpuinfo")
    if path.is_file():
        try:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def isa_of(flags: set[str]) -> str:
    """``vnni`` / ``avx512`` / ``avx2`` / ``unknown`` from a set of CPU flags."""
    if any(f in flags for f in VNNI_FLAGS):
        return "vnni"
    if "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "unknown"


@functools.cache
def channel_block() -> int:
    """Channels per block of this machine's float conv kernels: 16 with AVX-512, else 8."""
    flags, _ = cpu_flags()
    return 16 if "avx512f" in flags else 8


def machine() -> dict:
    """This machine, for every recorded figure: CPU model, ISA, flags, cores, load."""
    flags, source = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "isa": isa_of(flags),
        "isa_flags": sorted(f for f in REPORTED_FLAGS if f in flags),
        "flags_source": source,
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
