"""Host memory a fit holds, in copies of its training data, on the JSRT patch protocol.

Every detector is fitted on the protocol's training patches (by default all of them,
about 55,000 patches of 32 x 32 at 512 px: 227 MB in float32) with tiny networks and a
single pass, so that what the fit holds beyond the networks is the data: the resident
memory is sampled every 5 ms in a thread, and the peak above the resident memory
before ``fit`` is given in units of the training data's float32 size. The caller's
array is not counted (it exists before ``fit``). A float64 input makes one float32
copy during validation, by design; the benchmark passes float32 as the protocol
gives it, and ``validation_fraction=0.2`` so that the validation split is exercised.

    python benchmarks/bench_fit_memory.py --data-dir ../shared/data/jsrt

Writes benchmarks/results/fit_memory.json. To measure another version of the package
side by side, run the same command with ``PYTHONPATH`` pointing at its checkout.
"""

import argparse
import gc
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from _jsrt import add_protocol_arguments, command_line, load_protocol, machine

import skanomaly
from skanomaly.detectors import AnoGANDetector, CAEDetector, FAnoGANDetector, VAEDetector

RESULTS = Path(__file__).parent / "results" / "fit_memory.json"

TINY = {
    "cae": lambda: CAEDetector(channels=(4, 4), augment=None),
    "vae": lambda: VAEDetector(channels=(4, 4), latent_dim=8, augment=None),
    "anogan": lambda: AnoGANDetector(channels=(4, 4), latent_dim=8, n_search_steps=2),
    "fanogan": lambda: FAnoGANDetector(encoder="critic", gan_channels=(4, 4, 4, 4), latent_dim=8, gan_iterations=8),
}


def resident_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def peak_during(work):
    """(peak resident MB above the start, seconds) while ``work()`` runs."""
    gc.collect()
    start = resident_mb()
    peak, done = [start], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.perf_counter()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return peak[0] - start, time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_arguments(parser, max_train=10**9)
    parser.add_argument("--detectors", nargs="+", default=list(TINY), choices=list(TINY))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    split, counts, _ = load_protocol(args)
    train = np.ascontiguousarray(split["train"], dtype=np.float32)
    data_mb = train.nbytes / 2**20
    results = {}
    for name in args.detectors:
        make = TINY[name]
        settings = dict(max_epochs=1, batch_size=64, validation_fraction=0.2, random_state=args.seed)
        make().set_params(**settings).fit(train[:64])  # load kernels and libraries first
        extra, seconds = peak_during(lambda: make().set_params(**settings).fit(train))
        results[name] = {"peak_above_start_mb": round(extra, 1), "copies_of_training_data": round(extra / data_mb, 2),
                         "fit_seconds": round(seconds, 1)}
        print(name, results[name], flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(skanomaly.__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    out = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": command_line("bench_fit_memory.py", args),
        "machine": machine(),
        "skanomaly": {"path": str(Path(skanomaly.__file__).parent), "commit": commit},
        "training_data": {"patches": int(len(train)), "shape": list(train.shape[1:]), "float32_mb": round(data_mb, 1)},
        "counts": counts,
        "detectors": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
