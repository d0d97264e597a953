"""Channel analysis: which channels of which tensors must be pruned together.

A channel *slot* is ``(tensor, axis)``: the axis of a tensor that carries channels. Every
position on a slot is labelled with an *atom*; atoms that must go together are joined in a
union-find (networkx's ``UnionFind``), and a joined set is a *channel class*:

* a source (Conv with group 1, ConvTranspose, Gemm, MatMul with a constant weight) makes one
  fresh atom per output channel; its weight rows (and bias) belong to them;
* channel-preserving ops (BatchNormalization, activations, pooling, Resize, Pad, ...) pass the
  atoms through; a Transpose moves them to another axis;
* element-wise ops with two channel-carrying operands (residual Add, SE Mul) join the
  atoms position by position; per-channel constant operands are sliced with them;
* Concat on the channel axis concatenates atom lists (index offsets), Split/Slice cut them;
  Flatten/Reshape into a Gemm repeats each atom once per spatial position (index expansion);
* a depthwise Conv ties input and output channels; two Convs sharing one weight tensor tie
  their channels.

A class is *frozen* (never pruned) when one of its atoms reaches a graph output, an op with
no rule, a layout change the rules cannot map (a detection head's box reshape, a channel
shuffle), or is mixed with a tensor whose channels are unknown; the reason is kept. A
*group* is the set of classes whose sources are linked by joins: all members of a group
vote on importance, and the same indices go from every member.

Each rule also knows how to *apply* a pruning: given the kept positions of every slot, it
slices weights, per-channel parameters and constants, and updates shape-carrying inputs
(Split sizes, Slice bounds, Reshape targets, Resize sizes).
"""

from graphslim.channels.analysis import analyze, report
from graphslim.channels.editor import Editor
from graphslim.channels.model import ChannelGraph, ChannelGroup, Slot, Source
from graphslim.channels.rules import OpHandler, node_name, register_op

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "Editor",
    "OpHandler",
    "Slot",
    "Source",
    "analyze",
    "node_name",
    "register_op",
    "report",
]
