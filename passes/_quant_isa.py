"""Which x86 integer kernels onnxruntime will run, and the INT8 settings that are exact on them.

onnxruntime's MLAS picks its u8 x s8 QGEMM kernel (behind QLinearConv, QLinearMatMul and the
fused QDQ Conv/MatMul) from CPUID at start-up; no session option or environment variable
selects another one (onnxruntime 1.32: the only ``mlas.*`` session options concern ARM
KleidiAI, NCHWc and n-bit GEMM). The kernels:

* ``vnni`` (AVX-512 VNNI ``VPDPBUSDS`` or AVX-VNNI ``VPDPBUSD``): four u8 x s8 products are
  summed straight into an int32 accumulator -- exact for any u8 activation and s8 weight.
* ``avx512`` (AVX-512 BW without VNNI) and ``avx2``: ``VPMADDUBSW`` multiplies u8 x s8 and adds
  adjacent *pairs* into a saturating int16, then ``VPMADDWD`` widens to int32. A pair sum can
  reach ``2 * 255 * 127 = 64770 > 32767``: it saturates and the result is silently wrong. With
  ``reduce_range`` the weights use 7 bits (``[-64, 64]``), so ``2 * 255 * 64 = 32640 <= 32767``
  and the int16 stage is exact again, at the same speed (one bit less weight precision). u8u8
  also avoids the saturation but runs a slower widening kernel (onnxruntime's quantization
  docs name both remedies).

So: ``vnni`` -> u8 activations, s8 full-range weights; ``avx2`` / ``avx512`` -> u8 activations,
s8 weights with ``reduce_range``. ``target=cpu-x86`` detects the ISA of *this* machine from the
kernel's CPU flags (``/proc/cpuinfo``; elsewhere py-cpuinfo when installed, else ``unknown``,
which takes the safe no-VNNI settings); ``cpu-x86-vnni`` / ``cpu-x86-avx2`` name the deployment
machine's ISA when it is not this one.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

# The machine facts live in the core (the CLI and every bench record them too); the ISA rules
# below use them.
from graphslim.machine import (  # noqa: F401  (re-exported: machine, cpu_model)
    REPORTED_FLAGS,
    VNNI_FLAGS,
    cpu_flags,
    cpu_model,
    isa_of,
    machine,
)

log = logging.getLogger("graphslim.passes.quantize_int8")

ISAS = ("vnni", "avx512", "avx2", "unknown")


@dataclass(frozen=True)
class X86Choice:
    """The settings for one ISA; ``source`` says how the ISA was known."""

    isa: str
    source: str  # "detected (/proc/cpuinfo)", "detected (py-cpuinfo)", "target cpu-x86-vnni", ...
    reduce_range: bool
    why: str

    def note(self) -> str:
        return f"x86 ISA {self.isa} ({self.source}): {self.why}"


def choose(target: str, flags: set[str] | None = None, source: str | None = None) -> X86Choice:
    """Settings for ``cpu-x86`` (detected), ``cpu-x86-vnni`` or ``cpu-x86-avx2``."""
    if target == "cpu-x86-vnni":
        isa, src = "vnni", "target cpu-x86-vnni"
    elif target == "cpu-x86-avx2":
        isa, src = "avx2", "target cpu-x86-avx2"
    else:
        if flags is None:
            flags, where = cpu_flags()
            source = source or where
        isa, src = isa_of(flags), f"detected from {source or 'given flags'}"
        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86") and not flags:
            src += f"; this machine is {platform.machine()}, not x86"
    if isa == "vnni":
        return X86Choice(
            isa,
            src,
            False,
            "u8 activations x s8 weights, full 8-bit range (VNNI "
            "sums u8*s8 products in int32: no saturation)",
        )
    return X86Choice(
        isa,
        src,
        True,
        "u8 activations x s8 weights with reduce_range (7-bit weights): without VNNI, "
        "onnxruntime's VPMADDUBSW kernel sums u8*s8 pairs in a saturating int16; 7-bit weights "
        "keep every pair sum <= 2*255*64 = 32640, exact",
    )
