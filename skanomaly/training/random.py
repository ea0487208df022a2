"""Explicit random number generators for training: never torch's global RNG.

Detectors fitted in parallel threads (joblib's threading backend, ``GridSearchCV``
with threads) share torch's global generator; drawing from it made their results
depend on scheduling. Every random draw in training therefore comes from a
``torch.Generator`` owned by the net and seeded from the detector's ``random_state``.
Draws are made on the CPU and moved to the device, so a seed gives the same numbers
on every device (CUDA generators produce other streams than the CPU one).
"""

import threading
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["make_generator", "rand", "randn", "seeded_initialisation", "stream_seeds"]

# The independent random streams of a training net, in the order their seeds are
# drawn: appending a stream leaves every earlier seed as it was.
STREAMS = ("init", "shuffle", "step", "valid", "unlabelled")

# torch initialises module weights from its global generator and offers no other way;
# one lock makes seeded initialisation atomic across threads.
_INIT_LOCK = threading.RLock()


def stream_seeds(random_seed):
    """``{stream: seed}`` for every stream of :data:`STREAMS`, from one net seed.

    ``SeedSequence`` words are independent, and its first ``k`` words do not depend
    on how many are drawn, so a stream added at the end changes no earlier one."""
    words = np.random.SeedSequence(int(random_seed)).generate_state(len(STREAMS))
    return dict(zip(STREAMS, (int(word) for word in words)))


def make_generator(seed):
    """A CPU ``torch.Generator`` seeded with ``seed`` (an int)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def rand(shape, generator, *, device="cpu", dtype=torch.float32):
    """``torch.rand`` drawn from ``generator`` on the CPU, then moved to ``device``."""
    return torch.rand(shape, generator=generator, dtype=dtype).to(device)


def randn(shape, generator, *, device="cpu", dtype=torch.float32):
    """``torch.randn`` drawn from ``generator`` on the CPU, then moved to ``device``."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


@contextmanager
def seeded_initialisation(seed, device="cpu"):
    """Run module construction with torch's global RNG seeded, under a global lock.

    The global RNG state (CPU, and the CUDA device in use) is restored afterwards, so
    the user's own random streams are untouched, and no other thread's initialisation
    can interleave with this one.
    """
    devices = []
    if str(device).startswith("cuda"):
        devices = [torch.device(device).index or 0]
    with _INIT_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
