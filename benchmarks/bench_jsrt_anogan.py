"""AnoGAN on the JSRT lung-nodule patch protocol, scaled down to fit a CPU.

The P-AnoGAN patch protocol (:func:`skanomaly.datasets.jsrt_patch_protocol`): patches
of the lung fields after CLAHE, training on the patches of normal studies only. Its
test studies (held-out normal studies and every nodule study) are split once more by
study into a validation half, which chooses the anomaly score and the Youden cut-off,
and a test half, looked at only for the reported figures. The trivial one-class
baseline (Mahalanobis distance of each patch's mean and standard deviation of
intensity from the training patches) is scored on the same patches.

Scaled down from the paper so that it runs on a 2-core CPU in about a quarter of an
hour: films at 512 px with 32 px patches (the same anatomy as 64 px at 1024), a
subsample of the training and normal evaluation patches, a small DCGAN, and fewer
search steps; all of it is recorded in the JSON.

    python benchmarks/bench_jsrt_anogan.py --data-dir ../shared/data/jsrt

Writes benchmarks/results/jsrt_anogan.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.model_selection import GroupShuffleSplit

from skanomaly.datasets import jsrt_patch_protocol
from skanomaly.detectors import AnoGANDetector
from skanomaly.metrics import anomaly_roc_auc, youden_cutoff

RESULTS = Path(__file__).parent / "results" / "jsrt_anogan.json"
SCORES = ["anogan", "residual", "feature", "discriminator"]


def intensity_features(patches):
    flat = patches.reshape(len(patches), -1)
    return np.column_stack([np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)])


def subsample_normals(y, max_normal, rng):
    normal = np.flatnonzero(y == 0)
    keep = rng.choice(normal, min(max_normal, normal.size), replace=False)
    return np.sort(np.concatenate([keep, np.flatnonzero(y == 1)]))


def at_cutoff(y, scores, threshold):
    flagged = scores <= threshold
    return float(flagged[y == 1].mean()), float(1 - flagged[y == 0].mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--max-train", type=int, default=8000)
    parser.add_argument("--max-normal-eval", type=int, default=1500, help="normal patches per evaluation half")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--search-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    start = time.perf_counter()
    data = jsrt_patch_protocol(args.data_dir, patch_size=args.patch_size, stride=args.stride,
                               size=args.size, random_state=args.seed)
    load_seconds = time.perf_counter() - start
    train = data.X_train[rng.choice(len(data.X_train), min(args.max_train, len(data.X_train)), replace=False)]

    halves = GroupShuffleSplit(n_splits=1, train_size=0.5, random_state=args.seed)
    val_idx, test_idx = next(halves.split(data.X_test, data.y_test, groups=data.test_study_ids))
    val_idx = val_idx[subsample_normals(data.y_test[val_idx], args.max_normal_eval, rng)]
    test_idx = test_idx[subsample_normals(data.y_test[test_idx], args.max_normal_eval, rng)]
    X_val, y_val = data.X_test[val_idx], data.y_test[val_idx]
    X_test, y_test = data.X_test[test_idx], data.y_test[test_idx]
    counts = {
        "train_patches": len(train), "train_studies": int(len(data.train_studies)),
        "validation": {"normal": int((y_val == 0).sum()), "abnormal": int((y_val == 1).sum()),
                       "studies": int(len(np.unique(data.test_study_ids[val_idx])))},
        "test": {"normal": int((y_test == 0).sum()), "abnormal": int((y_test == 1).sum()),
                 "studies": int(len(np.unique(data.test_study_ids[test_idx])))},
    }
    print(f"protocol in {load_seconds:.0f} s; {counts}", flush=True)

    baseline_model = EmpiricalCovariance().fit(intensity_features(train))

    def baseline(X):
        return -baseline_model.mahalanobis(intensity_features(X))

    cut = youden_cutoff(y_val, baseline(X_val))
    base_scores = baseline(X_test)
    baseline_result = {
        "validation_roc_auc": anomaly_roc_auc(y_val, baseline(X_val)),
        "test_roc_auc": anomaly_roc_auc(y_test, base_scores),
    }
    sens, spec = at_cutoff(y_test, base_scores, cut["threshold"])
    baseline_result.update(test_sensitivity_at_cutoff=sens, test_specificity_at_cutoff=spec)
    print(f"baseline: {baseline_result}", flush=True)

    detector = AnoGANDetector(
        channels=tuple(args.channels), latent_dim=args.latent_dim, max_epochs=args.epochs,
        n_search_steps=args.search_steps, n_offset_samples=256, random_state=args.seed,
    )
    start = time.perf_counter()
    detector.fit(train)
    train_seconds = time.perf_counter() - start
    print(f"trained in {train_seconds:.0f} s", flush=True)

    per_score = {}
    for score in SCORES:
        detector.set_params(anomaly_score=score)
        start = time.perf_counter()
        val_scores = detector.score_samples(X_val)
        test_scores = detector.score_samples(X_test)
        seconds = time.perf_counter() - start
        cut = youden_cutoff(y_val, val_scores)
        sens, spec = at_cutoff(y_test, test_scores, cut["threshold"])
        per_score[score] = {
            "validation_roc_auc": anomaly_roc_auc(y_val, val_scores),
            "test_roc_auc": anomaly_roc_auc(y_test, test_scores),
            "test_sensitivity_at_validation_cutoff": sens,
            "test_specificity_at_validation_cutoff": spec,
            "score_ms_per_patch": 1000 * seconds / (len(X_val) + len(X_test)),
        }
        print(score, {k: round(v, 3) for k, v in per_score[score].items()}, flush=True)
    chosen = max(SCORES, key=lambda s: per_score[s]["validation_roc_auc"])

    results = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": "python benchmarks/bench_jsrt_anogan.py " + " ".join(
            f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in vars(args).items() if k != "out"
        ),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "differences_from_the_paper": (
            f"films at {args.size} px (paper 1024) with {args.patch_size} px patches (paper 64 at "
            f"1024: the same anatomy); {len(train)} training patches (of {len(data.X_train)}); "
            f"DCGAN channels {tuple(args.channels)} (paper 64-512 at 64 px); {args.epochs} epochs; "
            f"{args.search_steps} search steps (paper 500); normal evaluation patches subsampled; "
            "one training seed"
        ),
        "counts": counts,
        "protocol_seconds": load_seconds,
        "baseline_intensity_mahalanobis": baseline_result,
        "anogan": {"train_seconds": train_seconds, "per_score": per_score,
                   "score_chosen_on_validation": chosen,
                   "test_roc_auc_of_chosen": per_score[chosen]["test_roc_auc"]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"chosen on validation: {chosen}; test AUC {per_score[chosen]['test_roc_auc']:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
