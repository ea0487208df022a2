"""AnoGAN speed: the batched latent search against a per-sample loop, and training.

The scoring cost of AnoGAN is its latent search (``n_search_steps`` forward and
backward passes of G and D per sample). This times the detector's batched search
(``search_batch_size`` B) against the same code one sample at a time
(``search_batch_size=1``) on the same samples, checks that the scores agree to 1e-5
relative, and times GAN training (images/s) against the networks' FLOP count and a
measured matrix-multiply rate of this machine (a practical FLOP bound).

The networks are the paper's 64 x 64 DCGAN (widths 64-512, z of 100). They are timed
untrained: speed does not depend on the weights. The search runs ``--steps`` steps
(the paper: 500; time per step is constant, so ms/sample scale linearly).

    python benchmarks/bench_anogan_speed.py [--steps 10] [--n-samples 128]

Writes benchmarks/results/anogan_speed.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import AnoGANDetector

RESULTS = Path(__file__).parent / "results" / "anogan_speed.json"


def matmul_gflops(device, size=2048, repeats=5):
    """Best float32 rate of a square matrix product, GFLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def training_step_flops(detector, batch):
    net = detector.gan_
    x = torch.from_numpy(batch[:, None]).to(net.device)
    with FlopCounterMode(display=False) as counter:
        net.train_step((x, None))
    return counter.get_total_flops()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="search steps (paper: 500)")
    parser.add_argument("--n-samples", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    data = make_chest_phantoms(args.n_samples + args.train_images, image_size=64, anomaly_fraction=0.0,
                               random_state=0).images
    train, samples = data[: args.train_images], data[args.train_images :]
    detector = AnoGANDetector(max_epochs=1, n_search_steps=args.steps, device=args.device, random_state=0)
    fit_start = time.perf_counter()
    detector.fit(train)  # includes offset_ from min(256, n) training images
    fit_seconds = time.perf_counter() - fit_start
    device = detector.gan_.device if isinstance(detector.gan_.device, torch.device) else torch.device(
        detector.gan_.device)

    # Training throughput: one epoch of train_images, timed after the warm-up fit.
    # Scoring froze the networks (requires_grad off); training needs them back.
    for module in (detector.gan_.generator_, detector.gan_.discriminator_):
        module.requires_grad_(True)
    detector.gan_.partial_fit(train[:, None])
    epoch_start = time.perf_counter()
    detector.gan_.partial_fit(train[:, None])
    epoch_seconds = time.perf_counter() - epoch_start
    flops_per_step = training_step_flops(detector, train[:64])
    images_per_s = args.train_images / epoch_seconds
    achieved = flops_per_step / 64 * images_per_s / 1e9
    peak = matmul_gflops(device)

    # FLOPs of one search step per sample (G and D forward and backward, for z only).
    probe = samples[:8]
    detector.set_params(n_search_steps=1)
    with FlopCounterMode(display=False) as counter:
        detector.score_samples(probe)
    one_step = counter.get_total_flops()
    detector.set_params(n_search_steps=0)
    with FlopCounterMode(display=False) as counter:
        detector.score_samples(probe)
    flops_per_search_step = (one_step - counter.get_total_flops()) / len(probe)
    detector.set_params(n_search_steps=args.steps)

    timings, reference = {}, None
    for batch_size in args.batch_sizes:
        detector.set_params(search_batch_size=batch_size)
        detector.score_samples(samples[: min(batch_size, 8)])  # warm-up
        start = time.perf_counter()
        scores = detector.score_samples(samples)
        seconds = time.perf_counter() - start
        if reference is None:
            reference = scores
        agreement = float(np.max(np.abs(scores - reference) / np.abs(reference)))
        timings[str(batch_size)] = {
            "ms_per_sample": 1000 * seconds / len(samples),
            "ms_per_sample_at_500_steps": 1000 * seconds / len(samples) * 500 / args.steps,
            "max_relative_difference_to_batch_1": agreement,
            "achieved_gflops": flops_per_search_step * args.steps * len(samples) / seconds / 1e9,
        }
        print(f"search batch {batch_size}: {timings[str(batch_size)]['ms_per_sample']:.2f} ms/sample "
              f"({args.steps} steps), {timings[str(batch_size)]['achieved_gflops']:.0f} GFLOP/s; "
              f"max rel. diff to batch 1 {agreement:.2e}", flush=True)
    loop = timings[str(args.batch_sizes[0])]["ms_per_sample"]
    for entry in timings.values():
        entry["speedup_over_per_sample_loop"] = loop / entry["ms_per_sample"]

    results = {
        "command": "python benchmarks/bench_anogan_speed.py " + " ".join(
            f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in vars(args).items() if k != "out"
        ),
        "machine": {
            "platform": platform.platform(),
            "device": str(device),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "networks": "paper DCGAN, 64 x 64, channels (64, 128, 256, 512), latent 100, untrained",
        "search_steps_timed": args.steps,
        "n_samples": len(samples),
        "search": timings,
        "search_gflop_per_sample_step": flops_per_search_step / 1e9,
        "matmul_gflops_of_this_machine": peak,
        "training": {
            "images_per_s": images_per_s,
            "gflop_per_training_step_of_64": flops_per_step / 1e9,
            "achieved_gflops": achieved,
            "matmul_gflops_of_this_machine": peak,
            "fraction_of_matmul_rate": achieved / peak,
        },
        "fit_seconds_including_offset": fit_seconds,
    }
    print(json.dumps(results["training"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
