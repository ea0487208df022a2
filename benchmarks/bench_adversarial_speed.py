"""Speed of the adversarial detectors against the FLOP bound: training images/s and
scoring ms/image of OneClassAdversarialDetector and HealthyGAN at their papers'
network sizes, on this machine's CPU (or GPU).

For each detector the FLOPs are counted by torch's FLOP counter and the times
measured, both as the *difference* between two fits that differ only in length (one
and two epochs; two and four iterations), so set-up, the offset's scoring and the
first-call warm-up cancel. The bound is a measured float32 matrix-multiply rate of
this machine (the best of 2048 and 4096 squares): a practical ceiling for
convolution-heavy work (oneDNN's convolutions of many channels come close to it;
those of few channels, and InstanceNorm, do not). Scoring is timed as the best of
three passes.

* ``OneClassAdversarialDetector``: the paper's networks (64 px, channels 64-512,
  latent 100), batch 64, every component (U+D+E). Tang et al. report 5-7 minutes of
  GPU training for their NIH set and 0.48 ms/image inference.
* ``HealthyGAN``: the paper's networks (width 64, 6 residual blocks, critic "auto"),
  batch 16, at ``--healthygan-size`` px (default 64, the pediatric benchmark's size;
  the paper trains at 256 px, 400,000 iterations, whose cost per image is about 16
  times the 64 px figure). Its training FLOPs leave out the gradient penalty (torch's
  counter cannot follow a double backward), so its achieved rate is a lower bound.

    python benchmarks/bench_adversarial_speed.py [--device auto] [--healthygan-size 64]

Writes benchmarks/results/adversarial_speed.json.
"""

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from bench_anogan_speed import matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import HealthyGAN, OneClassAdversarialDetector
from skanomaly.detectors.healthygan import training as healthygan_training

RESULTS = Path(__file__).parent / "results" / "adversarial_speed.json"


def _timed_fit(make, X, y, count_flops):
    detector = make()
    start = time.perf_counter()
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            detector.fit(X, y)
        return time.perf_counter() - start, counter.get_total_flops(), detector
    detector.fit(X, y)
    return time.perf_counter() - start, None, detector


@contextlib.contextmanager
def _without_gradient_penalty():
    """Torch's FLOP counter cannot follow the gradient penalty's double backward; while
    counting, the penalty is a zero (so the count is a lower bound)."""
    original = healthygan_training.gradient_penalty
    healthygan_training.gradient_penalty = lambda critic, real, fake, rng: real.new_zeros(())
    try:
        yield
    finally:
        healthygan_training.gradient_penalty = original


def training_rate(make_short, make_long, X, y, extra_images):
    """Seconds, FLOPs and images/s of the ``extra_images`` training images that the
    long fit processes beyond the short one."""
    _timed_fit(make_short, X, y, False)  # warm-up (allocator, kernels)
    short_s, _, _ = _timed_fit(make_short, X, y, False)
    long_s, _, detector = _timed_fit(make_long, X, y, False)
    with _without_gradient_penalty():
        _, short_flops, _ = _timed_fit(make_short, X, y, True)
        _, long_flops, _ = _timed_fit(make_long, X, y, True)
    seconds = max(long_s - short_s, 1e-9)
    flops = long_flops - short_flops
    return {
        "train_images_per_s": extra_images / seconds,
        "train_gflop_per_image": flops / extra_images / 1e9,
        "train_achieved_gflops": flops / seconds / 1e9,
    }, detector


def scoring_rate(detector, images, repeats=3):
    detector.score_samples(images[:8])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        detector.score_samples(images)
        best = min(best, time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        detector.score_samples(images)
    flops = counter.get_total_flops()
    return {
        "score_ms_per_image": 1000 * best / len(images),
        "score_gflop_per_image": flops / len(images) / 1e9,
        "score_achieved_gflops": flops / best / 1e9,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-images", type=int, default=256, help="OneClass: images per epoch")
    parser.add_argument("--score-images", type=int, default=256)
    parser.add_argument("--healthygan-size", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    # The best of two sizes and ten tries: the rate of a shared machine wanders.
    peak = max(matmul_gflops(device, size, repeats=10) for size in (2048, 4096))
    print(f"float32 matmul on {device}: {peak:.0f} GFLOP/s", flush=True)
    results = {
        "command": "python benchmarks/bench_adversarial_speed.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"platform": platform.platform(), "device": str(device),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "matmul_gflops_of_this_machine": peak,
        "detectors": {},
    }

    # OneClassAdversarialDetector, the paper's networks, batch 64: one epoch vs two.
    n = args.train_images
    images = make_chest_phantoms(n + args.score_images, image_size=64, anomaly_fraction=0.0,
                                 random_state=0).images
    train, score = images[:n], images[n:]

    def oneclass(epochs):
        return lambda: OneClassAdversarialDetector(max_epochs=epochs, batch_size=64, device=str(device),
                                                   random_state=0)

    rates, detector = training_rate(oneclass(1), oneclass(2), train, None, n)
    rates.update(scoring_rate(detector, score))
    results["detectors"]["OneClassAdversarialDetector"] = {
        "networks": "paper: 64 px, channels (64, 128, 256, 512), latent 100, U+D+E; batch 64", **rates}
    print(json.dumps(results["detectors"], indent=1), flush=True)

    # HealthyGAN, the paper's networks, batch 16: two iterations vs four. An iteration
    # is one critic step (16 translations of the mix, 16 real images); every second
    # one a generator step (16 + 16 translations). Counted per known-normal image.
    size = args.healthygan_size
    normal = make_chest_phantoms(64, image_size=size, anomaly_fraction=0.0, random_state=0).images
    mixed = make_chest_phantoms(64, image_size=size, anomaly_fraction=0.5, random_state=1).images
    X = np.concatenate([normal, mixed])
    y = np.r_[np.zeros(len(normal)), -np.ones(len(mixed))]

    def healthygan(iterations):
        return lambda: HealthyGAN(max_iter=iterations, batch_size=16, device=str(device), random_state=0)

    rates, detector = training_rate(healthygan(2), healthygan(4), X, y, 2 * 16)
    score_side = make_chest_phantoms(min(args.score_images, 64), image_size=size, random_state=2).images
    rates.update(scoring_rate(detector, score_side))
    iterations_per_s = rates["train_images_per_s"] / 16
    results["detectors"]["HealthyGAN"] = {
        "networks": f"paper: width 64, 6 residual blocks, critic 'auto', {size} px; batch 16",
        "iterations_per_s": iterations_per_s,
        "hours_for_400k_iterations": 400_000 / iterations_per_s / 3600,
        **rates,
    }
    for entry in results["detectors"].values():
        entry["train_share_of_matmul_rate"] = entry["train_achieved_gflops"] / peak
        entry["score_share_of_matmul_rate"] = entry["score_achieved_gflops"] / peak
    print(json.dumps(results["detectors"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
