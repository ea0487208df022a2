"""SyntheticAnomalyDetector against the CAE and the intensity baseline on phantoms, five seeds.

The gallery example's setting (``examples/plot_synthetic_phantoms.py``, the floor
test's): 16 px chest phantoms, lungs only, 300 normal training phantoms and 200 test
phantoms, half with a nodule. ``[opacity]`` trains on opacities only (the
pediatric benchmarks' recommended setting; a phantom nodule is a bright disc). The CAE gets the same epochs and a small network (the
setting of notebook 6); its mean squared error and top-5 scores are both reported.

    python benchmarks/bench_synthetic_phantoms.py --seeds 0 1 2 3 4

Writes benchmarks/results/synthetic_phantoms.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector, SyntheticAnomalyDetector
from skanomaly.metrics import anomaly_roc_auc, intensity_baseline_scores

RESULTS = Path(__file__).parent / "results" / "synthetic_phantoms.json"


def lungs_only(data):
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    train = make_chest_phantoms(300, image_size=16, anomaly_fraction=0.0, random_state=3)
    test = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=4)
    X, X_test, y = lungs_only(train), lungs_only(test), test.labels
    runs = {}
    for seed in args.seeds:
        start = time.perf_counter()
        det = SyntheticAnomalyDetector(base_channels=8, depth=2, max_epochs=args.epochs, max_anomaly_size=0.25,
                                       random_state=seed).fit(X)  # fmt: skip
        seconds = time.perf_counter() - start
        opacity = clone(det).set_params(anomaly_kinds="opacity").fit(X)
        cae = CAEDetector(channels=(16, 32), anomaly_score="mse", augment=None, lr=2e-3, max_epochs=args.epochs,
                          random_state=seed).fit(X)  # fmt: skip
        cae_mse = anomaly_roc_auc(y, cae.score_samples(X_test))
        cae.set_params(anomaly_score=("topk", 5))
        runs[str(seed)] = {
            "SyntheticAnomalyDetector": anomaly_roc_auc(y, det.score_samples(X_test)),
            "SyntheticAnomalyDetector[opacity]": anomaly_roc_auc(y, opacity.score_samples(X_test)),
            "CAEDetector mse": cae_mse,
            "CAEDetector top-5": anomaly_roc_auc(y, cae.score_samples(X_test)),
            "synthetic_fit_seconds": seconds,
        }
        print(seed, runs[str(seed)], flush=True)
    summary = {}
    for name in ("SyntheticAnomalyDetector", "SyntheticAnomalyDetector[opacity]", "CAEDetector mse",
                 "CAEDetector top-5"):
        values = [run[name] for run in runs.values()]
        summary[name] = {"mean": float(np.mean(values)),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}  # fmt: skip
    results = {
        "protocol": __doc__.strip().splitlines()[0],
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "baseline_intensity_mahalanobis": {"test_roc_auc": anomaly_roc_auc(y, intensity_baseline_scores(X, X_test))},
        "runs": runs,
        "test_roc_auc": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
