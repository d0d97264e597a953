"""This machine, as every measured figure records it, and the facts passes choose by.

The x86 ISA decides which integer kernels onnxruntime's MLAS runs (see
``graphslim.passes._quant_isa``). The channel block of its NCHWc float convolutions decides
which convolutions run blocked at all: onnxruntime's NCHWc transformer converts a Conv only
when its output channels are a multiple of ``MlasNchwcGetBlockSize()`` (and its input
channels too, unless fewer than one block); any other Conv runs in plain NCHW between
Reorder nodes (``core/optimizer/nchwc_transformer.cc``). The block is 8 or 16 floats
depending on the build and the CPU (``core/mlas/lib/platform.cpp``), and the CPU flags do not
say which: an AVX-512 Xeon measured here runs 8. So it is probed, not guessed.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path

import onnx

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
    """Output channels per block of onnxruntime's NCHWc convolutions on this machine (8 or
    16), probed: the smallest block size whose one-Conv model onnxruntime converts to NCHWc.
    8 when no size converts (no NCHWc kernels, e.g. some ARM builds)."""
    import tempfile

    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        for block in (8, 16):
            weight = numpy_helper.from_array(np.ones((block, 16, 1, 1), np.float32), "w")
            graph = helper.make_graph(
                [helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                [helper.make_tensor_value_info("x", 1, [1, 16, 8, 8])],
                [helper.make_tensor_value_info("y", 1, [1, block, 8, 8])], [weight],
            )  # fmt: skip
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            model.ir_version = 8
            opts = ort.SessionOptions()
            opts.log_severity_level = 3  # the "hardware specific" warning of a saved NCHWc model
            opts.optimized_model_filepath = str(Path(tmp) / f"probe{block}.onnx")
            try:
                ort.InferenceSession(
                    model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
                )
                optimized = onnx.load(opts.optimized_model_filepath)
            except Exception as exc:  # a probe must never stop a pass: say and assume 8
                log.debug("NCHWc block probe failed: %s", exc)
                return 8
            if any(n.domain == "com.microsoft.nchwc" for n in optimized.graph.node):
                return block
    return 8


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
