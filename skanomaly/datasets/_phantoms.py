"""Synthetic chest-radiograph phantoms with lung masks and nodule-like anomalies.

The phantoms are built the way a radiograph forms: an attenuation map (soft tissue,
air-filled lungs, bone, heart) is summed and then displayed through a per-patient
window and gamma. Anatomy, not global brightness, separates normal from abnormal
images: a nodule is a small bright blob inside a lung field, dimmer than the bones,
mediastinum and abdomen, so neither the brightest pixel nor the mean intensity gives
it away; a detector has to learn what lungs look like.
"""

from __future__ import annotations

from numbers import Integral, Real

import cv2
import numpy as np
from sklearn.utils import Bunch, check_random_state

__all__ = ["make_chest_phantoms"]

# Nodule radius as a fraction of the image side (3.2-5.8 px at 64 px; JSRT nodules
# span about 0.5-6 % of the field of view, the upper half of which a detector trained
# at 32-64 px can resolve at all).
NODULE_RADIUS_RANGE = (0.05, 0.09)
# Nodule peak attenuation as a fraction of the local lung-versus-soft-tissue contrast:
# 0 would be invisible, 1 as dense as the mediastinum.
NODULE_CONTRAST_RANGE = (0.5, 1.0)
# Width of the soft rim of the nodule, as a fraction of its radius.
NODULE_SOFTNESS = 0.35

# Pixels per chunk of vectorised work: bounds memory at large image sizes.
_CHUNK_PIXELS = 2**22
_LUT_SIZE = 512
# Width (fraction of the image) over which a lung darkens inwards from the chest wall.
_WALL_TAPER = 0.04
# Steepness of the display's characteristic curve (attenuation -> brightness).
_FILM_K = 1.6


def _check_params(n_samples, image_size, anomaly_fraction):
    if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}.")
    if not isinstance(image_size, Integral) or isinstance(image_size, bool) or image_size < 16:
        raise ValueError(
            f"image_size must be an integer >= 16 (the anatomy needs at least 16x16 "
            f"pixels), got {image_size!r}."
        )
    if (
        not isinstance(anomaly_fraction, Real)
        or isinstance(anomaly_fraction, bool)
        or not 0 <= anomaly_fraction <= 1
    ):
        raise ValueError(
            f"anomaly_fraction must be a number in [0, 1], got {anomaly_fraction!r}."
        )


def _sigmoid(z):
    """Smooth step with the logistic's slope at 0, from polynomials only (several times
    faster than ``tanh`` on large arrays; the exact shape of an edge does not matter)."""
    u = np.clip(z * np.float32(1 / 6) + np.float32(0.5), 0, 1)
    return u * u * (3 - 2 * u)


def _quarter(z):
    """Quarter-ellipse profile: 0 at z=0 with a vertical tangent (a rounded apex), 1 for z>=1."""
    z = np.clip(z, 0.0, 1.0)
    return np.sqrt(1.0 - (1.0 - z) ** 2)


def _rib_profiles(n=_LUT_SIZE):
    """Cross-sections of one rib period as lookup tables (cheaper than evaluating
    transcendental functions on every pixel)."""
    frac = np.linspace(0, 1, n)
    duty = 0.45
    arg = np.minimum(frac, duty) * np.pi / duty
    # sin^0.6: flat-topped bands; the cos^4 term: the denser cortical edges.
    posterior = (frac < duty) * np.abs(np.sin(arg)) ** 0.6 * (0.8 + 0.4 * np.cos(arg) ** 4)
    anterior = np.exp(-((np.minimum(frac, 1 - frac) / 0.12) ** 2))
    return posterior.astype(np.float32), anterior.astype(np.float32)


_RIB_PROFILE, _ANTERIOR_PROFILE = _rib_profiles()


