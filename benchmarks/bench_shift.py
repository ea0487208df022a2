"""Acquisition shift on the pediatric chest X-ray set: the protocol a random split hides.

Shift protocol (:func:`skanomaly.model_selection.acquisition_shift_split`): every film
gets grey-level statistics (mean, standard deviation, percentiles); the first
principal component of those statistics over the normal films is the main
acquisition axis (exposure and contrast); the brightest quarter of each class's
patients along it is held out as the test set, as films from another machine would
be. Detectors train on the other normal films; the validation set (20 % of the
training-side normal patients, and as many training-side pneumonia films) chooses
each detector's score and cut-off and is never from the held-out films. The random
protocol is ``bench_pediatric.py``'s patient split. Both report test ROC AUC,
sensitivity at 90 % specificity and at the validation cut-off, and the trivial
baseline (Mahalanobis distance of each film's mean and standard deviation from the
training normals) on the same films.

Diagnosis: on the test normals of each protocol, the Spearman correlation of each
detector's anomaly score with the film's mean intensity, contrast (standard
deviation) and lung area (LungMasker); a detector whose score tracks exposure fails
on a new machine. (Film size cannot be measured here: the files were all resized to
224 x 224.)

Detectors (``--detectors``): SyntheticAnomalyDetector, its variants ``[lungs]`` (the
films behind the packaged LungMasker), ``[opacity]`` and ``[lungs, opacity]`` (whole
films and lung fields with opacities as the only synthetic anomaly), the recipe's
variants ``[lungs, mottled]``, ``[lungs, opacity+mottled]`` (textured opacities) and
``[lungs, opacity, geometric augmentation]`` (``augment="hflip-affine"``),
``[standardize]`` and ``[none]``; CAEDetector and
its cures (``[CLAHE]``, ``[equalize]``, ``[no augmentation]``); VAEDetector; and the
seed papers' GANs at bench_pediatric.py's CPU settings
(``OneClassAdversarialDetector[U+D+E]`` and its ablations, ``HealthyGAN``,
``BiGANDetector``, ``AlphaGANDetector``).

    python benchmarks/bench_shift.py --data-dir ../shared/data/pediatric_cxr \\
        --detectors SyntheticAnomalyDetector --seeds 0 1 2 3 4

Writes (updates) benchmarks/results/shift.json (or ``--out``); runs of other detectors
are kept. ``--scores-dir`` also saves each run's validation and test scores, which
``bench_shift_scores.py`` reads (seed ensembles, exposure-adjusted scores).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).parent))
from bench_pediatric import healthygan_sets, make_parser, patient_split  # noqa: E402
from bench_pediatric import detectors as seed_paper_detectors  # noqa: E402

from skanomaly.datasets import load_pediatric_cxr  # noqa: E402
from skanomaly.detectors import CAEDetector, HealthyGAN, SyntheticAnomalyDetector, VAEDetector  # noqa: E402
from skanomaly.metrics import (  # noqa: E402
    anomaly_roc_auc,
    intensity_baseline_scores,
    sensitivity_at_specificity,
    youden_cutoff,
)
from skanomaly.model_selection import acquisition_shift_split  # noqa: E402
from skanomaly.preprocessing import CLAHE, HistogramEqualization, LungMasker  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "shift.json"


def shift_protocol(data, seed, held_out_fraction):
    """``(train, validation, test)``: held-out bright films as test; validation from
    the training side only."""
    train_side, test = acquisition_shift_split(
        data.images, data.labels, data.patient_ids, held_out_fraction=held_out_fraction
    )
    patients = np.asarray(data.patient_ids)
    inner = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
    fit_pos, val_pos = next(inner.split(train_side, groups=patients[train_side]))
    sick_side = np.setdiff1d(np.flatnonzero(data.labels == 1), test)
    rng = np.random.default_rng(seed)
    val_sick = rng.choice(sick_side, size=min(len(val_pos), len(sick_side)), replace=False)
    return train_side[fit_pos], np.concatenate([train_side[val_pos], val_sick]), test


# Detectors that score the lung fields only: they get the films behind the packaged
# LungMasker (NaN outside the lungs), computed once for all seeds. The same as a
# Pipeline([("lungs", LungMasker()), ...]), whose masker learns nothing from the data.
ON_LUNGS = {"SyntheticAnomalyDetector[lungs]", "SyntheticAnomalyDetector[lungs, opacity]",
            "SyntheticAnomalyDetector[lungs, mottled]", "SyntheticAnomalyDetector[lungs, opacity+mottled]",
            "SyntheticAnomalyDetector[lungs, opacity, geometric augmentation]"}


def detectors(args, seed):
    """``{name: (estimator, candidate scores)}``; the cures are pipelines of the CAE."""
    small = dict(lr=1e-3, batch_size=32, max_epochs=args.epochs, random_state=seed, device="auto")
    cae = CAEDetector(channels=(16, 32, 64, 128), **small)
    cae_scores = ["mse", "l1", ("topk", 200), ("topk", 200, "l1")]
    synthetic = dict(base_channels=args.synthetic_base_channels, depth=args.synthetic_depth,
                     max_epochs=args.synthetic_epochs, random_state=seed, device="auto")
    synthetic_scores = ["mean", ("topk", 200), "max"]
    # The seed papers' GANs at bench_pediatric.py's CPU settings (the ones its recorded
    # runs used: BiGAN and alpha-GAN without attention), so both protocols compare alike.
    pediatric = make_parser().parse_args(["--data-dir", args.data_dir, "--handxray-no-attention"])
    papers = {name: entry for name, entry in seed_paper_detectors(pediatric, seed).items()
              if not name.startswith(("CAEDetector", "VAEDetector"))}
    return {
        **papers,
        "SyntheticAnomalyDetector": (SyntheticAnomalyDetector(**synthetic), synthetic_scores),
        "SyntheticAnomalyDetector[opacity]": (
            SyntheticAnomalyDetector(anomaly_kinds=("opacity",), **synthetic), synthetic_scores),
        "SyntheticAnomalyDetector[lungs]": (SyntheticAnomalyDetector(**synthetic), synthetic_scores),
        # Pneumonia is an opacity; a foreign patch may teach what pneumonia does not look like.
        "SyntheticAnomalyDetector[lungs, opacity]": (
            SyntheticAnomalyDetector(anomaly_kinds=("opacity",), **synthetic), synthetic_scores),
        "SyntheticAnomalyDetector[lungs, mottled]": (
            SyntheticAnomalyDetector(anomaly_kinds=("mottled",), **synthetic), synthetic_scores),
        "SyntheticAnomalyDetector[lungs, opacity+mottled]": (
            SyntheticAnomalyDetector(anomaly_kinds=("opacity", "mottled"), **synthetic), synthetic_scores),
        # Rotations, scaling and shifts as well as flips: another patient's size and position.
        "SyntheticAnomalyDetector[lungs, opacity, geometric augmentation]": (
            SyntheticAnomalyDetector(anomaly_kinds=("opacity",), augment="hflip-affine", **synthetic), synthetic_scores),
        "SyntheticAnomalyDetector[standardize]": (
            SyntheticAnomalyDetector(normalization="standardize", **synthetic), synthetic_scores),
        "SyntheticAnomalyDetector[none]": (SyntheticAnomalyDetector(normalization=None, **synthetic),
                                           synthetic_scores),
        "CAEDetector": (cae, cae_scores),
        "CAEDetector[CLAHE]": (Pipeline([("clahe", CLAHE(kernel_size=0.125)), ("det", clone(cae))]), cae_scores),
        "CAEDetector[equalize]": (
            Pipeline([("equalize", HistogramEqualization()), ("det", clone(cae))]), cae_scores),
        # The CAE's default ("advanced") augmentation already draws brightness x U(0.8, 1.2):
        # the plain CAE is the intensity-augmented one; this is the control without it.
        "CAEDetector[no augmentation]": (clone(cae).set_params(augment=None), cae_scores),
        "VAEDetector": (
            VAEDetector(channels=(16, 32, 64, 128), latent_dim=128, **small),
            ["kld", "mse", "l1", "mse+kld", ("topk", 200)],
        ),
    }  # fmt: skip


def _set_score(det, score):
    key = "det__anomaly_score" if hasattr(det, "steps") else "anomaly_score"
    det.set_params(**{key: score})


def film_statistics(data, indices, lung_area):
    flat = data.images[indices].reshape(len(indices), -1)
    return {"mean intensity": flat.mean(1), "contrast (std)": flat.std(1), "lung area": lung_area[indices]}


def correlations(anomaly, stats):
    return {name: float(spearmanr(anomaly, values).statistic) for name, values in stats.items()}


def evaluate(name, det, candidates, data, split, lung_area, images):
    """Fit on ``images[train]`` (the films, or their lung fields), choose the score and
    cut-off on the validation films, report on the test films."""
    train, validation, test = split
    X, y, seed = images[train], None, det.get_params().get("random_state") or 0
    if isinstance(det, HealthyGAN):
        # Its unlabelled mix (bench_pediatric.healthygan_sets) draws pneumonia patients
        # from the training side's pneumonia films (the validation ones and those no
        # protocol set uses); those patients leave validation, which stays a subset of
        # the other detectors' validation films.
        unused_sick = np.setdiff1d(np.flatnonzero(data.labels == 1), np.concatenate([validation, test]))
        pool = np.concatenate([validation, unused_sick])
        X, y, kept, _ = healthygan_sets(data, (train, pool, test), seed, same_sets="A=B" in name)
        validation = validation[np.isin(validation, kept)]
    y_val, y_test = data.labels[validation], data.labels[test]
    start = time.perf_counter()
    det.fit(X, y)
    fit_seconds = time.perf_counter() - start
    val_scores, val_auc, test_scores = {}, {}, {}
    score_seconds = 0.0
    for score in candidates:
        _set_score(det, score)
        key = json.dumps(score)
        val_scores[key] = det.score_samples(images[validation])
        val_auc[key] = anomaly_roc_auc(y_val, val_scores[key])
        start = time.perf_counter()
        test_scores[key] = det.score_samples(images[test])
        score_seconds += time.perf_counter() - start
    chosen = max(val_auc, key=val_auc.get)
    cut = youden_cutoff(y_val, val_scores[chosen])
    scores = test_scores[chosen]
    flagged = scores <= cut["threshold"]
    normals = test[y_test == 0]
    result = {
        "chosen_score": chosen,
        "validation_roc_auc_per_score": val_auc,
        "test_roc_auc": anomaly_roc_auc(y_test, scores),
        "test_roc_auc_per_score": {k: anomaly_roc_auc(y_test, v) for k, v in test_scores.items()},
        "test_sensitivity_at_90_specificity": sensitivity_at_specificity(y_test, scores, specificity=0.9),
        "test_sensitivity_at_validation_cutoff": float(flagged[y_test == 1].mean()),
        "test_specificity_at_validation_cutoff": float(1 - flagged[y_test == 0].mean()),
        "normal_score_correlations": correlations(-scores[y_test == 0], film_statistics(data, normals, lung_area)),
        "fit_seconds": fit_seconds,
        "score_images_per_second": len(candidates) * len(test) / score_seconds,
    }
    # Not for the JSON (main saves them with --scores-dir): the chosen score of every
    # validation and test film, for ensembles and paired comparisons.
    film_scores = {"validation": val_scores[chosen], "test": scores, "validation_index": validation,
                   "test_index": test}  # fmt: skip
    return result, film_scores


def baseline(data, split, lung_area):
    train, validation, test = split
    images = data.images
    val = intensity_baseline_scores(images[train], images[validation])
    scores = intensity_baseline_scores(images[train], images[test])
    y_test = data.labels[test]
    flagged = scores <= youden_cutoff(data.labels[validation], val)["threshold"]
    return {
        "validation_roc_auc": anomaly_roc_auc(data.labels[validation], val),
        "test_roc_auc": anomaly_roc_auc(y_test, scores),
        "test_sensitivity_at_90_specificity": sensitivity_at_specificity(y_test, scores, specificity=0.9),
        "test_sensitivity_at_validation_cutoff": float(flagged[y_test == 1].mean()),
        "test_specificity_at_validation_cutoff": float(1 - flagged[y_test == 0].mean()),
        "normal_score_correlations": correlations(
            -scores[y_test == 0], film_statistics(data, test[y_test == 0], lung_area)),
    }  # fmt: skip


def summary(runs, key="test_roc_auc"):
    values = [run[key] for run in runs.values()]
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n_seeds": len(values)}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with train/NORMAL and train/PNEUMONIA")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--held-out-fraction", type=float, default=0.25)
    parser.add_argument("--protocols", nargs="+", default=["shift", "random"], choices=["shift", "random"])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the CAE and VAE")
    parser.add_argument("--synthetic-epochs", type=int, default=15,
                        help="SyntheticAnomalyDetector's epochs (its default 50)")
    parser.add_argument("--synthetic-base-channels", type=int, default=16)
    parser.add_argument("--synthetic-depth", type=int, default=3, help="U-Net depth (its default 4, for 128 px)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; also the seed of each protocol's validation draw")
    parser.add_argument("--detectors", nargs="+", default=["SyntheticAnomalyDetector"])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--scores-dir", help="also save each run's validation and test scores here (npz)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data = load_pediatric_cxr(args.data_dir, split="train", size=args.size)
    lung_images = _lung_fields(data.images)
    lung_area = (~np.isnan(lung_images)).reshape(len(lung_images), -1).mean(1)
    lung_area[lung_area == 1] = 0  # no lung field found: LungMasker kept the whole film
    out = Path(args.out)
    header = {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__},
        "image_size": args.size,
        "load_seconds": time.perf_counter() - start,
    }  # fmt: skip
    command = "python benchmarks/bench_shift.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for protocol in args.protocols:
        for seed in args.seeds:
            split = (shift_protocol(data, seed, args.held_out_fraction) if protocol == "shift"
                     else patient_split(data.patient_ids, data.labels, seed))  # fmt: skip
            counts = {
                name: {"normal": int(np.sum(data.labels[idx] == 0)), "pneumonia": int(np.sum(data.labels[idx] == 1))}
                for name, idx in zip(("train", "validation", "test"), split)
            }
            base = baseline(data, split, lung_area)
            _record(out, header, protocol, seed, counts, base)
            print(f"{protocol} seed {seed}: baseline test AUC {base['test_roc_auc']:.3f}", flush=True)
            for name in args.detectors:
                det, candidates = detectors(args, seed)[name]
                images = lung_images if name in ON_LUNGS else data.images
                result, film_scores = evaluate(name, det, candidates, data, split, lung_area, images)
                if args.scores_dir:
                    _save_scores(Path(args.scores_dir) / f"{protocol}_{name}_{seed}.npz", film_scores)
                _record(out, header, protocol, seed, counts, base, name, result, command)
                print(
                    f"{protocol} seed {seed} {name}: {result['chosen_score']} test AUC {result['test_roc_auc']:.3f} "
                    f"sens@90spec {result['test_sensitivity_at_90_specificity']:.3f} fit {result['fit_seconds']:.0f} s "
                    f"corr {json.dumps({k: round(v, 2) for k, v in result['normal_score_correlations'].items()})}",
                    flush=True,
                )


def _record(out, header, protocol, seed, counts, base, name=None, result=None, command=None):
    """Merge one seed's baseline (and one detector's run) into the results file.

    The file is read again at every write, so commands running side by side (one
    torch thread each) keep each other's runs; the replace is atomic."""
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update(header)
    section = report.setdefault(protocol, {"baseline_intensity_mahalanobis": {}, "detectors": {}})
    section["split_counts"] = counts
    section["baseline_intensity_mahalanobis"][str(seed)] = base
    section["baseline_test_roc_auc"] = summary(section["baseline_intensity_mahalanobis"])
    if name is not None:
        entry = section["detectors"].setdefault(name, {"runs": {}})
        entry["runs"][str(seed)] = result
        entry["command"] = command
        entry["test_roc_auc"] = summary(entry["runs"])
        entry["test_sensitivity_at_90_specificity"] = summary(entry["runs"], "test_sensitivity_at_90_specificity")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)


def _save_scores(path, film_scores):
    """Write one run's scores whole or not at all (an interrupt leaves no partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **film_scores)
    tmp.replace(path)


def _lung_fields(images):
    """The films behind the packaged lung segmenter: NaN outside the lungs."""
    return np.asarray(LungMasker().fit(images).transform(images), dtype=np.float32)


if __name__ == "__main__":
    main()
