"""Speed of FAnoGANDetector: scoring per encoder, and f-AnoGAN side by side with a peer.

1. **Scoring at 64 x 64 per encoder** (the P-AnoGAN progressive generator at its
   paper widths, z of 512): ms/patch through ``score_samples`` at batch 64, the
   forward GFLOP per patch of the score (encoder + generator, + encoder again for
   izizf), and the achieved rate against this machine's float32 matmul rate.
2. **f-AnoGAN at the authors' architecture** (``generator="wgan-gp"``,
   ``encoder="critic"``, ``loss="izif"``, score izif) at widths 16 and 64: scoring
   ms/patch at batch 64, WGAN-GP critic images/s (5 critic steps of 64 real images
   per generator step) and encoder training images/s, from the skorch histories'
   epoch durations; the peer harness (``../shared/tools/peer_fanogan/bench_peer.py``,
   dbbbbm/f-AnoGAN-PyTorch) is run on the same machine when ``--peer-mirror`` is given.

Networks are trained only for a few iterations on random patches: speed does not
depend on the weights.

    python benchmarks/bench_fanogan_speed.py --peer-mirror /work/.mirror/dbbbbm+f-AnoGAN-PyTorch/repo

Writes benchmarks/results/fanogan_speed.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _jsrt import machine
from skanomaly.detectors import FAnoGANDetector

RESULTS = Path(__file__).parent / "results" / "fanogan_speed.json"
PEER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "peer_fanogan" / "bench_peer.py"


def matmul_gflops(n=2048, repeats=5):
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def patches(n, seed=0):
    return np.random.default_rng(seed).random((n, 64, 64), dtype=np.float32)


def score_gflop(detector):
    """Forward GFLOP of one patch's score, counted by torch's FLOP counter."""
    x = torch.rand(1, 1, 64, 64)
    roi = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        detector._anomaly_batch(x, roi)
    return counter.get_total_flops() / 1e9


def time_scoring(detector, n=128, repeats=2):
    X = patches(n, seed=1)
    detector.set_params(batch_size=64)
    detector.score_samples(X[:64])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.score_samples(X)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / n


def encoder_section(args, peak, cache):
    out = {}
    for encoder in args.encoders:
        detector = FAnoGANDetector(encoder=encoder, gan_iterations=5, max_epochs=1, random_state=0, memory=cache)
        detector.fit(patches(64))
        seconds = time_scoring(detector)
        gflop = score_gflop(detector)
        out[encoder] = {
            "score": detector._resolved_score(),
            "score_ms_per_patch_batch64": 1000 * seconds,
            "score_gflop_per_patch": gflop,
            "achieved_gflops": gflop / seconds,
            "share_of_matmul_rate": gflop / seconds / peak,
        }
        print(encoder, {k: round(v, 3) if isinstance(v, float) else v for k, v in out[encoder].items()}, flush=True)
    return out


def fanogan_section(width, gan_iterations, n_patches, encoder_epochs):
    channels = (8 * width, 8 * width, 4 * width, 2 * width, width)
    # The encoder settings of the recorded runs (Adam 1e-4, epochs only), pinned so the
    # figures stay comparable now that "auto" gives f-AnoGAN's RMSProp 5e-5 for 50,000
    # iterations with generator="wgan-gp".
    detector = FAnoGANDetector(
        generator="wgan-gp", encoder="critic", loss="izif", anomaly_score="izif", gan_channels=channels,
        gan_iterations=gan_iterations, encoder_optimizer="adam", lr=1e-4, max_epochs=encoder_epochs,
        encoder_iterations=None, random_state=0,
    ).fit(patches(n_patches))
    gan, encoder = detector.histories_["gan"], detector.histories_["encoder"]
    critic_steps = detector.gan_.n_discriminator_steps_
    # The first epoch of each stage includes one-off set-up; later epochs are steady.
    encoder_seconds = encoder[1:, "dur"] if len(encoder) > 1 else encoder[:, "dur"]
    seconds = time_scoring(detector)
    gflop = score_gflop(detector)
    return {
        "width": width, "gan_channels": channels,
        "gan_critic_images_per_s": critic_steps * 64 / sum(gan[:, "dur"]),
        "encoder_train_images_per_s": n_patches * len(encoder_seconds) / sum(encoder_seconds),
        "score_ms_per_patch_batch64": 1000 * seconds,
        "score_gflop_per_patch": gflop,
        "score_gflops_achieved": gflop / seconds,
    }


def run_peer(mirror, width, repeats):
    command = [sys.executable, str(PEER), mirror, "--dim", str(width), "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["resnet50", "densenet169", "resnet18", "critic"])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--peer-mirror", default=None)
    parser.add_argument("--peer-widths", type=int, nargs="+", default=[16])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    peak = matmul_gflops()
    print(f"float32 matmul: {peak:.0f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        encoders = encoder_section(args, peak, cache)
    fanogan = {}
    for width in args.widths:
        # Width 64 is slow on a CPU (the peer: 2 critic images/s): fewer steps there.
        small = width <= 16
        fanogan[width] = fanogan_section(width, gan_iterations=50 if small else 5,
                                         n_patches=640 if small else 128, encoder_epochs=3 if small else 2)
        print("package f-AnoGAN", fanogan[width], flush=True)
    peer = {}
    if args.peer_mirror:
        for width in args.peer_widths:
            peer[width] = run_peer(args.peer_mirror, width, repeats=3 if width <= 16 else 2)
            print("peer", peer[width], flush=True)
    results = {
        "command": "python benchmarks/bench_fanogan_speed.py" + (
            f" --peer-mirror {args.peer_mirror}" if args.peer_mirror else ""),
        "machine": machine(),
        "matmul_gflops": peak,
        "encoders_64px_progressive_generator": encoders,
        "fanogan_wgan_gp_critic_izif": fanogan,
        "peer_dbbbbm_f_anogan_pytorch": peer,
        "peer_figures_from_the_harness_readme": {
            "64": {"score_ms_per_patch_batch64": 94, "gan_critic_images_per_s": 2.0, "encoder_train_images_per_s": 3.1},
            "16": {"score_ms_per_patch_batch64": 8.0, "gan_critic_images_per_s": 26.8, "encoder_train_images_per_s": 32.1},
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
