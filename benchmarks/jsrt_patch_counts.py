"""Patch counts of the P-AnoGAN protocol on the JSRT radiographs, with time and memory.

Runs :func:`skanomaly.datasets._protocols.jsrt_patch_protocol` once on the real data
and records what it yields, next to the paper's counts (which come from another
segmentation, CCNet, and 93 + 154 studies of the full JSRT database)::

    python benchmarks/jsrt_patch_counts.py --data-dir ../shared/data/jsrt

Writes benchmarks/results/jsrt_patch_protocol.json (counts only, no pixels).
"""

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from skanomaly.datasets._loaders import _read_mask
from skanomaly.datasets._protocols import jsrt_patch_protocol
from skanomaly.preprocessing import LungMasker

RESULTS = Path(__file__).parent / "results" / "jsrt_patch_protocol.json"

PAPER = {
    "normal_test_patches": 96765,
    "abnormal_test_patches": 2105,
    "normal_test_studies": 93,
    "nodule_test_studies": 141,
    "nodule_studies_excluded_outside_roi": 13,
    "normal_per_study": round(96765 / 93, 1),
    "abnormal_per_nodule_study": round(2105 / 141, 1),
}


def command_line(argv):
    words = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    return "python " + " ".join(shlex.quote(str(w)) for w in words)


def centres_outside_masks(data_dir, data):
    """Nodule studies whose centre pixel lies outside the data set's lung mask."""
    shape = data.params["size"]
    outside = []
    for study, (x, y) in zip(data.test_studies, data.test_study_centers):
        if np.isnan(x):
            continue
        mask = _read_mask(Path(data_dir) / "lung_masks" / f"{study}.png", shape)
        if not mask[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]:
            outside.append(str(study))
    return outside


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--lung-roi", default="dataset", choices=["dataset", "unet"],
                        help="'unet' adds a lung_roi_unet section to an existing --out file")
    parser.add_argument("--lung-weights", type=Path, default=None,
                        help="LungMasker weights for --lung-roi unet (default: packaged)")
    parser.add_argument("--test-size", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    lung_roi = args.lung_roi
    if lung_roi == "unet" and args.lung_weights is not None:
        lung_roi = LungMasker(weights=str(args.lung_weights))
    start = time.perf_counter()
    data = jsrt_patch_protocol(
        args.data_dir,
        patch_size=args.patch_size,
        stride=args.stride,
        size=args.size,
        test_size=args.test_size,
        lung_roi=lung_roi,
        random_state=args.seed,
    )
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux: the peak resident memory of this process.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    labels = data.test_study_labels
    normal_test = data.test_studies[labels == 0]
    nodule = data.test_studies[labels == 1]
    n_normal_test = int((data.y_test == 0).sum())
    n_abnormal = int((data.y_test == 1).sum())
    normal_ids = np.concatenate([data.train_study_ids, data.test_study_ids[data.y_test == 0]])
    _, per_normal = np.unique(normal_ids, return_counts=True)
    abnormal_per = data.test_study_n_abnormal[labels == 1]
    zero = data.nodule_studies_without_abnormal_patch
    outside = centres_outside_masks(args.data_dir, data) if args.lung_roi == "dataset" else None
    report = {
        "command": command_line(argv),
        "params": data.params,
        "seed": args.seed,
        "n_train_studies": len(data.train_studies),
        "n_test_studies": len(data.test_studies),
        "n_test_normal_studies": len(normal_test),
        "n_test_nodule_studies": len(nodule),
        "n_patches_per_bag": int(data.extractor.n_patches_),
        "normal_train_patches": len(data.X_train),
        "normal_test_patches": n_normal_test,
        "abnormal_test_patches": n_abnormal,
        "mean_normal_patches_per_normal_study": round(float(per_normal.mean()), 1),
        "min_max_normal_patches_per_normal_study": [int(per_normal.min()), int(per_normal.max())],
        "mean_abnormal_patches_per_nodule_study": round(float(abnormal_per.mean()), 2),
        "abnormal_patches_per_nodule_study_histogram": {
            int(k): int(v) for k, v in zip(*np.unique(abnormal_per, return_counts=True))
        },
        "nodule_studies_with_zero_abnormal_patches": len(zero),
        "nodule_studies_with_zero_abnormal_patches_ids": zero.tolist(),
        "nodule_centres_outside_lung_mask": None if outside is None else len(outside),
        "nodule_centres_outside_lung_mask_ids": outside,
        "note": (
            "A nodule whose centre pixel is outside the lung mask (behind the heart or "
            "below the diaphragm) still yields abnormal patches when a patch holding it "
            "has >= min_roi_fraction lung; otherwise the study stays in the test set "
            "with 0 abnormal patches. The paper excluded such patients (13 of 154)."
        ),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_mb),
        "X_train_mb": round(data.X_train.nbytes / 2**20),
        "X_test_mb": round(data.X_test.nbytes / 2**20),
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "paper": PAPER,
    }
    if args.lung_roi == "unet":
        report["lung_weights"] = str(args.lung_weights) if args.lung_weights else "packaged"
        if args.out.is_file():
            # The data set's masks are the protocol; the segmenter's are a variant.
            report = {**json.loads(args.out.read_text()), "lung_roi_unet": report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
