"""Fixtures of the torch-bridge tests."""

from __future__ import annotations

import pytest
from bridge_helpers import tiny_yolo_pair


@pytest.fixture(scope="session")
def pruned_tiny_yolo():
    """(teacher, student pruned at ratio 0.5, 24 seeded random inputs)."""
    return tiny_yolo_pair()
