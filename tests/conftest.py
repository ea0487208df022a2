"""Test-wide settings."""

import os

import matplotlib
import torch

matplotlib.use("Agg")

# Under pytest-xdist every worker is a process: one torch thread each keeps the two
# workers from fighting over the machine's cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
