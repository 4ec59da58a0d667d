"""torch.compile of the training step: static graphs, no silent eager, and what the compiler did.

The step is compiled with `dynamic=False`, so that the partial last batch of an epoch gets a static graph
of its own instead of moving every later batch onto one dynamic-shape graph (two static graphs, each used
every epoch), and with `fullgraph=True`, so that a graph break, or dynamo's recompile limit, is an error
the training step turns into its eager fallback with the reason recorded, never a step that silently runs
eager. Dynamo's caches are reset for each new setup: every setup compiles the same code object
(`TrainingSetup.step_losses`), and the compiles of all the trainers of one process (a comparison, a Ray worker,
tuning trials) would otherwise count against one recompile limit.

Knows torch only.
"""
from __future__ import annotations

import torch

# The backend of the compiled step: inductor, with CUDA graphs on CUDA. The tests and the GPU check's CPU
# variant set "aot_eager" (the captured graphs run with eager kernels): the same capture in seconds
# instead of minutes of C++ compilation on a small CPU.
BACKEND = "inductor"
# Calls of the compiled step per batch shape whose errors the training step catches (`epoch.forward_backward`:
# the step undone and rerun eager): the compile, and under CUDA graphs the warm-up run and the recording.
GUARDED_CALLS = 3


def compile_step(function, device: torch.device):
    """`function` through torch.compile, after a reset of dynamo's caches (which also frees the graphs
    and CUDA-graph memory pools of earlier trainers in this process)."""
    torch._dynamo.reset()
    # CUDA graphs remove the per-kernel launch cost that bounds this step's speed at batch 128
    mode = "reduce-overhead" if BACKEND == "inductor" and device.type == "cuda" else None
    return torch.compile(function, backend=BACKEND, mode=mode, dynamic=False, fullgraph=True)


def compiler_counts() -> dict[str, int]:
    """Dynamo's and inductor's process-wide counters that a run reports (as differences): graphs
    compiled, graph breaks, and graphs that inductor left out of CUDA graphs."""
    from torch._dynamo.utils import counters  # dynamo is loaded by then: this runs only when compiling

    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


def is_recompile_limit(error: BaseException) -> bool:
    """Whether `error` is dynamo's refusal to compile a code object once more (its recompile limit): raised
    before the step runs anything, so the training step can rerun eager at any time."""
    from torch._dynamo import exc

    # FailOnCacheLimitHit: its name in earlier PyTorch versions (2.4 and 2.5 among those this project accepts)
    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
    kinds = tuple(getattr(exc, name) for name in names if hasattr(exc, name))
    return isinstance(error, kinds)
