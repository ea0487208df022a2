"""Whole-image one-class protocol on the pediatric chest X-ray set (normal vs pneumonia).

Protocol (shared/data/README.md, after Tang et al. ISBI 2019): images resized to 64x64;
patients split into train / validation / test with no patient in two splits; the
detectors train on train-split NORMAL images only. The validation split (NORMAL +
PNEUMONIA) chooses among each detector's paper scores and fixes the Youden cut-off; the
test split, never looked at for any choice, gives the reported ROC AUC and the
sensitivity / specificity at that cut-off. Labels: 1 = pneumonia, 0 = normal.

Every detector is trained once per seed of ``--seeds`` on the same split; the JSON has
each seed's figures and their mean and spread. Beside the detectors, the trivial
one-class baseline (the Mahalanobis distance of each image's mean and standard
deviation of intensity from the training normals) is scored on the same split: a
detector that does not beat it has learned exposure, not anatomy.

    python benchmarks/bench_pediatric.py --data-dir ../shared/data/pediatric_cxr --seeds 0 1 2

Writes benchmarks/results/pediatric.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from sklearn.covariance import EmpiricalCovariance
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import Pipeline

from skanomaly.datasets import load_pediatric_cxr
from skanomaly.detectors import (
    AlphaGANDetector,
    BiGANDetector,
    CAEDetector,
    HealthyGAN,
    OneClassAdversarialDetector,
    VAEDetector,
)
from skanomaly.metrics import anomaly_roc_auc, youden_cutoff
from skanomaly.preprocessing import CLAHE

RESULTS = Path(__file__).parent / "results" / "pediatric.json"


def patient_split(patient_ids, labels, seed):
    """Train (normal patients only), validation and test index arrays, grouped by patient."""
    patients = np.asarray(patient_ids)
    normal = np.flatnonzero(labels == 0)
    abnormal = np.flatnonzero(labels == 1)
    # 60 % of normal patients train; the other 40 % and all pneumonia patients are
    # halved, by patient, into validation and test.
    outer = GroupShuffleSplit(n_splits=1, train_size=0.6, random_state=seed)
    train_pos, rest_pos = next(outer.split(normal, groups=patients[normal]))
    train, normal_rest = normal[train_pos], normal[rest_pos]
    halves = GroupShuffleSplit(n_splits=1, train_size=0.5, random_state=seed + 1)
    val_n, test_n = next(halves.split(normal_rest, groups=patients[normal_rest]))
    val_a, test_a = next(halves.split(abnormal, groups=patients[abnormal]))
    validation = np.concatenate([normal_rest[val_n], abnormal[val_a]])
    test = np.concatenate([normal_rest[test_n], abnormal[test_a]])
    assert not set(patients[train]) & (set(patients[validation]) | set(patients[test]))
    assert not set(patients[validation]) & set(patients[test])
    return train, validation, test


def intensity_features(images):
    """Each image's mean and standard deviation of intensity, ``(n, 2)``."""
    flat = images.reshape(len(images), -1)
    return np.column_stack([np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)])


def intensity_baseline(data, split):
    """Mahalanobis distance of (mean, std) from the training normals; higher = normal
    score is its negative. Nothing is chosen on validation except the cut-off."""
    train, validation, test = split
    model = EmpiricalCovariance().fit(intensity_features(data.images[train]))

    def scores(idx):
        return -model.mahalanobis(intensity_features(data.images[idx]))

    cut = youden_cutoff(data.labels[validation], scores(validation))
    test_scores = scores(test)
    flagged = test_scores <= cut["threshold"]
    y_test = data.labels[test]
    return {
        "validation_roc_auc": anomaly_roc_auc(data.labels[validation], scores(validation)),
        "test_roc_auc": anomaly_roc_auc(y_test, test_scores),
        "test_sensitivity_at_cutoff": float(flagged[y_test == 1].mean()),
        "test_specificity_at_cutoff": float(1 - flagged[y_test == 0].mean()),
    }


