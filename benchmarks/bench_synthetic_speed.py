"""Scoring speed of SyntheticAnomalyDetector at 128 x 128 (issue 19's target: 50 images/s
on the project's 2-core CPU), with its default network and the benchmarks' smaller one.

The weights do not change the arithmetic, so the network is fitted for one epoch on
synthetic phantoms; the timing is the median of five passes over 512 images, after a
warm-up pass.

    python benchmarks/bench_synthetic_speed.py

Writes benchmarks/results/synthetic_speed.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import SyntheticAnomalyDetector

RESULTS = Path(__file__).parent / "results" / "synthetic_speed.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    images = make_chest_phantoms(args.n_images, image_size=args.size, anomaly_fraction=0.0, random_state=0).images
    results = {
        "protocol": __doc__.strip().splitlines()[0],
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__},
        "image_size": args.size,
        "n_images": args.n_images,
        "settings": {},
    }  # fmt: skip
    for name, params in {"default (depth 4, base 16)": {}, "benchmarks (depth 3, base 16)": {"depth": 3}}.items():
        det = SyntheticAnomalyDetector(max_epochs=1, batch_size=64, random_state=0, **params).fit(images[:64])
        det.score_samples(images[:64])
        times = []
        for _ in range(5):
            start = time.perf_counter()
            det.score_samples(images)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        results["settings"][name] = {"params": params, "score_images_per_second": args.n_images / seconds,
                                     "seconds_per_pass": times}  # fmt: skip
        print(f"{name}: {args.n_images / seconds:.1f} images/s at {args.size} px", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
