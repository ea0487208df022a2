"""LungMasker's fast inference path against the plain U-Net, and what it must not change.

The fast path (``UNet.inference_copy``: BatchNorm folded into the convolutions,
channels-last weights and activations, batched) computes the same function as the
trained module with float32 operations in another order, so the tolerances come from
float32 arithmetic (unit roundoff ``u = 2**-24``), not from what a machine produced:

* Layer by layer, rigorously: a convolution with fan-in ``K`` followed by a BatchNorm
  (subtract, multiply, add) is within ``gamma_{K+4} (|W'| |a| + |b'|)`` of the exact
  result (``gamma_n = n u / (1 - n u)``, ``W'``, ``b'`` the folded weights; folding
  rounds each of them once more, inside the same budget), so the two paths are within
  twice that of each other on the same input.
* End to end, the worst-case bound is useless for 23 layers (the network with every
  weight replaced by its absolute value reaches 1e18), so the standard probabilistic
  model of rounding is used instead: each layer's outputs carry independent relative
  errors of about ``sqrt(K) u``. Applying such perturbations in float64 (where
  rounding is negligible) to the plain module gives the logits' sensitivity to them;
  each path's error is allowed three times the largest such change in an image, the
  two paths twice that. The sigmoid's slope is at most 1/4 and resizing is a convex
  combination, so probabilities at full size get a quarter of it.
"""

import copy
import hashlib
import pickle

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.nn import functional as F

from skanomaly.datasets._phantoms import make_chest_phantoms
from skanomaly.nn.unet import UNet
from skanomaly.preprocessing import LungMasker, _lung
from skanomaly.preprocessing._lung import _WEIGHTS, _load_segmenter, clean_mask, network_input

U = 2.0**-24  # unit roundoff of float32


def _gamma(n):
    return n * U / (1 - n * U)


def _plain_unet():
    """The trained module as the training script leaves it: unfused, NCHW, float32."""
    checkpoint = torch.load(_WEIGHTS, map_location="cpu", weights_only=True)
    net = UNet(**checkpoint["config"]["architecture"])
    net.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    return net.eval(), checkpoint["config"]


def _logit_tolerance(net, x, draws=4, seed=0):
    """Per image: twice 3x the largest logit change that relative perturbations of
    ``sqrt(K) u`` (random signs) at every convolution's output cause, in float64."""
    net64 = copy.deepcopy(net).double()
    generator = torch.Generator().manual_seed(seed)

    def perturb(module, inputs, out):
        k = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        signs = torch.randint(0, 2, out.shape, generator=generator, dtype=out.dtype) * 2 - 1
        return out * (1 + k**0.5 * U * signs)

    with torch.inference_mode():
        exact = net64(x.double())
        convs = [m for m in net64.modules() if isinstance(m, torch.nn.Conv2d)]
        hooks = [m.register_forward_hook(perturb) for m in convs]
        try:
            changes = [(net64(x.double()) - exact).abs().amax(dim=(1, 2, 3)) for _ in range(draws)]
        finally:
            for hook in hooks:
                hook.remove()
    return 2 * 3 * torch.stack(changes).amax(dim=0)


@pytest.fixture(scope="module")
def films():
    return make_chest_phantoms(6, image_size=256, random_state=3).images


@pytest.fixture(scope="module")
def plain():
    return _plain_unet()


def test_each_fused_layer_within_float32_bound(films, plain):
    net, config = plain
    fast = net.inference_copy()
    assert fast.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.from_numpy(network_input(films, int(config["input_size"]))).unsqueeze(1)
    blocks = list(zip([*net.down, *net.up], [*fast.down, *fast.up]))
    inputs = {}

    def keep_input(module, args):
        inputs[module] = args[0]

    hooks = [plain_block.register_forward_pre_hook(keep_input) for plain_block, _ in blocks]
    with torch.inference_mode():
        net(x)
        for hook in hooks:
            hook.remove()
        for key, (plain_block, fast_block) in enumerate(blocks):
            for i in (0, 3):  # the block's two convolutions, each with its BatchNorm
                first = torch.nn.Sequential(*list(plain_block)[:3])
                a = inputs[plain_block] if i == 0 else first(inputs[plain_block])
                expected = plain_block[i + 1](plain_block[i](a)).double()
                conv = fast_block[i]
                got = conv(a.contiguous(memory_format=torch.channels_last)).double()
                k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                magnitude = F.conv2d(
                    a.double().abs(),
                    conv.weight.double().abs(),
                    conv.bias.double().abs(),
                    padding=conv.padding,
                )
                bound = 2 * _gamma(k + 4) * magnitude
                assert torch.all((got - expected).abs() <= bound), (key, i)


def test_inference_copy_matches_plain_module_end_to_end(films, plain):
    net, config = plain
    x = torch.from_numpy(network_input(films, int(config["input_size"]))).unsqueeze(1)
    tolerance = _logit_tolerance(net, x)[:, None, None, None]
    with torch.inference_mode():
        reference = net(x)
        got = net.inference_copy()(x.contiguous(memory_format=torch.channels_last))
    assert torch.all((got - reference).abs() <= tolerance)
    diff = (torch.sigmoid(got) - torch.sigmoid(reference)).abs()
    assert torch.all(diff <= tolerance / 4 + 4 * U)


