"""Structured channel pruning as a library: the ``prune-channels`` pass and the sensitivity
analysis both call it; neither goes back through the pass registry.

Layers, each importing only the ones above it:

* :mod:`graphslim.channels` -- the channel graph (which channels go together) and the editor
  that slices a model once removed classes are chosen;
* :mod:`.options` -- :class:`PruneOptions`, the one schema of pruning settings;
* :mod:`.canonical` -- a working copy in which every weight a pruner edits is its own
  initializer (Identity reads, deduplicated and Constant-node weights seen through);
* :mod:`.select` -- importance scores, dead channels, per-group selection, MACs estimate;
* :mod:`.reconstruct` -- compensation of removed channels' means and least-squares refit;
* :mod:`.plan` -- a :class:`~.plan.Plan` of one model (groups, scores) and pruning at a ratio,
  a MACs target or per-group ratios (:func:`~.plan.prune_at`);
* :mod:`graphslim.sensitivity` -- per-group error curves (calls :mod:`.plan`);
* :mod:`.budget` -- per-group ratios for a latency/MACs budget from those curves;
* :mod:`.prune` -- :func:`~.prune.prune`, the entry point: ratio, ``target_macs`` or
  ``budget``, and the honest account of what was reached.

The package module itself imports nothing, so ``import graphslim.pruning.plan`` never drags
the budget search (and with it onnxruntime timing) in.
"""
