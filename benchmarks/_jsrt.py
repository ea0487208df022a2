"""The JSRT patch protocol shared by the GAN benchmarks: split, baseline, cut-offs.

The P-AnoGAN patch protocol (:func:`skanomaly.datasets.jsrt_patch_protocol`): patches
of the lung fields after CLAHE, training on the patches of normal studies only. Its
test studies (held-out normal studies and every nodule study) are split once more by
study into a validation half, which makes every choice (score, epoch, Youden
cut-off), and a test half, looked at only for the reported figures. The trivial
one-class baseline (Mahalanobis distance of each patch's mean and standard deviation
of intensity from the training patches) is scored on the same patches.
"""

import platform
import time

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.model_selection import GroupShuffleSplit

from skanomaly.datasets import jsrt_patch_protocol
from skanomaly.metrics import anomaly_roc_auc, youden_cutoff


def add_protocol_arguments(parser, max_train=8000):
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--max-train", type=int, default=max_train)
    parser.add_argument("--max-normal-eval", type=int, default=1500, help="normal patches per evaluation half")
    parser.add_argument("--seed", type=int, default=0)


def intensity_features(patches):
    flat = patches.reshape(len(patches), -1)
    return np.column_stack([np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)])


def _subsample_normals(y, max_normal, rng):
    normal = np.flatnonzero(y == 0)
    keep = rng.choice(normal, min(max_normal, normal.size), replace=False)
    return np.sort(np.concatenate([keep, np.flatnonzero(y == 1)]))


def at_cutoff(y, scores, threshold):
    """Sensitivity and specificity of ``score <= threshold`` flagged as abnormal."""
    flagged = scores <= threshold
    return float(flagged[y == 1].mean()), float(1 - flagged[y == 0].mean())


def load_protocol(args):
    """Training patches, validation and test halves, counts and the protocol's seconds."""
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    data = jsrt_patch_protocol(args.data_dir, patch_size=args.patch_size, stride=args.stride,
                               size=args.size, random_state=args.seed)
    seconds = time.perf_counter() - start
    train = data.X_train[rng.choice(len(data.X_train), min(args.max_train, len(data.X_train)), replace=False)]
    halves = GroupShuffleSplit(n_splits=1, train_size=0.5, random_state=args.seed)
    val_idx, test_idx = next(halves.split(data.X_test, data.y_test, groups=data.test_study_ids))
    val_idx = val_idx[_subsample_normals(data.y_test[val_idx], args.max_normal_eval, rng)]
    test_idx = test_idx[_subsample_normals(data.y_test[test_idx], args.max_normal_eval, rng)]
    split = dict(
        train=train, X_val=data.X_test[val_idx], y_val=data.y_test[val_idx],
        X_test=data.X_test[test_idx], y_test=data.y_test[test_idx],
    )
    counts = {
        "train_patches": len(train), "train_patches_available": int(len(data.X_train)),
        "train_studies": int(len(data.train_studies)),
        "validation": {"normal": int((split["y_val"] == 0).sum()), "abnormal": int((split["y_val"] == 1).sum()),
                       "studies": int(len(np.unique(data.test_study_ids[val_idx])))},
        "test": {"normal": int((split["y_test"] == 0).sum()), "abnormal": int((split["y_test"] == 1).sum()),
                 "studies": int(len(np.unique(data.test_study_ids[test_idx])))},
    }
    print(f"protocol in {seconds:.0f} s; {counts}", flush=True)
    return split, counts, seconds


def evaluate(split, val_scores, test_scores):
    """AUCs, and test sensitivity / specificity at the validation's Youden cut-off."""
    cut = youden_cutoff(split["y_val"], val_scores)
    sens, spec = at_cutoff(split["y_test"], test_scores, cut["threshold"])
    return {
        "validation_roc_auc": anomaly_roc_auc(split["y_val"], val_scores),
        "test_roc_auc": anomaly_roc_auc(split["y_test"], test_scores),
        "test_sensitivity_at_validation_cutoff": sens,
        "test_specificity_at_validation_cutoff": spec,
    }


def baseline_result(split):
    """The trivial one-class baseline on the same patches."""
    model = EmpiricalCovariance().fit(intensity_features(split["train"]))

    def score(X):
        return -model.mahalanobis(intensity_features(X))

    result = evaluate(split, score(split["X_val"]), score(split["X_test"]))
    print(f"baseline: {result}", flush=True)
    return result


def command_line(script, args):
    return f"python benchmarks/{script} " + " ".join(
        f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
        for k, v in vars(args).items() if k != "out"
    )


def machine():
    return {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
