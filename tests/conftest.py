"""Suite-wide test ordering.

The OpenVINO backend tests run last: once OpenVINO's runtime (its own TBB thread pools) is
loaded in the pytest process, the fine-tune tests that follow (torch with DataLoader worker
processes and gloo) crash the whole process with a segfault (measured: openvino 2026.4 with
torch 2.13 on this suite). In their own place at the end they cannot take other tests down.
"""

from __future__ import annotations


def pytest_collection_modifyitems(session, config, items):
    last = [i for i in items if "test_openvino.py" in i.nodeid]
    if last:
        items[:] = [i for i in items if "test_openvino.py" not in i.nodeid] + last
