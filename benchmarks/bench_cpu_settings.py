"""Each detector's paper settings against settings that train in minutes on a CPU.

For the paper settings, a short run with the paper's architecture, image size and
batch size is timed and scaled to the paper's schedule per 1,000 training images
(a training run is epochs x images, or GAN iterations x batch): the figure says how
far a CPU is from the paper, not a measured full training. For progressive GANs the
schedule is shortened with ``gan_iterations`` (every scale, the fade-in and the
generator average keep their proportions), so the short run's mean cost per
iteration is the full schedule's. The small settings, the ones the user guide and the
examples use, are timed whole, on the package's phantoms.

    python benchmarks/bench_cpu_settings.py

Writes benchmarks/results/cpu_settings.json; the table is in the user guide.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import (
    AnoGANDetector,
    CAEDetector,
    FAnoGANDetector,
    OneClassAdversarialDetector,
    VAEDetector,
)

RESULTS = Path(__file__).parent / "results" / "cpu_settings.json"
PER_IMAGES = 1000


def phantoms(n, size, seed=0):
    data = make_chest_phantoms(n, image_size=size, anomaly_fraction=0.0, random_state=seed)
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


def timed_fit(detector, X):
    start = time.perf_counter()
    detector.fit(X)
    return time.perf_counter() - start


def epochs_paper_row(name, detector, size, n_images, epochs):
    """Seconds of one epoch on ``n_images`` at the paper's size, scaled to ``epochs``
    epochs of 1,000 images (one more epoch is timed and the first one's set-up
    subtracted, so start-up costs do not count)."""
    X = phantoms(n_images, size)
    one = timed_fit(detector.set_params(max_epochs=1), X)
    two = timed_fit(detector.set_params(max_epochs=2), X)
    per_image_epoch = max(two - one, 1e-9) / n_images
    hours = per_image_epoch * epochs * PER_IMAGES / 3600
    print(f"{name} paper: {per_image_epoch * 1000:.1f} ms per image-epoch -> {hours:.1f} h", flush=True)
    return {
        "settings": f"defaults, {size} px",
        "timed": f"epochs 1 and 2 on {n_images} phantoms of {size} px",
        "seconds_per_image_epoch": per_image_epoch,
        "schedule": f"{epochs} epochs",
        "hours_per_1000_images": hours,
    }


def small_row(name, detector, size, n_images, note):
    seconds = timed_fit(detector, phantoms(n_images, size))
    print(f"{name} small: {seconds:.1f} s ({note})", flush=True)
    return {"settings": note, "params": _params(detector), "images": n_images, "image_size": size,
            "fit_seconds": seconds}


def _params(detector):
    return {k: v for k, v in detector.get_params().items() if k not in ("callbacks",)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {}

    rows["CAEDetector"] = {
        "paper": epochs_paper_row("CAE", CAEDetector(random_state=0, augment=None), 512, 16, 1000),
        "small": small_row("CAE", CAEDetector(channels=(16, 32, 64), max_epochs=12, lr=2e-3, augment=None,
                                              random_state=0), 32, 300,
                           "channels=(16, 32, 64), max_epochs=12, lr=2e-3, 32 px (the README's example)"),
    }
    rows["VAEDetector"] = {
        "paper": epochs_paper_row("VAE", VAEDetector(random_state=0, augment=None), 512, 16, 500),
        "small": small_row("VAE", VAEDetector(channels=(16, 32, 64), latent_dim=32, max_epochs=12, lr=2e-3,
                                              augment=None, random_state=0), 32, 300,
                           "channels=(16, 32, 64), latent_dim=32, max_epochs=12, lr=2e-3, 32 px"),
    }

    # AnoGAN: training at the paper's size, and its expensive part, scoring (500 search
    # steps per image), per 1,000 images.
    anogan = AnoGANDetector(random_state=0, n_offset_samples=16)
    paper = epochs_paper_row("AnoGAN", anogan, 64, 128, 25)
    X = phantoms(16, 64, seed=1)
    anogan.set_params(n_search_steps=10)
    start = time.perf_counter()
    anogan.score_samples(X)
    per_image = (time.perf_counter() - start) / 16 * 500 / 10
    paper["score_seconds_per_image_at_500_steps"] = per_image
    paper["score_hours_per_1000_images"] = per_image * PER_IMAGES / 3600
    rows["AnoGANDetector"] = {
        "paper": paper,
        "small": small_row("AnoGAN", AnoGANDetector(channels=(16, 32), latent_dim=16, max_epochs=60, batch_size=32,
                                                    n_search_steps=100, random_state=0), 16, 300,
                           "channels=(16, 32), latent_dim=16, max_epochs=60, n_search_steps=100, 16 px "
                           "(the user guide's)"),
    }

    # f-AnoGAN / P-AnoGAN: the GAN stage by iterations (a batch each), the encoder by
    # epochs; 64 px patches.
    rows["OneClassAdversarialDetector"] = {
        "paper": epochs_paper_row("OneClass", OneClassAdversarialDetector(random_state=0), 64, 64, 15),
        "small": small_row("OneClass", OneClassAdversarialDetector(channels=(16, 32, 64), latent_dim=32, max_epochs=20,
                                                                   batch_size=32, random_state=0), 32, 300,
                           "channels=(16, 32, 64), latent_dim=32, max_epochs=20, batch_size=32, 32 px"),
    }
    save(args, rows)
    X = phantoms(32, 64)
    for name, params, iterations in [
        ("P-AnoGAN (FAnoGANDetector())", {}, 536_000),
        ("f-AnoGAN (generator='wgan-gp', encoder='critic', loss='izif')",
         dict(generator="wgan-gp", encoder="critic", loss="izif"), None),
    ]:
        short = 10
        detector = FAnoGANDetector(random_state=0, gan_iterations=short, max_epochs=1, **params)
        start = time.perf_counter()
        detector.fit(X)
        total = time.perf_counter() - start
        gan_iterations = detector.n_iter_["gan"] if isinstance(detector.n_iter_, dict) else short
        config = detector.network_config_
        full_iterations = iterations
        if full_iterations is None:  # f-AnoGAN: 7 epochs of batch 64 generator steps (5 critic steps each)
            full_iterations = int(7 * PER_IMAGES / 64)
        gan_seconds = float(np.sum(detector.histories_["gan"][:, "dur"]))
        encoder_seconds = float(np.sum(detector.histories_["encoder"][:, "dur"]))
        per_iteration = gan_seconds / short
        encoder_per_image_epoch = encoder_seconds / X.shape[0]
        encoder_epochs = 30 if not params else 50_000 * 64 / PER_IMAGES
        hours = (per_iteration * full_iterations + encoder_per_image_epoch * encoder_epochs * PER_IMAGES) / 3600
        print(f"{name}: {per_iteration:.2f} s per GAN iteration, {hours:.0f} h per 1000 images", flush=True)
        rows[name] = {
            "paper": {
                "settings": "defaults" if not params else str(params),
                "timed": f"gan_iterations={short} (schedule scaled), 1 encoder epoch on {X.shape[0]} phantoms of 64 px",
                "gan_seconds_per_iteration": per_iteration,
                "gan_iterations": full_iterations,
                "encoder_seconds_per_image_epoch": encoder_per_image_epoch,
                "encoder_epochs_over_1000_images": encoder_epochs,
                "hours_per_1000_images": hours,
                "short_run_seconds": total,
                "network_config": config,
                "gan_history_iterations": gan_iterations,
            },
        }
        save(args, rows)
    rows["P-AnoGAN (FAnoGANDetector())"]["small"] = small_row(
        "P-AnoGAN", FAnoGANDetector(encoder="critic", gan_channels=(32, 16, 8), latent_dim=16, gan_iterations=1000,
                                    max_epochs=20, batch_size=32, random_state=0), 16, 300,
        "encoder='critic', gan_channels=(32, 16, 8), latent_dim=16, gan_iterations=1000, max_epochs=20, "
        "batch_size=32, 16 px (the user guide's)",
    )

    save(args, rows)


def save(args, rows):
    """Write what is measured so far (the paper-size runs take many minutes each)."""
    result = {
        "protocol": __doc__.strip().splitlines()[0],
        "command": "python benchmarks/bench_cpu_settings.py",
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__},
        "per_images": PER_IMAGES,
        "detectors": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