def _patient_params(rng, n):
    """Per-patient anatomy and acquisition, drawn once so that chunking changes nothing."""
    u = lambda lo, hi: rng.uniform(lo, hi, size=n)  # noqa: E731
    return {
        # Positioning: rotation, zoom, shift of the whole chest in the field.
        "angle": np.deg2rad(u(-4, 4)),
        "zoom": u(0.92, 1.1),
        "shift_x": u(-0.035, 0.035),
        "shift_y": u(-0.035, 0.035),
        # Habitus.
        "body_half_width": u(0.5, 0.62),
        "neck_half_width": u(0.09, 0.14),
        "shoulder_y": u(-0.06, 0.04),
        "apex_y": u(0.07, 0.12),
        "lung_width": u(0.90, 1.08),
        "lung_height": u(0.92, 1.06),
        "right_dome_y": u(0.66, 0.74),
        "dome_drop": u(0.14, 0.21),
        "left_dome_extra": u(0.01, 0.05),
        "heart_cx": u(0.09, 0.13),
        "heart_cy": u(0.62, 0.68),
        "heart_rx": u(0.22, 0.27),
        "heart_ry": u(0.12, 0.16),
        "heart_angle": np.deg2rad(u(45, 62)),
        "knob": u(0.0, 1.0),
        # Densities (attenuation units; soft tissue = 1).
        "lung_air": u(0.45, 0.62),
        "rib_density": u(0.05, 0.1),
        "rib_spacing": u(0.075, 0.09),
        "rib_phase": u(0.0, 1.0),
        "rib_slope": u(0.2, 0.4),
        "rib_curve": u(2.0, 3.5),
        "clavicle_density": u(0.15, 0.28),
        "spine_density": u(0.15, 0.3),
        "vessel_density": u(0.04, 0.08),
        "texture": u(0.015, 0.03),
        # Display: window, gamma, noise.
        "window_lo": u(-0.05, 0.15),
        "window_hi": u(0.95, 1.3),
        "gamma": np.exp(u(np.log(0.75), np.log(1.35))),
        "noise": u(0.004, 0.012),
    }