def test_lung_masker_matches_plain_module(films, plain, monkeypatch):
    """Same probability maps (within the tolerance) and the same masks as LungMasker
    running the plain module, except where the plain probability is within that
    tolerance of the threshold (there either side is correct arithmetic)."""
    net, config = plain
    fast_proba = LungMasker().fit(films).probability_map(films)
    fast_masks = LungMasker(output="mask").fit_transform(films)
    x = torch.from_numpy(network_input(films, int(config["input_size"]))).unsqueeze(1)
    # Per image; resizing is a convex combination, so it does not enlarge it.
    tolerance = (_logit_tolerance(net, x) / 4 + 8 * U).numpy()[:, None, None]

    _load_segmenter.cache_clear()
    monkeypatch.setattr(_lung, "_load_segmenter", lambda path, device: (net, config))
    plain_proba = LungMasker().fit(films).probability_map(films)
    plain_masks = LungMasker(output="mask").fit_transform(films)
    monkeypatch.undo()
    _load_segmenter.cache_clear()

    assert np.all(np.abs(fast_proba - plain_proba) <= tolerance)
    decided = np.abs(plain_proba - 0.5) > tolerance
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(fast_masks[decided], plain_masks[decided])


def test_inference_copy_leaves_the_trainable_module_alone(plain):
    net, _ = plain
    net = copy.deepcopy(net).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    formats = {k: v.stride() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="eval mode"):
        net.fuse_batchnorm()
    fast = net.eval().inference_copy()
    net.train()
    after = net.state_dict()
    assert list(after) == list(before)  # tensor names, in order
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
        assert after[name].stride() == formats[name], name
    assert all(p.requires_grad for p in net.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    # The trainable module still trains.
    loss = net(torch.randn(2, 1, 64, 64)).mean()
    loss.backward()
    assert net.down[0][0].weight.grad is not None


def test_inference_does_not_change_saved_state(films):
    digest = hashlib.sha256(_WEIGHTS.read_bytes()).hexdigest()
    checkpoint = torch.load(_WEIGHTS, map_location="cpu", weights_only=True)
    names = list(UNet(**checkpoint["config"]["architecture"]).state_dict())
    assert list(checkpoint["state_dict"]) == names

    _load_segmenter.cache_clear()
    masker = LungMasker(output="mask").fit(films)
    state, pickled = masker._fitted_state(), pickle.dumps(masker)
    masker.transform(films)
    masker.probability_map(films)
    assert masker._fitted_state() == state
    assert pickle.dumps(masker) == pickled
    assert hashlib.sha256(_WEIGHTS.read_bytes()).hexdigest() == digest
    # The estimator holds no network: the fused copy lives in the process cache only.
    assert not any(isinstance(v, torch.nn.Module) for v in vars(masker).values())


def _reference_clean_mask(mask):
    """The same rule with SciPy: two largest 8-connected components, holes filled."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(-areas, kind="stable")[:2]
    floor = max(_lung._MIN_LUNG_FRACTION * mask.size, _lung._MIN_SECOND_LUNG * areas[order[0]])
    keep = [k + 1 for k in order if areas[k] >= floor]
    # binary_fill_holes fills background regions that are 4-connected to no border.
    return ndimage.binary_fill_holes(np.isin(labels, keep))


def test_clean_mask_matches_scipy_reference():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        shape = tuple(int(s) for s in rng.integers(1, 90, 2))
        noise = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), rng.uniform(0.3, 4))
        mask = noise > rng.uniform(0.3, 0.7)
        areas = np.sort(np.bincount(ndimage.label(mask, np.ones((3, 3)))[0].ravel())[1:])[::-1]
        if len(areas) > 2 and areas[1] == areas[2]:
            continue  # a tie for second place: either component is a valid choice
        np.testing.assert_array_equal(clean_mask(mask), _reference_clean_mask(mask))
        checked += 1
    assert checked > 150
    # Non-bool masks: any nonzero value is foreground.
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:18, 2:9] = 2
    mask[2:18, 11:18] = 255
    mask[8, 5] = 0
    np.testing.assert_array_equal(clean_mask(mask), _reference_clean_mask(mask > 0))


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_post_processing_gives_the_serial_result(films, threads):
    previous = cv2.getNumThreads()
    # 1024 px, so that the per-image work is large enough to be split over threads.
    big = np.stack([cv2.resize(f, (1024, 1024)) for f in films[:3]])
    try:
        cv2.setNumThreads(1)
        serial = LungMasker(output="mask", batch_size=2).fit_transform(big)
        serial_proba = LungMasker().fit(big).probability_map(big)
        cv2.setNumThreads(threads)
        np.testing.assert_array_equal(
            LungMasker(output="mask", batch_size=2).fit_transform(big), serial
        )
        np.testing.assert_array_equal(LungMasker().fit(big).probability_map(big), serial_proba)
    finally:
        cv2.setNumThreads(previous)