def healthygan_sets(data, split, seed, same_sets=False):
    """HealthyGAN's two training sets on the protocol's split, and its validation.

    B (``y = 0``) is half of the training normal patients; the unlabelled mix A
    (``y = -1``) is the other half plus, for as many images again, pneumonia patients
    drawn from the validation split (their labels are never used), so A is about half
    pneumonia. Those patients leave validation; the test split is the protocol's own.
    ``same_sets``: A is B itself (the collapse the paper warns of).

    Returns ``(X, y, validation, proportions)``.
    """
    train, validation, _ = split
    patients = np.asarray(data.patient_ids)
    halves = GroupShuffleSplit(n_splits=1, train_size=0.5, random_state=seed + 2)
    b_pos, a_pos = next(halves.split(train, groups=patients[train]))
    known, mix_normal = train[b_pos], train[a_pos]
    if same_sets:
        mix = known
    else:
        sick = validation[data.labels[validation] == 1]
        order = np.random.default_rng(seed + 3).permutation(np.unique(patients[sick]))
        counts = np.array([np.sum(patients[sick] == p) for p in order])
        chosen = set(order[: int(np.searchsorted(np.cumsum(counts), len(mix_normal))) + 1])
        mix_sick = sick[np.isin(patients[sick], list(chosen))]
        validation = validation[~np.isin(patients[validation], list(chosen))]
        mix = np.concatenate([mix_normal, mix_sick])
    X = data.images[np.concatenate([known, mix])]
    y = np.r_[np.zeros(len(known), dtype=int), -np.ones(len(mix), dtype=int)]
    proportions = {
        "known_normal_B": int(len(known)),
        "unlabelled_A": int(len(mix)),
        "unlabelled_A_pneumonia_share": float(np.mean(data.labels[mix] == 1)),
        "validation_left": {"normal": int(np.sum(data.labels[validation] == 0)),
                            "pneumonia": int(np.sum(data.labels[validation] == 1))},
        "A_is_B": bool(same_sets),
    }
    return X, y, validation, proportions


def detectors(args, seed):
    common = dict(
        lr=args.lr, batch_size=32, max_epochs=args.epochs, random_state=seed, device="auto"
    )
    # Tang et al.'s own settings (batch 64, Adam 5e-4, 15 epochs, 64 px): the
    # defaults; each ablation of the paper's table is one entry.
    oneclass = {
        f"OneClassAdversarialDetector[{components}]": (
            OneClassAdversarialDetector(
                components=components, max_epochs=args.oneclass_epochs, random_state=seed, device="auto"
            ),
            ["paper", "reconstruction"]
            + (["discriminator"] if "D" in components else [])
            + (["latent"] if "E" in components else []),
        )
        for components in ("U", "U+E", "U+D", "U+D+E")
    }
    # HealthyGAN at a CPU budget (the paper: width 64, 6 residual blocks, 400,000
    # iterations at 256 px); its other settings are the paper's.
    healthygan = {
        name: (
            HealthyGAN(generator_width=args.healthygan_width, n_residual_blocks=args.healthygan_blocks,
                       critic_width=args.healthygan_width, max_iter=args.healthygan_iterations,
                       random_state=seed, device="auto"),
            ["paper", "mask"],
        )
        for name in ("HealthyGAN", "HealthyGAN[A=B]")
    }
    # The hand X-ray paper's GANs at a CPU budget (the paper: 128 px, widths 64-1024,
    # 500 epochs); latent 100, batch 16, the learning rates, losses and flips are the
    # paper's, and validation chooses among Table 1's scores.
    handxray = dict(channels=tuple(args.handxray_channels), max_epochs=args.handxray_epochs,
                    attention=not args.handxray_no_attention, random_state=seed, device="auto")
    gans = {
        "BiGANDetector": (BiGANDetector(**handxray), ["discriminator", "mse", ("topk", 200)]),
        # Minibatch-discrimination kernels of 16 dimensions (the code's 256 make a
        # 2048 x 64 x 256 tensor at these widths, most of the training time on a CPU).
        "AlphaGANDetector": (
            AlphaGANDetector(minibatch_kernel_dims=args.alphagan_kernel_dims, **handxray),
            ["paper", "discriminator", "code", "mse", ("topk", 200)],
        ),
    }
    return {
        **oneclass,
        **healthygan,
        **gans,
        "CAEDetector": (
            CAEDetector(channels=(16, 32, 64, 128), anomaly_score="mse", **common),
            ["mse", "l1", ("topk", 200), ("topk", 200, "l1")],
        ),
        "VAEDetector": (
            VAEDetector(channels=(16, 32, 64, 128), latent_dim=128, anomaly_score="kld", **common),
            ["kld", "mse", "l1", "mse+kld", "l1+kld", ("topk", 200), ("topk", 200, "l1")],
        ),
    }


