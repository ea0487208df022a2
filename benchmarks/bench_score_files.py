"""Throughput and memory of skanomaly.parallel.score_files: one process against a
Dask LocalCluster of 2 worker processes, on the pediatric chest X-ray folder.

A small CAEDetector (64 px, channels (16, 32, 64), a few epochs on ~200 normal
training images) is fitted first; its accuracy is beside the point, which is how fast
a fitted model scores a whole folder of JPEGs (read, resized to 64 px, scored, one CSV
row per file). Every configuration runs in a fresh Python process, so that the peak
resident memory (``ru_maxrss``) of the client, and of each Dask worker, belongs to
that configuration alone:

* ``load_images + score_samples``: the whole folder read into one array, then scored
  (what score_files replaces; memory grows with the archive);
* ``score_files, in-process``: chunks one after another in the client process, with
  torch's default threads (one per core) for the largest chunk size and with one
  thread (the workers' setting) for each chunk size;
* ``score_files, LocalCluster``: 2 worker processes x 1 thread, for each chunk size;
  the cluster's start-up is timed separately from the scoring.

Wall times are the best of ``--repeats`` runs (default 1: the whole folder takes minutes per
configuration), after a warm-up on 64 files that is not timed. The CSVs of the in-process and cluster
runs are compared byte for byte. Other processes may share the CPU: the load average
goes into the report::

    python benchmarks/bench_score_files.py --data-dir ../shared/data/pediatric_cxr [--n-files N]

Writes benchmarks/results/score_files.json.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "score_files.json"
SIZE = 64


def command_line(argv):
    words = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    return "python " + " ".join(shlex.quote(str(w)) for w in words)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="pediatric_cxr folder (searched recursively)")
    parser.add_argument("--n-files", type=int, default=None, help="score only the first N files (sorted)")
    parser.add_argument("--n-train", type=int, default=200, help="normal training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (best kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--_run", help=argparse.SUPPRESS)  # one configuration, in a child process
    return parser.parse_args(argv)


def max_rss_mb():
    """Peak resident memory of this process, in MiB.

    ``VmHWM`` where Linux has it: ``ru_maxrss`` survives ``exec`` and would report
    the parent's peak in a child that never reached it.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------- child process
def run_configuration(spec):
    """Time one configuration; print its figures as one JSON line."""
    import joblib
    import torch

    from skanomaly.datasets import load_images
    from skanomaly.parallel import score_files

    paths = Path(spec["paths_file"]).read_text().splitlines()
    if spec["kind"] == "fit":
        det, report = fit_model(paths, spec["n_train"], spec["epochs"])
        joblib.dump(det, spec["model"])
        import dask

        report["versions"] = {"torch": torch.__version__, "dask": dask.__version__}
        print("RESULT " + json.dumps(report), flush=True)
        return
    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    model = joblib.load(spec["model"])
    result = {"kind": spec["kind"], "chunk_size": spec.get("chunk_size"),
              "torch_threads": torch.get_num_threads()}
    # Warm-up (torch's first calls, page cache), not timed: 64 files.
    model.score_samples(load_images(paths[:64], size=SIZE))
    result["client_rss_mb_before"] = max_rss_mb()
    walls = []
    if spec["kind"] == "load_images":
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            images = load_images(paths, size=SIZE)
            model.score_samples(images)
            walls.append(time.perf_counter() - start)
            del images
    elif spec["kind"] == "local":
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            score_files(model, paths, size=SIZE, chunk_size=spec["chunk_size"], out=spec["csv"], progress=False)
            walls.append(time.perf_counter() - start)
        result["csv_sha256"] = _sha256(spec["csv"])
    else:
        import logging

        from distributed import Client, LocalCluster

        start = time.perf_counter()
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        client.wait_for_workers(2)
        result["cluster_start_s"] = round(time.perf_counter() - start, 2)
        # Workers import torch and the package on their first task: part of start-up.
        start = time.perf_counter()
        client.run(lambda: __import__("skanomaly.parallel"))
        result["worker_import_s"] = round(time.perf_counter() - start, 2)
        result["worker_torch_threads"] = sorted(set(client.run(lambda: __import__("torch").get_num_threads()).values()))
        score_files(model, paths[:64], client=client, size=SIZE, chunk_size=16, progress=False)  # warm-up
        try:
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                score_files(model, paths, client=client, size=SIZE, chunk_size=spec["chunk_size"],
                            out=spec["csv"], progress=False)
                walls.append(time.perf_counter() - start)
            result["worker_peak_rss_mb"] = sorted(
                v for v in client.run(max_rss_mb).values()
            )
        finally:
            client.close()
            cluster.close()
        result["csv_sha256"] = _sha256(spec["csv"])
    best = min(walls)
    result.update(
        n_files=len(paths),
        wall_s_best=round(best, 2),
        wall_s_all=[round(w, 2) for w in walls],
        images_per_s=round(len(paths) / best, 1),
        client_peak_rss_mb=max_rss_mb(),
    )
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------- driver
def list_files(data_dir):
    from skanomaly.datasets._io import _list_folder

    return [str(p) for p in _list_folder(data_dir, recursive=True)]


