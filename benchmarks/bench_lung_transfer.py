"""How well the packaged lung segmenter transfers to radiographs unlike its training data.

The U-Net in :class:`~skanomaly.preprocessing.LungMasker` was trained on JSRT only. Other
hospitals' films differ in size, aspect, exposure, noise, sharpness, collimation,
burned-in markers, patient position and field of view, and in the patients themselves.
Two measurements:

1. JSRT hold-out studies (never seen in training; ids from
   ``benchmarks/results/lung_segmenter.json``): Dice of ``LungMasker(output="mask")``
   against the SCR lung masks, for the unmodified 1024 x 1024 images and for seeded,
   deterministic perturbations of them (gamma, contrast compression, noise, blur,
   downscaling incl. a non-square size, a black collimation border, a burned-in white
   marker, rotation, a crop of the abdomen). Geometric perturbations are applied to the
   truth as well (nearest neighbour), so Dice is always taken on the same pixel grid.
2. Pediatric chest radiographs (Kermany et al.; no lung masks exist): plausibility
   proxies on a seeded sample of NORMAL and PNEUMONIA images at their native size: no
   lung found, exactly two components, lung area fraction, anatomical placement, area
   ratio of the two lungs, and seconds per image. The same proxies on the unmodified
   JSRT hold-out predictions are reported as the reference they should resemble.

::

    python benchmarks/bench_lung_transfer.py --jsrt-dir ../shared/data/jsrt \
        --pediatric-dir ../shared/data/pediatric_cxr

Writes benchmarks/results/lung_transfer.json (figures only, no pixels).
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from skanomaly.datasets import read_image
from skanomaly.metrics import dice_score
from skanomaly.preprocessing import LungMasker

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "lung_transfer.json"
SEGMENTER_REPORT = HERE / "results" / "lung_segmenter.json"
PEDIATRIC_CLASSES = ("NORMAL", "PNEUMONIA")
BORDER = 0.08
CROP_BOTTOM = 0.15
# A lung's centroid below this fraction of the height sits in the abdomen, not the chest.
TOP_FRACTION = 0.85


def command_line(argv):
    words = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    # Where the package was imported from decides which weights ran: keep it exact.
    path = os.environ.get("PYTHONPATH")
    env = f"PYTHONPATH={shlex.quote(path)} " if path else ""
    return env + "python " + " ".join(shlex.quote(str(w)) for w in words)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsrt-dir", type=Path, required=True, help="JSRT folder")
    parser.add_argument("--pediatric-dir", type=Path, required=True,
                        help="pediatric CXR folder (train/NORMAL, train/PNEUMONIA)")
    parser.add_argument("--n-pediatric", type=int, default=200,
                        help="images sampled from each pediatric class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segmenter-report", type=Path, default=SEGMENTER_REPORT,
                        help="report of train_lung_segmenter.py with the hold-out study ids")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def holdout_names(report_path):
    """Hold-out study ids, as train_lung_segmenter.py recorded them."""
    report = json.loads(Path(report_path).read_text())
    return [Path(n).stem for n in report["split"]["holdout"]]


# ------------------------------------------------------------------ perturbations
# Each takes (image, truth, rng) and returns (image, truth, region): the perturbed
# image, the truth on the same grid, and the pixels where Dice is taken (None = all).

def _intensity(f):
    return lambda image, truth, rng: (np.clip(f(image, rng), 0, 1).astype(np.float32), truth, None)


def _resize(height, width):
    def run(image, truth, rng):
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        label = cv2.resize(truth.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return small, label > 0, None
    return run


def _blur(sigma_at_1024):
    def run(image, truth, rng):
        sigma = sigma_at_1024 * image.shape[0] / 1024
        return cv2.GaussianBlur(image, (0, 0), sigma), truth, None
    return run


def _border_pad(image, truth, rng):
    # The film grows by a black frame, anatomy intact: the truth grows by empty lung.
    h, w = image.shape
    dy, dx = round(BORDER * h), round(BORDER * w)
    padded = cv2.copyMakeBorder(image, dy, dy, dx, dx, cv2.BORDER_CONSTANT, value=0.0)
    label = np.pad(truth, ((dy, dy), (dx, dx)))
    return padded, label, None


def _border_overwrite(image, truth, rng):
    # Shutters cover the outer band: lung under them is invisible, so it can be neither
    # found nor missed there; Dice is taken inside the open field only.
    h, w = image.shape
    dy, dx = round(BORDER * h), round(BORDER * w)
    inside = np.zeros((h, w), dtype=bool)
    inside[dy : h - dy, dx : w - dx] = True
    return np.where(inside, image, 0.0).astype(np.float32), truth, inside


def _marker(image, truth, rng):
    # A lead "R" side marker and an exam label, full white, in the top-left corner.
    # OpenCV draws text on 8-bit images only: draw a stencil, then burn it in.
    h, w = image.shape
    scale = h / 1024
    stencil = np.zeros((h, w), dtype=np.uint8)
    cv2.putText(stencil, "R", (round(30 * scale), round(130 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX, 4.0 * scale, 255, max(1, round(14 * scale)),
                cv2.LINE_AA)
    cv2.putText(stencil, "PA ERECT 120kV", (round(30 * scale), round(175 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX, 1.0 * scale, 255, max(1, round(3 * scale)),
                cv2.LINE_AA)
    return np.maximum(image, stencil.astype(np.float32) / 255), truth, None


def _rotate(degrees):
    def run(image, truth, rng):
        h, w = image.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
        # Black corners, as a rotated film scan or a tilted detector gives.
        rotated = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        label = cv2.warpAffine(truth.view(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return rotated, label > 0, None
    return run


def _crop_bottom(image, truth, rng):
    keep = round((1 - CROP_BOTTOM) * image.shape[0])
    return np.ascontiguousarray(image[:keep]), np.ascontiguousarray(truth[:keep]), None


PERTURBATIONS = {
    "none": _intensity(lambda x, rng: x),
    "gamma 0.6": _intensity(lambda x, rng: x ** 0.6),
    "gamma 1.6": _intensity(lambda x, rng: x ** 1.6),
    "contrast [0.2, 0.8]": _intensity(lambda x, rng: 0.2 + 0.6 * x),
    "noise sd 0.03": _intensity(lambda x, rng: x + rng.normal(0, 0.03, x.shape)),
    "blur sigma 2 px": _blur(2.0),
    "downscale 256x256": _resize(256, 256),
    "downscale 512x384 (HxW)": _resize(512, 384),
    "border 8% black, padded": _border_pad,
    "border 8% black, overwritten": _border_overwrite,
    "white marker top-left": _marker,
    "rotate +7 deg": _rotate(7.0),
    "rotate -7 deg": _rotate(-7.0),
    "crop bottom 15%": _crop_bottom,
}


# ------------------------------------------------------------------ mask proxies
def mask_proxies(mask):
    """Plausibility figures of one predicted lung mask (no truth needed)."""
    h, w = mask.shape
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=8
    )
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1]
    centres = centroids[1:][order]
    two = n - 1 == 2
    placed = bool(
        two
        and centres[0][1] < TOP_FRACTION * h
        # Opposite sides of the vertical midline: one lung per side.
        and (centres[0][0] - w / 2) * (centres[1][0] - w / 2) < 0
    )
    return {
        "empty": n - 1 == 0,
        "two_components": two,
        "area_fraction": float(mask.mean()),
        "placed": placed,
        "area_ratio": float(areas[order[1]] / areas[order[0]]) if two else None,
    }


def summarise_proxies(rows):
    area = np.array([r["area_fraction"] for r in rows])
    ratios = np.array([r["area_ratio"] for r in rows if r["area_ratio"] is not None])
    return {
        "n_images": len(rows),
        "no_lung_fraction": round(float(np.mean([r["empty"] for r in rows])), 4),
        "two_components_fraction": round(float(np.mean([r["two_components"] for r in rows])), 4),
        "lung_area_fraction_median": round(float(np.median(area)), 4),
        "lung_area_fraction_p5": round(float(np.percentile(area, 5)), 4),
        "lung_area_fraction_p95": round(float(np.percentile(area, 95)), 4),
        "placed_fraction": round(float(np.mean([r["placed"] for r in rows])), 4),
        "area_ratio_small_to_large_median": (
            round(float(np.median(ratios)), 4) if ratios.size else None
        ),
    }


# ------------------------------------------------------------------ the two parts
def jsrt_transfer(jsrt_dir, names, seed):
    images = [read_image(jsrt_dir / "images" / f"{n}.png") for n in names]
    truths = [read_image(jsrt_dir / "lung_masks" / f"{n}.png") > 0 for n in names]
    masker = LungMasker(output="mask", device="cpu")
    results, reference_rows = {}, []
    for p_index, (label, perturb) in enumerate(PERTURBATIONS.items()):
        start = time.perf_counter()
        scores = {}
        for s_index, (name, image, truth) in enumerate(zip(names, images, truths)):
            # One stream per (perturbation, study): any subset reruns identically.
            rng = np.random.default_rng([seed, p_index, s_index])
            x, t, region = perturb(image, truth, rng)
            pred = masker.fit_transform(x[None])[0]
            if label == "none":
                reference_rows.append(mask_proxies(pred))
            if region is not None:
                pred, t = pred[region], t[region]
            scores[name] = dice_score(t, pred)
        values = np.array(list(scores.values()))
        worst = min(scores, key=scores.get)
        results[label] = {
            "dice_mean": round(float(values.mean()), 4),
            "dice_min": round(float(values.min()), 4),
            "dice_median": round(float(np.median(values)), 4),
            "worst_study": worst,
            "n_below_0.9": int((values < 0.9).sum()),
            "input_shape": list(x.shape),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"{label:>30}: Dice mean {values.mean():.4f}  min {values.min():.4f} "
              f"({worst})", flush=True)
    # How much lung the geometric perturbations take away from view; context for Dice.
    h = truths[0].shape[0]
    band = round(BORDER * h)
    lost_border = [1 - t[band:-band, band:-band].sum() / t.sum() for t in truths]
    lost_crop = [1 - t[: round((1 - CROP_BOTTOM) * h)].sum() / t.sum() for t in truths]
    context = {
        "truth_lung_fraction_under_8pct_band_mean": round(float(np.mean(lost_border)), 4),
        "truth_lung_fraction_in_cropped_bottom_mean": round(float(np.mean(lost_crop)), 4),
    }
    return results, summarise_proxies(reference_rows), context


def pediatric_sample(pediatric_dir, n, seed):
    rng = np.random.default_rng(seed)
    sample = {}
    for cls in PEDIATRIC_CLASSES:
        files = sorted(p for p in (pediatric_dir / "train" / cls).iterdir()
                       if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if len(files) < n:
            raise SystemExit(f"{pediatric_dir}/train/{cls} holds {len(files)} images; need {n}")
        sample[cls] = [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]
    return sample


def pediatric_transfer(pediatric_dir, n, seed):
    sample = pediatric_sample(pediatric_dir, n, seed)
    masker = LungMasker(output="mask", device="cpu")
    summary, seconds, n_images, sizes, per_image = {}, 0.0, 0, {}, {}
    for cls, files in sample.items():
        images = [read_image(p) for p in files]
        by_size = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape, []).append(i)
        rows = [None] * len(images)
        for shape, members in by_size.items():
            sizes[f"{shape[0]}x{shape[1]}"] = sizes.get(f"{shape[0]}x{shape[1]}", 0) + len(members)
            batch = np.stack([images[i] for i in members])
            start = time.perf_counter()
            masks = masker.fit_transform(batch)
            seconds += time.perf_counter() - start
            for i, mask in zip(members, masks):
                rows[i] = mask_proxies(mask)
        n_images += len(images)
        summary[cls] = summarise_proxies(rows)
        per_image[cls] = {p.name: r for p, r in zip(files, rows)}
        print(f"{cls:>10}: {json.dumps(summary[cls])}", flush=True)
    summary["ALL"] = summarise_proxies([r for c in per_image.values() for r in c.values()])
    # Flagged images by name, so that they can be looked at.
    flagged = {
        cls: sorted(name for name, r in rows.items() if not r["placed"])
        for cls, rows in per_image.items()
    }
    return {
        "n_per_class": n,
        "native_sizes": sizes,
        "seconds_per_image": round(seconds / n_images, 4),
        "seconds_note": "LungMasker(output='mask').fit_transform on batches of equal-size "
                        "images, 1 torch thread, file decoding excluded",
        "proxies": summary,
        "not_placed": flagged,
    }


def main(argv=None):
    args = parse_args(argv)
    # Another CPU-heavy job shares this machine; one thread keeps timings honest.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    names = holdout_names(args.segmenter_report)
    report = {
        "command": command_line(argv),
        "seed": args.seed,
        "lung_weights": "packaged",
        "masker": "LungMasker(output='mask', device='cpu'), threshold 0.5, after cleaning",
        "dice_definition": "2|A and B| / (|A| + |B|)",
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
        },
    }
    print(f"JSRT hold-out: {len(names)} studies", flush=True)
    dice_table, jsrt_proxies, context = jsrt_transfer(args.jsrt_dir, names, args.seed)
    report["jsrt_holdout"] = {
        "n_studies": len(names),
        "hold_out_from": os.path.relpath(args.segmenter_report),
        "perturbation_notes": {
            "intensity": "images in [0, 1]; gamma x**g; contrast 0.2 + 0.6 x; noise N(0, 0.03) "
                         "seeded per (perturbation, study), clipped to [0, 1]",
            "blur": "Gaussian, sigma 2 px at 1024 x 1024",
            "downscale": "image INTER_AREA, truth INTER_NEAREST to the same size; Dice at "
                         "the small size",
            "border padded": "black frame of 8 % of each side added around the film "
                             "(1188 x 1188); truth padded with background",
            "border overwritten": "outer 8 % of each side set to black; Dice inside the "
                                  "open field only",
            "marker": "white 'R' and an exam label burned into the top-left corner",
            "rotate": "about the centre, black corners; truth rotated with INTER_NEAREST",
            "crop": "bottom 15 % of rows removed from image and truth",
        },
        "dice": dice_table,
        "context": context,
        "proxies_unmodified": jsrt_proxies,
    }
    print("pediatric sample", flush=True)
    report["pediatric"] = pediatric_transfer(args.pediatric_dir, args.n_pediatric, args.seed)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{'JSRT hold-out perturbation':<32}{'Dice mean':>10}{'min':>8}{'<0.9':>6}")
    for label, row in dice_table.items():
        print(f"{label:<32}{row['dice_mean']:>10.4f}{row['dice_min']:>8.4f}{row['n_below_0.9']:>6}")
    columns = ["no_lung_fraction", "two_components_fraction", "lung_area_fraction_median",
               "lung_area_fraction_p5", "lung_area_fraction_p95", "placed_fraction",
               "area_ratio_small_to_large_median"]
    short = ["none", "two", "area", "p5", "p95", "placed", "ratio"]
    print(f"\n{'proxies':<14}" + "".join(f"{s:>8}" for s in short))
    rows = {"JSRT (ref)": jsrt_proxies, **report["pediatric"]["proxies"]}
    for label, row in rows.items():
        print(f"{label:<14}" + "".join(
            f"{row[c]:>8.3f}" if row[c] is not None else f"{'-':>8}" for c in columns))
    print(f"\npediatric: {report['pediatric']['seconds_per_image']} s/image; "
          f"total {report['total_seconds']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