def evaluate(name, det, candidate_scores, data, split, seed=0):
    train, validation, test = split
    extra = {}
    if isinstance(det, HealthyGAN):
        X, y, validation, extra["training_sets"] = healthygan_sets(data, split, seed, same_sets="A=B" in name)
    else:
        X, y = data.images[train], None
    start = time.perf_counter()
    det.fit(X, y)
    train_seconds = time.perf_counter() - start
    if isinstance(det, HealthyGAN):
        trained_images = det.max_iter * det.batch_size
    else:
        trained_images = len(train) * len(det.history_)
    per_score, validation_scores = {}, {}
    for score in candidate_scores:
        det.set_params(anomaly_score=score)
        key = json.dumps(score)
        validation_scores[key] = det.score_samples(data.images[validation])
        per_score[key] = anomaly_roc_auc(data.labels[validation], validation_scores[key])
    chosen = max(per_score, key=per_score.get)
    by_key = {json.dumps(score): score for score in candidate_scores}
    det.set_params(anomaly_score=by_key[chosen])
    cut = youden_cutoff(data.labels[validation], validation_scores[chosen])
    start = time.perf_counter()
    test_scores = det.score_samples(data.images[test])
    score_ms = 1000 * (time.perf_counter() - start) / len(test)
    flagged = test_scores <= cut["threshold"]
    y_test = data.labels[test]
    test_auc_all = {chosen: anomaly_roc_auc(y_test, test_scores)}
    for score in candidate_scores:  # reported for transparency, not used for any choice
        if json.dumps(score) != chosen:
            det.set_params(anomaly_score=score)
            test_auc_all[json.dumps(score)] = anomaly_roc_auc(y_test, det.score_samples(data.images[test]))
    result = {
        "params": {k: v for k, v in det.get_params().items() if k not in ("callbacks", "anomaly_score")},
        "validation_roc_auc_per_score": per_score,
        "chosen_score": chosen,
        "test_roc_auc": test_auc_all[chosen],
        "test_roc_auc_per_score": {key: test_auc_all[key] for key in by_key},
        "youden_cutoff_from_validation": cut,
        "test_sensitivity_at_cutoff": float(flagged[y_test == 1].mean()),
        "test_specificity_at_cutoff": float(1 - flagged[y_test == 0].mean()),
        "train_seconds": train_seconds,
        "score_ms_per_image": score_ms,
        "final_train_loss": float(det.history_[-1, "train_loss"]),
        "train_images_per_second": trained_images / train_seconds,
        **extra,
    }
    print(
        f"{name}: chosen {chosen} (validation AUC {per_score[chosen]:.3f}); test AUC "
        f"{result['test_roc_auc']:.3f}; sens/spec {result['test_sensitivity_at_cutoff']:.2f}/"
        f"{result['test_specificity_at_cutoff']:.2f}; train {train_seconds:.0f} s; "
        f"{score_ms:.2f} ms/image",
        flush=True,
    )
    return result


def validation_aucs(det, candidate_scores, images, labels):
    """Validation ROC AUC of each candidate score of a fitted detector (or pipeline)."""
    aucs = {}
    for score in candidate_scores:
        det.set_params(**{("det__anomaly_score" if hasattr(det, "steps") else "anomaly_score"): score})
        aucs[json.dumps(score)] = anomaly_roc_auc(labels, det.score_samples(images))
    return aucs


