"""Speed of the preprocessing transformers on real 1024 x 1024 radiographs, and the
lung segmenter's Dice on the JSRT hold-out studies.

Times, on this machine's CPU, ``CLAHE()``, ``LungMasker()`` and
``PatchExtractor(64, stride=16)`` separately and chained as a Pipeline
(CLAHE -> LungMasker -> PatchExtractor), in images per second, after a warm-up run
(the first LungMasker call loads its weights). Other processes may share the CPU, so
the machine load (``os.getloadavg``), the thread counts and the commit go into the
report. The target (issue 14) is >= 25 images/s at 1024 x 1024 for the chained
pipeline on 2 cores.

Dice: ``LungMasker(output="mask")`` against the data set's lung masks at 1024 x 1024
on the studies that ``scripts/train_lung_segmenter.py`` held out from training (read
from its report, ``benchmarks/results/lung_segmenter.json``)::

    python benchmarks/bench_preprocessing.py --data-dir ../shared/data/jsrt --n-images 16

Writes benchmarks/results/preprocessing.json (figures only, no pixels).
"""

import argparse
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.pipeline import Pipeline

from skanomaly.datasets import load_images
from skanomaly.metrics import dice_score
from skanomaly.preprocessing import CLAHE, LungMasker, PatchExtractor
from skanomaly.preprocessing._lung import apply_masks

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "preprocessing.json"
SEGMENTER_REPORT = HERE / "results" / "lung_segmenter.json"
SIZE = 1024
TARGET_IMAGES_PER_S = 25.0