def fit_model(files, n_train, epochs):
    import torch

    from skanomaly.datasets import load_images
    from skanomaly.detectors import CAEDetector

    normal = [f for f in files if f"{os.sep}NORMAL{os.sep}" in f][:n_train]
    X = load_images(normal, size=SIZE, n_jobs=-1)
    start = time.perf_counter()
    det = CAEDetector(channels=(16, 32, 64), augment=None, lr=2e-3, batch_size=32,
                      max_epochs=epochs, random_state=0).fit(X)
    return det, {
        "detector": "CAEDetector(channels=(16, 32, 64), augment=None, lr=2e-3, batch_size=32, "
                    f"max_epochs={epochs}, random_state=0)",
        "image_size": SIZE,
        "n_train": len(normal),
        "train_s": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
    }


def run_child(spec):
    """Run one configuration in a fresh process; return its RESULT line as a dict."""
    proc = subprocess.run(
        [sys.executable, __file__, "--_run", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"configuration {spec['kind']} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    args = parse_args(argv)
    if args._run:
        run_configuration(json.loads(args._run))
        return
    if args.data_dir is None:
        raise SystemExit("--data-dir is required")
    # The driver imports neither torch nor the model: every figure comes from a child.
    wall_start = time.perf_counter()
    loadavg_before = [round(v, 2) for v in os.getloadavg()]
    files = list_files(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = dict(model=str(tmp / "model.joblib"), repeats=args.repeats)
        (tmp / "all.txt").write_text("\n".join(files) + "\n")
        print("fitting the model", flush=True)
        train_report = run_child(dict(common, kind="fit", paths_file=str(tmp / "all.txt"),
                                      n_train=args.n_train, epochs=args.epochs))
        print("  ", json.dumps(train_report), flush=True)
        if args.n_files is not None:
            files = files[: args.n_files]
        (tmp / "paths.txt").write_text("\n".join(files) + "\n")
        # In-process: torch's default threads (all cores) for the largest chunk size,
        # and one thread, the workers' setting, for every chunk size.
        configurations = [{"kind": "load_images", "torch_threads": 1}]
        configurations += [{"kind": "local", "chunk_size": max(args.chunk_sizes)}]
        configurations += [{"kind": "local", "chunk_size": c, "torch_threads": 1} for c in args.chunk_sizes]
        configurations += [{"kind": "cluster", "chunk_size": c} for c in args.chunk_sizes]
        runs = []
        for i, spec in enumerate(configurations):
            spec.update(common, paths_file=str(tmp / "paths.txt"), csv=str(tmp / f"scores_{i}.csv"))
            print(f"running {spec['kind']} chunk_size={spec.get('chunk_size')} "
                  f"torch_threads={spec.get('torch_threads', 'default')}", flush=True)
            run = run_child(spec)
            print("  ", json.dumps(run), flush=True)
            runs.append(run)
    # Same chunk size: the cluster's CSV must equal the in-process one, byte for byte.
    identical = {}
    for chunk_size in args.chunk_sizes:
        same = {r["csv_sha256"] for r in runs if r["chunk_size"] == chunk_size and "csv_sha256" in r}
        identical[str(chunk_size)] = len(same) == 1
    single = min(r["wall_s_best"] for r in runs if r["kind"] == "local")
    cluster = min(r["wall_s_best"] for r in runs if r["kind"] == "cluster")
    speedups = {
        f"chunk_size={c}": round(
            min(r["wall_s_best"] for r in runs if r["kind"] == "local" and r["chunk_size"] == c
                and r["torch_threads"] == 1)
            / next(r["wall_s_best"] for r in runs if r["kind"] == "cluster" and r["chunk_size"] == c), 2)
        for c in args.chunk_sizes
    }
    report = {
        "command": command_line(argv),
        "purpose": "scoring throughput of a fitted model over a folder of files; the "
                   "detector is deliberately small and briefly trained",
        "data": {"dir": str(args.data_dir), "n_files": len(files)},
        "model": train_report,
        "runs": runs,
        "cluster_csv_identical_to_in_process": identical,
        "all_chunk_sizes_same_csv": len({r["csv_sha256"] for r in runs if "csv_sha256" in r}) == 1,
        "speedup_cluster_vs_single_process_best": round(single / cluster, 2),
        "speedup_cluster_vs_single_process_1_thread": speedups,
        "total_wall_s": round(time.perf_counter() - wall_start, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or "unknown",
            "python": platform.python_version(),
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("cluster_csv_identical_to_in_process",
                                             "speedup_cluster_vs_single_process_best", "total_wall_s")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