def generalisation(name, det, candidate_scores, data, split, protocol_run=None):
    """Does the detector survive a change of image statistics the training set lacked?

    1. CLAHE (1/8-side tiles, the P-AnoGAN clip limit) before the detector vs none:
       validation AUC of each score.
    2. Exposure held back: the brightest (darkest) quarter of the training normals by
       mean intensity is removed from training; validation AUC is then measured
       separately on the validation films beyond that quartile (statistics never seen
       in training) and on those within the training range, beside the intensity
       baseline refitted on the same reduced training set. The test split is not used.
    """
    train, validation, _ = split
    images, labels = data.images, data.labels
    report = {}
    start = time.perf_counter()
    piped = Pipeline([("clahe", CLAHE(kernel_size=0.125, clip_limit=0.01)), ("det", clone(det))])
    piped.fit(images[train])
    report["clahe"] = {
        "validation_roc_auc_per_score": validation_aucs(
            piped, candidate_scores, images[validation], labels[validation]
        ),
        "train_seconds": time.perf_counter() - start,
    }
    if protocol_run is not None:
        # The protocol's own fit of this seed is the same fit (same data, same seed).
        report["no_clahe"] = {
            "validation_roc_auc_per_score": protocol_run["validation_roc_auc_per_score"],
            "train_seconds": protocol_run["train_seconds"],
        }
    else:
        start = time.perf_counter()
        plain = clone(det).fit(images[train])
        report["no_clahe"] = {
            "validation_roc_auc_per_score": validation_aucs(
                plain, candidate_scores, images[validation], labels[validation]
            ),
            "train_seconds": time.perf_counter() - start,
        }
    print(
        f"{name}: validation AUC per score with CLAHE {report['clahe']['validation_roc_auc_per_score']}, "
        f"without {report['no_clahe']['validation_roc_auc_per_score']}",
        flush=True,
    )
    train_means = intensity_features(images[train])[:, 0]
    validation_means = intensity_features(images[validation])[:, 0]
    for side, quantile in (("brightest", 0.75), ("darkest", 0.25)):
        cut = float(np.quantile(train_means, quantile))
        beyond_train = train_means >= cut if side == "brightest" else train_means <= cut
        beyond_val = validation_means >= cut if side == "brightest" else validation_means <= cut
        kept = train[~beyond_train]
        model = clone(det).fit(images[kept])
        baseline = EmpiricalCovariance().fit(intensity_features(images[kept]))
        entry = {"mean_intensity_cut": cut, "n_train": int(len(kept))}
        for subset, mask in (("held_back_statistics", beyond_val), ("training_range", ~beyond_val)):
            idx = validation[mask]
            entry[subset] = {
                "n_normal": int((labels[idx] == 0).sum()),
                "n_pneumonia": int((labels[idx] == 1).sum()),
                "validation_roc_auc_per_score": validation_aucs(model, candidate_scores, images[idx], labels[idx]),
                "baseline_validation_roc_auc": anomaly_roc_auc(
                    labels[idx], -baseline.mahalanobis(intensity_features(images[idx]))
                ),
            }
        report[f"{side}_quartile_held_back"] = entry
        print(
            f"{name}: {side} quartile held back: validation AUC beyond it "
            f"{entry['held_back_statistics']['validation_roc_auc_per_score']} (baseline "
            f"{entry['held_back_statistics']['baseline_validation_roc_auc']:.3f}); within the training range "
            f"{entry['training_range']['validation_roc_auc_per_score']} (baseline "
            f"{entry['training_range']['baseline_validation_roc_auc']:.3f})",
            flush=True,
        )
    return report