def command_line(argv):
    words = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    return "python " + " ".join(shlex.quote(str(w)) for w in words)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="JSRT folder")
    parser.add_argument("--n-images", type=int, default=16, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per step (best kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to time LungMasker and the pipeline "
                             "with (default: torch's default, then 1)")
    parser.add_argument("--lung-weights", type=Path, default=None,
                        help="LungMasker weights file (default: the packaged ones)")
    parser.add_argument("--segmenter-report", type=Path, default=SEGMENTER_REPORT,
                        help="report of train_lung_segmenter.py with the hold-out study ids")
    parser.add_argument("--skip-dice", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def git_commit():
    """HEAD of the checkout, with ``+dirty`` when tracked files differ from it."""
    try:
        run = functools.partial(subprocess.run, cwd=HERE, capture_output=True, text=True)
        head = run(["git", "rev-parse", "HEAD"], check=True).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pick_studies(data_dir, n):
    """``n`` studies spread evenly over the sorted list, so nodule and normal studies mix."""
    names = sorted(p.stem for p in (data_dir / "images").glob("JPC*.png"))
    if len(names) < n:
        raise SystemExit(f"{data_dir}/images holds {len(names)} JSRT PNGs; need {n}")
    return [names[i] for i in np.linspace(0, len(names) - 1, n).round().astype(int)]


def read_masks(data_dir, names):
    masks = []
    for name in names:
        mask = cv2.imread(str(data_dir / "lung_masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise SystemExit(f"cannot read the lung mask of {name} in {data_dir}/lung_masks")
        if mask.shape != (SIZE, SIZE):
            mask = cv2.resize(mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        masks.append(mask > 0)
    return np.stack(masks)


def time_step(name, run, X, repeats):
    """Warm up on two images, then keep the best of ``repeats`` runs over all of ``X``."""
    run(X[:2])
    seconds, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = run(X)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        del out
    best, median = min(seconds), float(np.median(seconds))
    fastest = int(np.argmin(seconds))
    result = {
        "images_per_s": round(len(X) / best, 2),
        "images_per_s_median": round(len(X) / median, 2),
        "ms_per_image": round(1000 * best / len(X), 1),
        "seconds_per_run": [round(s, 3) for s in seconds],
        # CPU seconds this process got per wall second in the fastest run: up to the
        # number of busy threads; well below it means other processes had the cores.
        "cpu_per_wall_fastest_run": round(cpu[fastest] / seconds[fastest], 2),
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    print(f"{name:>18}: {result['images_per_s']:6.2f} images/s "
          f"({result['ms_per_image']} ms/image), load {result['loadavg_after'][0]}", flush=True)
    return result


def holdout_dice(data_dir, masker_params, report_path):
    if not report_path.is_file():
        return {"status": f"skipped: {report_path} does not exist yet (written by "
                          "scripts/train_lung_segmenter.py with the hold-out study ids)"}
    report = json.loads(report_path.read_text())
    names = [Path(n).stem for n in report["split"]["holdout"]]
    masker = LungMasker(output="mask", **masker_params)
    scores = {}
    for start in range(0, len(names), 8):
        chunk = names[start : start + 8]
        images = load_images([data_dir / "images" / f"{n}.png" for n in chunk], size=SIZE)
        predicted = masker.fit_transform(images)
        for name, pred, truth in zip(chunk, predicted, read_masks(data_dir, chunk)):
            scores[name] = dice_score(truth, pred)
    values = np.array(list(scores.values()))
    worst = sorted(scores, key=scores.get)[:5]
    return {
        "status": "ok",
        "hold_out_from": os.path.relpath(report_path),
        "n_studies": len(values),
        "resolution": f"{SIZE}x{SIZE}, LungMasker(output='mask') after its cleaning",
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "median": round(float(np.median(values)), 4),
        "worst_studies": {n: round(scores[n], 4) for n in worst},
    }


def main(argv=None):
    args = parse_args(argv)
    default_threads = torch.get_num_threads()
    # On a shared CPU, torch's worker threads wait for each other at every layer, so
    # one thread can beat two when another process holds a core: time both.
    thread_counts = list(dict.fromkeys(args.threads or [default_threads, 1]))
    names = pick_studies(args.data_dir, args.n_images)
    X = load_images([args.data_dir / "images" / f"{n}.png" for n in names], size=SIZE)
    masks = read_masks(args.data_dir, names)
    masker_params = {"device": "cpu"}
    if args.lung_weights is not None:
        masker_params["weights"] = str(args.lung_weights)

    report = {
        "command": command_line(argv),
        "n_images": len(X),
        "image_size": f"{SIZE}x{SIZE}",
        "studies": names,
        "lung_weights": str(args.lung_weights) if args.lung_weights else "packaged",
        "commit": git_commit(),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)),
            "torch_threads_default": default_threads,
            "torch_threads_timed": thread_counts,
            "torch_interop_threads": torch.get_num_interop_threads(),
            "opencv_threads": cv2.getNumThreads(),
            "loadavg_before": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
        },
        "steps": {},
        "target_images_per_s": TARGET_IMAGES_PER_S,
    }
    print(f"{len(X)} images at {SIZE}x{SIZE}; torch threads {thread_counts}, "
          f"load {report['machine']['loadavg_before']}", flush=True)

    steps = report["steps"]
    steps["CLAHE"] = time_step("CLAHE", lambda x: CLAHE().fit_transform(x), X, args.repeats)
    # PatchExtractor sees what it sees in the pipeline: images with NaN outside the lungs.
    X_masked = apply_masks(X, masks)
    extractor = PatchExtractor(64, stride=16)
    steps["PatchExtractor"] = time_step(
        "PatchExtractor", lambda x: extractor.fit_transform(x), X_masked, args.repeats
    )
    steps["PatchExtractor"]["bag_mb_per_image"] = round(
        extractor.n_patches_ * 64 * 64 * 4 / 2**20, 1
    )
    del X_masked
    try:
        LungMasker(**masker_params).fit_transform(X[:1])
    except ValueError as err:
        lung_error = str(err)
    else:
        lung_error = None
    if lung_error is None:
        pipe = Pipeline([
            ("clahe", CLAHE()),
            ("lungs", LungMasker(**masker_params)),
            ("patches", PatchExtractor(64, stride=16)),
        ])
        for threads in thread_counts:
            torch.set_num_threads(threads)
            suffix = f" [torch threads={threads}]"
            steps["LungMasker" + suffix] = time_step(
                f"LungMasker/{threads}t",
                lambda x: LungMasker(**masker_params).fit_transform(x),
                X,
                args.repeats,
            )
            steps["Pipeline(CLAHE, LungMasker, PatchExtractor)" + suffix] = time_step(
                f"Pipeline/{threads}t", lambda x: pipe.fit_transform(x), X, args.repeats
            )
        torch.set_num_threads(default_threads)
        chained = {
            name: step["images_per_s"] for name, step in steps.items() if name.startswith("Pipe")
        }
        report["pipeline_images_per_s"] = chained
        report["meets_target"] = {name: v >= TARGET_IMAGES_PER_S for name, v in chained.items()}
        report["dice"] = (
            {"status": "skipped (--skip-dice)"}
            if args.skip_dice
            else holdout_dice(args.data_dir, masker_params, args.segmenter_report)
        )
    else:
        print(f"LungMasker unavailable: {lung_error}", flush=True)
        steps["LungMasker"] = {"status": f"not measured: {lung_error}"}
        report["meets_target"] = None
        report["dice"] = {"status": f"not measured: {lung_error}"}
    report["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report.get(k) for k in ("pipeline_images_per_s", "dice")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
