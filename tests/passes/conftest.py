"""Shared helpers for the pass tests, handed out as fixtures.

Every pass test checks the same contract (see graphslim/contract.py): numbers against
onnxruntime on seeded random feeds, a truthful ``modified`` both ways, idempotence, and that
names, IR version, opset imports and metadata survive and the ONNX checker accepts the result.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult
from graphslim.feeds import random_feeds
from graphslim.validate import Comparison, Tolerance, compare

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
OPSET = 17
IR_VERSION = 8


class PassHarness:
    """Runs a pass on a copy of a model and checks the contract on the result."""

    def fixture(self, name: str) -> onnx.ModelProto:
        return onnx.load_model(FIXTURES / f"{name}.onnx")

    def model(
        self,
        nodes: list[onnx.NodeProto],
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        initializers: dict[str, np.ndarray] | None = None,
        *,
        opset: int = OPSET,
        ir_version: int = IR_VERSION,
        name: str = "test",
    ) -> onnx.ModelProto:
        """A tiny model with producer, metadata and IR/opset set, checked by ONNX."""
        inits = [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()]
        if ir_version < 4:  # before IR 4 initializers are graph inputs too
            inputs = inputs + [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
            ]
        graph = helper.make_graph(nodes, name, inputs, outputs, inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="graphslim-tests"
        )
        model.ir_version = ir_version
        helper.set_model_props(model, {"test": name})
        onnx.checker.check_model(model)
        return model

    def run(
        self, p: Pass, model: onnx.ModelProto, ctx: PassContext | None = None
    ) -> tuple[onnx.ModelProto, PassResult]:
        """Run ``p`` on a copy; returns (the untouched original, the result)."""
        work = copy.deepcopy(model)
        return model, p(work, ctx or PassContext())

    def compare(
        self,
        original: onnx.ModelProto,
        candidate: onnx.ModelProto,
        *,
        shapes: dict[str, tuple[int, ...]] | None = None,
        count: int = 2,
        seed: int = 0,
        exact: bool = False,
    ) -> Comparison:
        """Outputs of ``candidate`` vs ``original`` on seeded random feeds: within max-rel 1e-5,
        and bit-identical (max-abs == 0) when ``exact``."""
        feeds = random_feeds(original, count=count, seed=seed, shapes=shapes, low=-1.0, high=1.0)
        cmp = compare(original, candidate, feeds, [Tolerance("max-rel", 1e-5)])
        assert cmp.passed, cmp.failure_summary()
        assert [o.name for o in cmp.outputs] == [o.name for o in original.graph.output]
        if exact:
            assert cmp.worst("max-abs") == 0.0, cmp.to_dict()
        return cmp

    def check_interface(self, original: onnx.ModelProto, result: onnx.ModelProto) -> None:
        """Names, IR version, opset imports and metadata survive; the checker passes."""
        onnx.checker.check_model(result)
        assert result.ir_version == original.ir_version
        assert [(o.domain, o.version) for o in result.opset_import] == [
            (o.domain, o.version) for o in original.opset_import
        ]
        assert _props(result) == _props(original)
        assert result.producer_name == original.producer_name
        assert result.graph.name == original.graph.name
        real = [i.name for i in G.real_inputs(result.graph)]
        assert real == [i.name for i in G.real_inputs(original.graph)]
        assert [o.name for o in result.graph.output] == [o.name for o in original.graph.output]

    def check_noop(self, p: Pass, model: onnx.ModelProto, ctx=None) -> PassResult:
        """Nothing to do (also: a second run, for idempotence): modified=False and the model's
        bytes unchanged."""
        before = model.SerializeToString(deterministic=True)
        work = copy.deepcopy(model)
        result = p(work, ctx or PassContext())
        assert result.modified is False
        assert result.model.SerializeToString(deterministic=True) == before
        return result

    @staticmethod
    def ops(model: onnx.ModelProto) -> list[str]:
        return [n.op_type for n in model.graph.node]


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.fixture
def harness() -> PassHarness:
    return PassHarness()
