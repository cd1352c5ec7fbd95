"""Fewer kernel launches on GPUs: CUDA graphs for the proposal model, and a compile of the
CLIP image tower that finishes.

One image at a time, the proposal model (backbone, pixel decoder, transformer decoder) is a
few thousand small kernels: on an H200 it took 45 ms of launches for 0.5 TFLOP of work.
``GraphedProposals`` records it once per input shape into a CUDA graph and replays it: one
launch. The CLIP image tower's kernels are large (100 crops at a time), so its launches
hide behind the work; what costs there is the memory traffic of its many element-wise
kernels (LayerNorms, residual adds, QuickGELU), which ``compile_clip_blocks`` fuses by
compiling one residual block's code (all 24 blocks share it: "regional" compilation, one
compile of one block instead of the whole tower; the batch size is dynamic).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ovseg.modeling.precision import tf32_enabled


class GraphedProposals:
    """``OVSeg.proposal_outputs`` replayed from CUDA graphs, one per input (shape, dtype,
    TF32 setting); other calls (CPU inputs, autograd, ``all_layers``) run ``fn`` itself.

    The first call of a new shape runs ``fn`` twice on a side stream (warm-up: cuDNN's
    algorithm choice, lazy initialisation), then records it; each call copies the input
    into the graph's input buffer, replays, and returns copies of its outputs, so callers
    may keep them. At most ``max_graphs`` shapes are kept (least recently used first out):
    each holds its own memory.

    Args:
        fn: the eager ``proposal_outputs(image, all_layers=False)``.
        max_graphs: graphs kept.
    """

    def __init__(self, fn: Callable, max_graphs: int = 4):
        self.fn = fn
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def __call__(self, image: torch.Tensor, all_layers: bool = False):
        if all_layers or not image.is_cuda or torch.is_grad_enabled():
            return self.fn(image, all_layers)
        key = (tuple(image.shape), image.dtype, image.device, tf32_enabled())
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._record(image)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph, static_input, static_outputs = entry
        static_input.copy_(image)
        graph.replay()
        return tuple(out.clone() for out in static_outputs)

    def _record(self, image: torch.Tensor) -> tuple:
        static_input = image.clone()
        stream = torch.cuda.Stream(image.device)
        stream.wait_stream(torch.cuda.current_stream(image.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.fn(static_input)
        torch.cuda.current_stream(image.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = self.fn(static_input)
        return graph, static_input, tuple(static_outputs)


def graph_proposals(model: nn.Module, max_graphs: int = 4) -> None:
    """Make ``model.proposal_outputs`` (an ``OVSeg`` on a CUDA device) replay CUDA graphs
    (``GraphedProposals``), in place; a second call changes nothing."""
    if model.device.type != "cuda":
        raise ValueError(
            f"cuda_graphs needs the model on a CUDA device, it is on {model.device.type}"
        )
    if not isinstance(model.__dict__.get("proposal_outputs"), GraphedProposals):
        model.proposal_outputs = GraphedProposals(model.proposal_outputs, max_graphs)


def compile_clip_blocks(model: nn.Module) -> None:
    """``torch.compile`` each residual block of the CLIP image tower in place (one compile of
    the block's code serves all of them; the batch of crops is a dynamic dimension)."""
    for block in model.clip_adapter.clip_model.visual.transformer.resblocks:
        block.compile(dynamic=True)
