"""Randomness: the seeds a run accepts, seeding every generator, and the generators' states saved and
restored with a run's resumable state."""
from __future__ import annotations

import random

import numpy as np
import torch

# The seeds numpy accepts (np.random.seed: 0..2**32-1); torch and Python accept these too.
MAX_SEED = 2**32 - 1


def seed_problem(seed: int, option: str = "--seed") -> str | None:
    """The one-line problem of a seed numpy cannot use, or None."""
    if not 0 <= seed <= MAX_SEED:
        return f"{option} {seed}: an integer from 0 to {MAX_SEED} (2**32-1) is expected"
    return None


# ----------------------------------------------------------------------------- randomness
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """Every random number generator a run draws from, in types that load with weights_only=True."""
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            # numpy and Python states as tensors and lists, so the state loads with weights_only=True
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