def _bandpass_noise(rng, n, size, bands):
    """Smooth random fields, one per ``(low, high)`` band of spatial frequencies (cycles
    per image), all from one white-noise draw.

    The bands are low-frequency, so the fields are synthesised on a grid of half the
    size and upsampled: a quarter of the FFT work.
    """
    small = max(8, size // 2)
    white = rng.standard_normal((n, small, small), dtype=np.float32)
    spectrum = np.fft.rfft2(white)
    fy = np.fft.fftfreq(small)[:, None] * small
    fx = np.fft.rfftfreq(small)[None, :] * small
    radius = np.sqrt(fx**2 + fy**2)
    fields = []
    for low, high in bands:
        filt = np.exp(-((radius / high) ** 2)) * (1 - np.exp(-((radius / low) ** 2)))
        field = np.fft.irfft2(spectrum * filt.astype(np.float32), s=(small, small))
        field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
        if small != size:
            # cv2 resizes up to 128 channels at once: stack the fields along the last axis.
            parts = [
                cv2.resize(
                    np.ascontiguousarray(field[j : j + 128].transpose(1, 2, 0)),
                    (size, size),
                    interpolation=cv2.INTER_LINEAR,
                ).reshape(size, size, -1)
                for j in range(0, n, 128)
            ]
            field = np.concatenate(parts, axis=2).transpose(2, 0, 1)
        fields.append(field)
    return fields


def _anatomy(p, size, rng):
    """Attenuation maps and hard lung masks of one chunk, in the canonical frame.

    Coordinates: ``x`` from -0.5 (image left, the patient's right) to 0.5, ``y`` from
    0 (top) to 1. Patient positioning is applied afterwards by :func:`_position`, so
    that here every term depends on ``x`` or ``y`` alone until it meets the other:
    most of the work is on ``(n, 1, size)`` or ``(n, size, 1)`` arrays.
    """
    n = len(p["zoom"])
    col = lambda k: p[k][:, None, None]  # noqa: E731
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = grid[None, None, :] - 0.5, grid[None, :, None]
    ax = np.abs(x)
    edge = 1.2 / size  # boundary softness: about one pixel

    # Trunk: neck widening into the shoulders, then the chest wall.
    half = col("neck_half_width") + (col("body_half_width") - col("neck_half_width")) * _sigmoid(
        (y - col("shoulder_y")) / 0.025
    )
    body = _sigmoid((half - ax) / (2 * edge))
    thickness = 0.75 + 0.25 * np.sqrt(np.clip(1 - (ax / half) ** 2, 0, 1))
    # The abdomen below the domes is thicker than the chest.
    atten = body * thickness * (1 + 0.15 * _sigmoid((y - 0.8) / 0.05))

    # Heart: an ellipse whose long axis runs from the right atrium down to the apex on
    # the patient's left; its shadow is outside the lung fields (SCR convention).
    hc, hs = np.cos(col("heart_angle")), np.sin(col("heart_angle"))
    hx, hy = x - col("heart_cx"), y - col("heart_cy")
    heart_r = np.sqrt(
        ((hc * hx + hs * hy) / col("heart_rx")) ** 2 + ((hc * hy - hs * hx) / col("heart_ry")) ** 2
    )
    heart_d = (heart_r - 1) * np.minimum(col("heart_rx"), col("heart_ry"))

    # Lung fields, apex to costophrenic angle: the patient's right lung (image left) is
    # wider and its dome higher (the liver); the left one loses the cardiac notch.
    lung_d = None
    apex = col("apex_y")
    for side in (-1, 1):
        right = side < 0
        width = col("lung_width") * (1.0 if right else 0.96)
        apex_x = side * 0.16 * width
        lateral_w = (0.25 if right else 0.24) * width
        medial_w = 0.11 * width
        dome_y = col("right_dome_y") + (0 if right else col("left_dome_extra"))
        dome_y = 0.5 + (dome_y - 0.5) * col("lung_height")
        # The domes peak medially and fall to the costophrenic angles.
        dome_x = side * (0.08 if right else 0.1) * width
        dome_w = apex_x + side * lateral_w - dome_x
        base_y = dome_y + col("dome_drop") + 0.03
        t = (y - apex) / (base_y - apex)
        lateral = apex_x + side * lateral_w * _quarter(t / 0.75)
        medial = apex_x - side * medial_w * _quarter(t / 0.12) + side * 0.015 * np.clip(t, 0, 1)
        if not right:
            # Aortic knob: the left upper mediastinum bulges into the lung.
            medial = medial + 0.035 * (col("knob") > 0.3) * np.exp(-(((y - 0.3) / 0.04) ** 2))
        dome = dome_y + col("dome_drop") * ((x - dome_x) / dome_w) ** 2
        # Signed distance-like depth inside the field: positive inside the lung.
        d = np.minimum(side * (lateral - x), side * (x - medial))
        d = np.minimum(np.minimum(d, y - apex), dome - y)
        # Depth below the chest wall and the apex, where the lung thins out.
        wall = np.minimum(side * (lateral - x), y - apex)
        if lung_d is None:
            lung_d, lung_wall = d, wall
        else:
            lung_wall = np.where(d > lung_d, wall, lung_wall)
            lung_d = np.maximum(lung_d, d)
    lung_d = np.minimum(lung_d, heart_d)
    masks = lung_d > 0
    lungs_soft = _sigmoid(lung_d / edge)

    # Air in the lungs: thickest laterally and towards the base, thinner at the apex
    # (shoulder muscles) and near the hila.
    depth = 0.75 + 0.25 * _sigmoid((y - 0.3) / 0.08) + 0.15 * np.clip(ax / 0.35, 0, 1)
    lung_air = col("lung_air") * depth
    # The lung is a rounded volume: along the chest wall and at the apex the X-ray
    # crosses little of it, so the field darkens gradually inwards from its border.
    taper = np.sqrt(np.clip(lung_wall * np.float32(1 / _WALL_TAPER), 0, 1))
    atten = atten - lung_air * taper * lungs_soft
    atten = atten + 0.08 * _sigmoid(-heart_d / (3 * edge))

    # Trachea: an air column down the upper mediastinum.
    trachea = _sigmoid((0.018 - ax) / edge) * _sigmoid((0.36 - y) / 0.03)
    # Spine: a dense central column with vertebral segments.
    spine = _sigmoid((0.035 - ax) / (1.5 * edge)) * (
        (0.85 + 0.15 * np.cos(2 * np.pi * y / 0.05)) * _sigmoid((y - 0.05) / 0.02)
    )
    atten = atten + col("spine_density") * spine - 0.3 * col("lung_air") * trachea

    # Posterior ribs: parallel arcs rising laterally from the spine then curving down
    # along the chest wall; anterior ribs, fainter, slope the other way.
    thorax = _sigmoid((0.47 - ax) / 0.02) * _sigmoid((ax - 0.04) / 0.01)
    thorax = body * thorax * (_sigmoid((y - 0.08) / 0.02) * _sigmoid((0.78 - y) / 0.04))
    phase = (y + col("rib_slope") * ax - col("rib_curve") * ax**2.5) / col("rib_spacing")
    frac = phase + col("rib_phase")
    band = _RIB_PROFILE[((frac - np.floor(frac)) * (_LUT_SIZE - 1)).astype(np.int32)]
    ant_phase = (y - 0.5 * ax) / (col("rib_spacing") * 1.4) + 0.3
    ant = _ANTERIOR_PROFILE[((ant_phase - np.floor(ant_phase)) * (_LUT_SIZE - 1)).astype(np.int32)]
    # Without air around them the ribs stand out less (the display curve flattens
    # there too, but not enough on its own).
    thorax = thorax * (0.5 + 0.5 * lungs_soft)
    atten = atten + col("rib_density") * (band + 0.35 * ant) * thorax

    # Clavicles: S-shaped bands from the sternal notch to the shoulders.
    clav_y = 0.16 - 0.12 * ax + 0.25 * (ax - 0.2) ** 2
    clav = _sigmoid((ax - 0.04) / 0.01) * _sigmoid((0.4 - ax) / 0.02)
    clav = np.exp(-(((y - clav_y) / 0.018) ** 2)) * clav
    atten = atten + col("clavicle_density") * clav * body

    # Vessels: the ridges (zero crossings) of a band-pass field form a branching
    # network of thin bright lines, densest towards the hila; mottled soft tissue
    # everywhere.
    vessels, mottle = _bandpass_noise(rng, n, size, [(size / 32, size / 10), (size / 32, size / 8)])
    hila = np.exp(-(((ax - 0.11) / 0.06) ** 2) - ((y - 0.45) / 0.1) ** 2)
    ridges = np.clip(1 - np.abs(vessels) * np.float32(2.5), 0, 1) ** 2
    vessels = ridges * (0.5 + 0.5 * _sigmoid((0.3 - ax) / 0.05)) + 1.5 * hila
    atten = atten + col("vessel_density") * vessels * lungs_soft + col("texture") * mottle
    return atten.astype(np.float32), masks, lung_air


def _position(p, size, atten, masks, lung_air):
    """Rotate, zoom and shift each patient in the field (per image, in place)."""
    c = size / 2
    for i in range(len(atten)):
        matrix = cv2.getRotationMatrix2D((c, c), float(np.rad2deg(p["angle"][i])), float(p["zoom"][i]))
        matrix[:, 2] += np.array([p["shift_x"][i], p["shift_y"][i]]) * size
        # Beyond the edges the anatomy continues: replicate (arms, abdomen, neck).
        warp = dict(dsize=(size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        atten[i] = cv2.warpAffine(atten[i], matrix, **warp)
        lung_air[i] = cv2.warpAffine(lung_air[i], matrix, **warp)
        masks[i] = cv2.warpAffine(masks[i].astype(np.float32), matrix, **warp) > 0.5


def _place_nodules(masks, radius, rng):
    """Random centres (x, y) inside each lung mask, a radius away from its border."""
    centers = np.empty((len(masks), 2))
    for i, (mask, r) in enumerate(zip(masks, radius)):
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        ok = np.argwhere(dist >= r + 1)
        if not len(ok):  # very small lungs: the deepest point
            ok = np.argwhere(dist >= dist.max())
        row, column = ok[rng.integers(len(ok))]
        centers[i] = column + rng.uniform(-0.5, 0.5), row + rng.uniform(-0.5, 0.5)
    return centers


def make_chest_phantoms(n_samples=100, *, image_size=64, anomaly_fraction=0.5, random_state=None):
    """Synthetic chest radiographs, lung masks and nodule-like anomalies.

    Each phantom has a body outline, two lung fields (the right one larger, the left
    one with the cardiac notch), heart and mediastinum, spine, posterior and anterior
    ribs, clavicles, diaphragm domes and vascular texture, with per-patient variation
    of habitus, positioning, exposure, contrast, gamma and noise. Abnormal images get
    one nodule: a soft bright disc inside a lung field, brighter than the lung around
    it but far dimmer than bone or mediastinum, so it is visible locally and not from
    global intensity statistics.

    Parameters
    ----------
    n_samples : int, default=100
        Number of images.
    image_size : int, default=64
        Side of the square images, at least 16.
    anomaly_fraction : float in [0, 1], default=0.5
        Fraction of images with a nodule; exactly ``round(anomaly_fraction *
        n_samples)`` are abnormal, in random order.
    random_state : int, RandomState instance or None, default=None
        Seeds a local generator; the global NumPy state is never used.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        images : ndarray of float32, shape (n_samples, image_size, image_size)
            Values in [0, 1], bone and soft tissue bright, air dark.
        masks : ndarray of bool, shape (n_samples, image_size, image_size)
            The lung fields (the heart shadow and the area below the domes excluded,
            as in the SCR annotations of JSRT).
        labels : ndarray of int, shape (n_samples,)
            1 for an image with a nodule, 0 otherwise.
        centers : ndarray of float, shape (n_samples, 2)
            Nodule centre as (x, y) pixel coordinates (column, row), NaN for normal
            images.
        radii : ndarray of float, shape (n_samples,)
            Nodule radius in pixels, NaN for normal images.

    Examples
    --------
    >>> from skanomaly.datasets._phantoms import make_chest_phantoms
    >>> data = make_chest_phantoms(10, image_size=64, random_state=0)
    >>> data.images.shape, data.images.dtype, int(data.labels.sum())
    ((10, 64, 64), dtype('float32'), 5)
    """
    _check_params(n_samples, image_size, anomaly_fraction)
    if random_state is None:
        rng = np.random.default_rng()
    else:
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        rng = np.random.default_rng(seed)
    size = int(image_size)
    params = {k: v.astype(np.float32) for k, v in _patient_params(rng, n_samples).items()}
    labels = np.zeros(n_samples, dtype=int)
    labels[rng.permutation(n_samples)[: int(round(anomaly_fraction * n_samples))]] = 1
    radius = np.where(labels == 1, rng.uniform(*NODULE_RADIUS_RANGE, n_samples) * size, np.nan)
    contrast = rng.uniform(*NODULE_CONTRAST_RANGE, n_samples)

    images = np.empty((n_samples, size, size), dtype=np.float32)
    masks = np.empty((n_samples, size, size), dtype=bool)
    centers = np.full((n_samples, 2), np.nan)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    rows = np.arange(size, dtype=np.float32)
    for start in range(0, n_samples, chunk):
        sl = slice(start, min(start + chunk, n_samples))
        p = {k: v[sl] for k, v in params.items()}
        atten, mask, lung_air = _anatomy(p, size, rng)
        lung_air = np.broadcast_to(lung_air, atten.shape).astype(np.float32)
        _position(p, size, atten, mask, lung_air)
        abnormal = np.flatnonzero(labels[sl])
        if abnormal.size:
            centers[sl][abnormal] = _place_nodules(mask[abnormal], radius[sl][abnormal], rng)
            cx = centers[sl][abnormal, 0][:, None, None]
            cy = centers[sl][abnormal, 1][:, None, None]
            r = radius[sl][abnormal][:, None, None]
            dist = np.sqrt((rows[None, None, :] - cx) ** 2 + (rows[None, :, None] - cy) ** 2)
            blob = _sigmoid((r - dist) / (NODULE_SOFTNESS * r / 2))
            atten[abnormal] += contrast[sl][abnormal][:, None, None] * lung_air[abnormal] * blob
        # The display chain of the "hospital": a film-like characteristic curve
        # compresses contrast in dense regions (mediastinum, abdomen) as on real
        # radiographs, then window, gamma and quantum noise.
        exposure = (1 - np.exp(-_FILM_K * atten)) / (1 - np.exp(-_FILM_K * 1.3))
        lo, hi = p["window_lo"][:, None, None], p["window_hi"][:, None, None]
        shown = np.clip((exposure - lo) / (hi - lo), 0, 1) ** p["gamma"][:, None, None]
        shown += p["noise"][:, None, None] * rng.standard_normal(shown.shape, dtype=np.float32)
        images[sl] = np.clip(shown, 0, 1)
        masks[sl] = mask
    return Bunch(images=images, masks=masks, labels=labels, centers=centers, radii=radius)
