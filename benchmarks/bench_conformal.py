"""False alarms on new films: the training offset, conformal calibration, and recalibration.

The pediatric set's normal films come in two acquisition batches, told apart by their
file names: ``IM-*`` (batch A) and ``NORMAL2-IM-*`` (batch B). Per seed:

* batch A normals are split by patient into training (50 %), calibration (20 %) and
  test (30 %); the detectors train on the training part only;
* batch B normals are split by patient into a recalibration set of ``--n-recalibrate``
  films and a test set;
* a random half of the pneumonia patients measures sensitivity.

Each detector flags test films three ways: by its own training offset
(``contamination="auto"``), by conformal p-values calibrated on batch A's calibration
films (:class:`skanomaly.conformal.ConformalDetector`, ``alpha`` 0.05 and 0.1), and by
the same p-values recalibrated on batch B's recalibration films. Reported: the
false-alarm rate on batch A and batch B test normals (the guarantee says at most alpha
on films exchangeable with the calibration films), and the share of pneumonia films
flagged. A third shift is synthetic: batch A's test films under gamma 0.8 (a softer
exposure curve), recalibrated on batch A's calibration films under the same gamma.
The trivial intensity baseline (Mahalanobis distance of mean and std intensity from
the training normals) is calibrated the same way: conformal calibration works for any
score.

One calibration set gives one draw of the false-alarm rate, which scatters around
alpha. The guarantee is about its expectation, so each seed also re-splits batch A's
calibration and test patients ``--resplits`` times at random (same sizes; scores are
computed once) and reports the mean false-alarm rate over the re-splits with its 5th
and 95th percentiles: the mean should sit at ``floor(alpha (n + 1)) / (n + 1)`` and
the percentiles show what one calibration set of this size gives.

    python benchmarks/bench_conformal.py --data-dir ../shared/data/pediatric_cxr --seeds 0 1 2

Writes benchmarks/results/conformal_pediatric.json.
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.covariance import EmpiricalCovariance
from sklearn.model_selection import GroupShuffleSplit

from skanomaly.conformal import ConformalDetector
from skanomaly.datasets import load_pediatric_cxr
from skanomaly.detectors import CAEDetector, VAEDetector

RESULTS = Path(__file__).parent / "results" / "conformal_pediatric.json"
ALPHAS = (0.05, 0.1)
GAMMA = 0.8


class IntensityBaseline(OutlierMixin, BaseEstimator):
    """The trivial one-class baseline as a detector: minus the Mahalanobis distance of
    each image's (mean, std) intensity from the training normals'."""

    def fit(self, X, y=None):
        self.model_ = EmpiricalCovariance().fit(self._features(X))
        train = self.score_samples(X)
        spread = 1.4826 * np.median(np.abs(train - np.median(train)))
        self.offset_ = float(np.median(train) - 3 * spread)  # the detectors' "auto" rule
        return self

    @staticmethod
    def _features(X):
        flat = np.asarray(X).reshape(len(X), -1)
        return np.column_stack([np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)])

    def score_samples(self, X):
        return -self.model_.mahalanobis(self._features(X))

    def predict(self, X):
        return np.where(self.score_samples(X) < self.offset_, -1, 1)


def split_by_patient(indices, patients, fractions, seed):
    """Consecutive patient-grouped parts of ``indices`` with the given shares."""
    parts, rest = [], np.asarray(indices)
    remaining = 1.0
    for i, fraction in enumerate(fractions[:-1]):
        splitter = GroupShuffleSplit(n_splits=1, train_size=fraction / remaining, random_state=seed + i)
        take, keep = next(splitter.split(rest, groups=patients[rest]))
        parts.append(rest[take])
        rest = rest[keep]
        remaining -= fraction
    parts.append(rest)
    return parts


def detectors(args, seed):
    common = dict(lr=args.lr, batch_size=32, max_epochs=args.epochs, random_state=seed, device="auto")
    return {
        "intensity_baseline": IntensityBaseline(),
        "CAEDetector": CAEDetector(channels=(16, 32, 64, 128), **common),
        "VAEDetector": VAEDetector(channels=(16, 32, 64, 128), latent_dim=128, **common),
    }


def flag_rates(model, images):
    return float((model.predict(images) == -1).mean())


def resplit_rates(scores, patients, n_calibration, alpha, n_resplits, seed):
    """False-alarm rates of ``n_resplits`` random patient-grouped calibration / test
    splits of the same normal images (scores computed once)."""
    from skanomaly.conformal import conformal_pvalues

    splitter = GroupShuffleSplit(n_splits=n_resplits, test_size=n_calibration / scores.size, random_state=seed)
    rates = []
    for test, calibration in splitter.split(scores, groups=patients):
        rates.append(float((conformal_pvalues(scores[calibration], scores[test]) <= alpha).mean()))
    rates = np.asarray(rates)
    return {
        "mean": float(rates.mean()),
        "p05": float(np.percentile(rates, 5)),
        "p95": float(np.percentile(rates, 95)),
        "n_resplits": n_resplits,
    }


def run_seed(args, data, seed):
    patients = np.asarray(data.patient_ids)
    batch_b = np.char.startswith(patients.astype(str), "NORMAL2")
    normal = data.labels == 0
    a_train, a_cal, a_test = split_by_patient(np.flatnonzero(normal & ~batch_b), patients, (0.5, 0.2, 0.3), seed)
    b_all = np.flatnonzero(normal & batch_b)
    share = args.n_recalibrate / b_all.size
    b_recal, b_test = split_by_patient(b_all, patients, (share, 1 - share), seed + 10)
    pneumonia = split_by_patient(np.flatnonzero(~normal), patients, (0.5, 0.5), seed + 20)[0]
    X = data.images
    gamma = {name: X[idx] ** GAMMA for name, idx in (("cal", a_cal), ("test", a_test))}
    sets = {"A_test": X[a_test], "B_test": X[b_test], "A_test_gamma": gamma["test"], "pneumonia": X[pneumonia]}
    counts = {
        "A_train": a_train.size, "A_calibration": a_cal.size, "A_test": a_test.size,
        "B_recalibration": b_recal.size, "B_test": b_test.size, "pneumonia": pneumonia.size,
    }
    print(f"[seed {seed}] {counts}", flush=True)
    results = {"counts": counts, "detectors": {}}
    for name, detector in detectors(args, seed).items():
        start = time.perf_counter()
        detector.fit(X[a_train])
        seconds = time.perf_counter() - start
        entry = {"train_seconds": seconds, "training_offset": {k: flag_rates(detector, v) for k, v in sets.items()}}
        for alpha in ALPHAS:
            conformal = ConformalDetector(detector, calibration="prefit", alpha=alpha).fit(X[a_cal])
            calibrated = {k: flag_rates(conformal, v) for k, v in sets.items()}
            conformal.calibrate(X[b_recal])
            on_b = {"B_test": flag_rates(conformal, sets["B_test"]), "pneumonia": flag_rates(conformal, sets["pneumonia"])}
            conformal.calibrate(gamma["cal"])
            on_gamma = {"A_test_gamma": flag_rates(conformal, sets["A_test_gamma"])}
            pooled = np.concatenate([a_cal, a_test])
            entry[f"conformal_alpha_{alpha}"] = {
                "calibrated_on_A": calibrated,
                "A_resplits": resplit_rates(
                    detector.score_samples(X[pooled]), patients[pooled], a_cal.size, alpha,
                    args.resplits, seed,
                ),
                "recalibrated_on_B": on_b,
                "recalibrated_on_A_gamma": on_gamma,
            }
        results["detectors"][name] = entry
        a05 = entry["conformal_alpha_0.05"]
        print(
            f"  {name}: train {seconds:.0f} s; false alarms on A / B / A-gamma: offset "
            f"{entry['training_offset']['A_test']:.3f} / {entry['training_offset']['B_test']:.3f} / "
            f"{entry['training_offset']['A_test_gamma']:.3f}; alpha 0.05 calibrated on A "
            f"{a05['calibrated_on_A']['A_test']:.3f} / {a05['calibrated_on_A']['B_test']:.3f} / "
            f"{a05['calibrated_on_A']['A_test_gamma']:.3f}; recalibrated "
            f"- / {a05['recalibrated_on_B']['B_test']:.3f} / {a05['recalibrated_on_A_gamma']['A_test_gamma']:.3f}; "
            f"A over {args.resplits} re-splits {a05['A_resplits']['mean']:.3f} "
            f"({a05['A_resplits']['p05']:.3f}-{a05['A_resplits']['p95']:.3f})",
            flush=True,
        )
    return results


def summarise(per_seed):
    """Mean and standard deviation over seeds of every rate, as nested dicts."""
    def walk(values):
        first = values[0]
        if isinstance(first, dict):
            return {key: walk([v[key] for v in values]) for key in first}
        array = np.asarray(values, dtype=float)
        return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0}

    return walk([run["detectors"] for run in per_seed.values()])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with train/NORMAL and train/PNEUMONIA")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-recalibrate", type=int, default=100, help="batch B films to recalibrate on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resplits", type=int, default=500, help="random calibration / test re-splits of batch A")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data = load_pediatric_cxr(args.data_dir, split="train", size=args.size)
    print(f"Loaded {len(data.labels)} images in {time.perf_counter() - start:.1f} s", flush=True)
    per_seed = {str(seed): run_seed(args, data, seed) for seed in args.seeds}
    n_cal = per_seed[str(args.seeds[0])]["counts"]["A_calibration"]
    results = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": "python benchmarks/bench_conformal.py --data-dir DATA " + " ".join(
            f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in vars(args).items()
            if k not in ("out", "data_dir")
        ),
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "torch": torch.__version__,
        },
        "alphas": ALPHAS,
        "gamma_shift": GAMMA,
        "expected_rate_if_exchangeable": {
            str(alpha): math.floor(alpha * (n_cal + 1)) / (n_cal + 1) for alpha in ALPHAS
        },
        "seeds": args.seeds,
        "per_seed": per_seed,
        "summary": summarise(per_seed),
        "total_seconds": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
