"""Data-parallel fine-tuning: 2 processes (torchrun, gloo) give the gradients of 1 process on
the full batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
from bridge_helpers import tiny_yolo_pair

from graphslim.bridge.finetune import Distiller, FinetuneOptions

OPTS = FinetuneOptions(epochs=1, batch=8, seed=5, augment=("flip", "crop", "color"))
BATCH = np.array([0, 3, 4, 7, 9, 12, 15, 20])

WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnx
    import torch.distributed as dist
    from graphslim.bridge.finetune import Distiller, FinetuneOptions

    folder = sys.argv[1]
    x = np.load(folder + "/x.npy")
    student = onnx.load_model(folder + "/student.onnx")
    teacher = onnx.load_model(folder + "/teacher.onnx")
    opts = FinetuneOptions(epochs=1, batch=8, seed=5, augment=("flip", "crop", "color"))
    d = Distiller(student, teacher, x, opts, check_parity=False)
    assert d.world == 2, d.world
    d.backward(np.array([0, 3, 4, 7, 9, 12, 15, 20]), 1)
    if d.rank == 0:
        np.savez(folder + "/grads.npz", **d.gradients())
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_full_batch(tmp_path: Path):
    teacher, student, x = tiny_yolo_pair()
    np.save(tmp_path / "x.npy", x)
    onnx.save_model(student, tmp_path / "student.onnx")
    onnx.save_model(teacher, tmp_path / "teacher.onnx")
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            str(tmp_path / "worker.py"),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = dict(np.load(tmp_path / "grads.npz"))

    single = Distiller(student, teacher, x, OPTS, check_parity=False)
    assert single.world == 1
    single.backward(BATCH, 1)
    one = single.gradients()
    assert set(one) == set(two) and one
    for name, g in one.items():
        np.testing.assert_allclose(two[name], g, rtol=1e-4, atol=1e-6, err_msg=name)