def command_line(args):
    """The command that repeats this run (flags that are off and unset options left out)."""
    words = ["python benchmarks/bench_pediatric.py"]
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key == "out" or value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words.append(flag + " " + " ".join(map(str, value)))
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def make_parser():
    """The command line; ``bench_shift.py`` builds the seed papers' detectors from its
    defaults, so both benchmarks run them at the same CPU settings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with train/NORMAL and train/PNEUMONIA")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--oneclass-epochs", type=int, default=15,
        help="epochs of OneClassAdversarialDetector (the paper's 15; its other settings are the paper's)",
    )
    parser.add_argument("--healthygan-width", type=int, default=8,
                        help="HealthyGAN's generator and critic width (the paper's 64)")
    parser.add_argument("--healthygan-blocks", type=int, default=2,
                        help="HealthyGAN's residual blocks (the paper's 6)")
    parser.add_argument("--healthygan-iterations", type=int, default=3000,
                        help="HealthyGAN's training iterations of batch 16 (the paper's 400,000)")
    parser.add_argument("--handxray-channels", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="BiGAN's and alpha-GAN's widths (the paper's 64 ... 1024 at 128 px)")
    parser.add_argument("--handxray-epochs", type=int, default=3,
                        help="BiGAN's and alpha-GAN's epochs (the paper's 500)")
    parser.add_argument("--handxray-no-attention", action="store_true",
                        help="BiGAN and alpha-GAN without self-attention (the code's attention at 32 x 32 "
                        "costs most of a CPU's time at 64 px)")
    parser.add_argument("--alphagan-kernel-dims", type=int, default=16,
                        help="alpha-GAN's minibatch-discrimination kernel dimensions (the code's 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (random_state) of the detectors"
    )
    parser.add_argument(
        "--detectors", nargs="+", default=None,
        help="names of the detectors to run (default: all); with an existing --out of the "
        "same split, the others' results are kept",
    )
    parser.add_argument(
        "--generalisation", action="store_true",
        help="instead of the protocol, run the robustness checks (CLAHE vs none; the brightest "
        "and darkest quartile of training normals held back) for each chosen detector and seed",
    )
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)

    start = time.perf_counter()
    data = load_pediatric_cxr(args.data_dir, split="train", size=args.size)
    load_seconds = time.perf_counter() - start
    split = patient_split(data.patient_ids, data.labels, args.seed)
    counts = {
        name: {"normal": int((data.labels[idx] == 0).sum()), "pneumonia": int((data.labels[idx] == 1).sum())}
        for name, idx in zip(("train", "validation", "test"), split)
    }
    print(f"Loaded {len(data.labels)} images in {load_seconds:.1f} s; split {counts}", flush=True)
    results = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": command_line(args),
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "torch": torch.__version__,
        },
        "image_size": args.size,
        "split_counts": counts,
        "load_seconds": load_seconds,
        "baseline_intensity_mahalanobis": intensity_baseline(data, split),
        "detectors": {},
    }
    base = results["baseline_intensity_mahalanobis"]
    print(
        f"Baseline (Mahalanobis of mean/std intensity): validation AUC "
        f"{base['validation_roc_auc']:.3f}; test AUC {base['test_roc_auc']:.3f}",
        flush=True,
    )
    out = Path(args.out)
    if args.detectors is not None and out.exists():
        previous = json.loads(out.read_text())
        if previous.get("split_counts") == counts:
            # Other detectors keep their results; a detector run again keeps the
            # seeds it does not run now.
            results["detectors"] = {
                k: v if k not in args.detectors or args.generalisation else {
                    "per_seed": {s: r for s, r in v["per_seed"].items() if int(s) not in args.seeds}
                }
                for k, v in previous["detectors"].items()
            }
            results["command_per_detector"] = previous.get("command_per_detector", {})
            if "generalisation" in previous:
                results["generalisation"] = previous["generalisation"]
            for name in results["detectors"]:
                results["command_per_detector"].setdefault(name, previous["command"])
    out.parent.mkdir(parents=True, exist_ok=True)

    def summarise_and_write():
        # Written after every fit, so an interrupted run keeps what it measured.
        for name, entry in results["detectors"].items():
            aucs = [run["test_roc_auc"] for run in entry["per_seed"].values()]
            entry["test_roc_auc_mean"] = float(np.mean(aucs))
            entry["test_roc_auc_sd"] = float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0
            entry["seeds"] = sorted(int(s) for s in entry["per_seed"])
            entry["chosen_scores"] = [run["chosen_score"] for run in entry["per_seed"].values()]
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
        tmp.replace(out)

    for seed in args.seeds:
        for name, (det, candidates) in detectors(args, seed).items():
            if args.detectors is not None and name not in args.detectors:
                continue
            print(f"[seed {seed}] ", end="")
            if args.generalisation:
                report = results.setdefault("generalisation", {}).setdefault(name, {})
                protocol_run = results["detectors"].get(name, {}).get("per_seed", {}).get(str(seed))
                report[str(seed)] = generalisation(name, det, candidates, data, split, protocol_run)
                report[str(seed)]["command"] = results["command"]
            else:
                results.setdefault("command_per_detector", {})[name] = results["command"]
                per_seed = results["detectors"].setdefault(name, {"per_seed": {}}).setdefault("per_seed", {})
                per_seed[str(seed)] = evaluate(name, det, candidates, data, split, seed)
            summarise_and_write()
    summarise_and_write()
    for name, entry in results["detectors"].items():
        if args.detectors is None or name in args.detectors:
            print(
                f"{name}: test AUC {entry['test_roc_auc_mean']:.3f} +- {entry['test_roc_auc_sd']:.3f} "
                f"over seeds {entry['seeds']} (baseline {base['test_roc_auc']:.3f})"
            )
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
