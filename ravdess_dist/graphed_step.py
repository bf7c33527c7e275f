"""`cuda_graph: true`: the training step's update (forward, loss, backward, clipping, AdamW) captured once as one CUDA
graph and replayed at every step.

Why: on a GPU these models' steps are bound by host time, not arithmetic. On an H100 the hybrid's step compiled with
`reduce-overhead` took 12.2 ms, of which the GPU computed 2.2 ms (README, "On a GPU"): torch.compile's CUDA graphs hold
the forward and the backward, but the loss, the autograd engine, clipping and the optimiser still launch from Python.
One graph of the whole update costs one replay a step, whatever it holds.

How (PyTorch's "whole-network capture", torch.cuda.graphs): the batch is copied into static buffers; a few warm-up
updates run first (on a side stream, as capture asks: they create AdamW's state and let cuDNN pick its algorithms),
then the capture, which runs nothing. The warm-up changed the weights, BatchNorm's statistics and AdamW's state, so
they are put back in place (the graph holds their addresses): state that existed before is restored, state the warm-up
created is zeroed, which is AdamW's initial state; the random generators are restored too. AdamW is fused, capturable
and has a tensor learning rate that the scheduler fills in place, so the schedule reaches the graph
(`trainer.make_optimizer`). Gradients are written, not accumulated, by each replay (captured after
`zero_grad(set_to_none=True)`). Mixup's draws (its weight and each clip's partner) are made outside, before each
replay, and copied into static inputs of their own like the batch: the graph itself draws nothing.

Without a GPU (`capture=False`, for the tests) the same buffers, warm-up and restoring run, and each call runs the
update eagerly on the buffers: what the graph would replay.

The limits (a GPU, one process, no moving average, fp16 loss scaling or torch.compile) are checked by
`TrainConfig.validate` and `Run`.
"""
from collections.abc import Callable

import torch

WARMUP_UPDATES = 3  # PyTorch's examples warm up 3 iterations before capturing


class GraphedStep:
    """UPDATE(*inputs) -> loss captured for inputs shaped like INPUTS (features, labels and, with mixup, its weight and
    pairing); call it with each step's inputs (see the module docstring)."""

    def __init__(self, update: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
                 model: torch.nn.Module, optimizer, capture: bool = True, warmup: int = WARMUP_UPDATES):
        """Warm up, capture (CAPTURE) and put MODEL's and OPTIMIZER's state back as it was before."""
        self.update, self.optimizer = update, optimizer
        self.inputs = tuple(t.detach().clone() for t in inputs)  # the static buffers the graph reads
        device = self.inputs[0].device
        saved = _snapshot(model, optimizer)
        rng = _rng_state(device)
        stream = torch.cuda.Stream(device) if capture else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # None (a CPU): no stream, nothing changes
            for _ in range(warmup):
                optimizer.zero_grad(set_to_none=True)
                update(*self.inputs)
        if stream is not None:
            torch.cuda.current_stream(device).wait_stream(stream)
        optimizer.zero_grad(set_to_none=True)
        self.graph, self.loss = None, None
        if capture:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = update(*self.inputs)
        _restore(model, optimizer, saved)
        _set_rng_state(device, rng)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """One update on INPUTS (shaped as the captured ones); the loss, on the device, valid until the next call."""
        shapes, captured = [tuple(t.shape) for t in inputs], [tuple(t.shape) for t in self.inputs]
        if shapes != captured:
            raise ValueError(f"cuda_graph: inputs of shapes {' / '.join(map(str, shapes))} where the graph was "
                             f"captured for {' / '.join(map(str, captured))}")
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        self.optimizer.zero_grad(set_to_none=True)
        return self.update(*self.inputs)


def _snapshot(model: torch.nn.Module, optimizer) -> dict:
    """Copies of MODEL's parameters and buffers and of OPTIMIZER's state tensors, keyed by the live tensors."""
    tensors = [*model.parameters(), *model.buffers()]
    return {"model": [(t, t.detach().clone()) for t in tensors],
            "optimizer": {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                          for p, s in optimizer.state.items()}}


def _restore(model: torch.nn.Module, optimizer, saved: dict) -> None:
    """Put SAVED back in place; optimizer state created since the snapshot is zeroed (AdamW's initial state)."""
    with torch.no_grad():
        for live, copy in saved["model"]:
            live.copy_(copy)
        for p, state in optimizer.state.items():
            before = saved["optimizer"].get(id(p), {})
            for k, v in state.items():
                if torch.is_tensor(v):
                    v.copy_(before[k]) if k in before else v.zero_()


def _rng_state(device: torch.device) -> tuple:
    """The CPU generator's state, and the device's on a GPU."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    """Undo the warm-up's draws."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
