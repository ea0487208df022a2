"""Networks and training stages of f-AnoGAN / P-AnoGAN: progressive growth, encoder
losses and scores against their formulas, the frozen GAN, epoch selection."""

import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from skanomaly.detectors.fanogan.encoders import Encoder, make_encoder
from skanomaly.detectors.fanogan.networks import CriticEncoder, ResidualCritic, ResidualGenerator, upsample_nearest2x
from skanomaly.detectors.fanogan.progressive import MinibatchStdDev, ProgressiveDiscriminator, ProgressiveGenerator
from skanomaly.training.adversarial import Update, real_batch_statistics
from skanomaly.detectors.fanogan.losses import encoder_loss, encoder_scores
from skanomaly.detectors.fanogan.training import BestValidationAUC, EncoderNet
from skanomaly.detectors.fanogan.training import (
    PAPER_ITERATIONS,
    ProgressiveGANNet,
    fade_alpha,
    paper_schedule,
)
from skanomaly.training.stages import MaxIter

# ------------------------------------------------------------------ networks


def test_progressive_networks_of_the_paper():
    generator, discriminator = ProgressiveGenerator(), ProgressiveDiscriminator()
    x = generator(torch.randn(2, 512))
    assert x.shape == (2, 1, 64, 64)
    assert discriminator.features(x).shape == (2, 512)  # D_f, n_d = 512
    assert discriminator(x).shape == (2,)
    assert [block[1].weight.shape[0] for block in generator.blocks] == [512, 512, 512, 256]
    kernels = {m.weight.shape[-1] for m in generator.modules() if hasattr(m, "he_constant") and m.weight.ndim == 4}
    assert kernels == {1, 3}


@torch.no_grad()
def test_progressive_growth_and_fade_in():
    torch.manual_seed(0)
    generator = ProgressiveGenerator(latent_dim=8, channels=(8, 8, 4))
    discriminator = ProgressiveDiscriminator(channels=(8, 8, 4))
    z = torch.randn(3, 8)
    for scale, side in enumerate((4, 8, 16)):
        generator.set_growth(scale, 0.0)
        discriminator.set_growth(scale, 0.0)
        image = generator(z)
        assert image.shape == (3, 1, side, side)
        assert discriminator(image).shape == (3,)
    # alpha = 1 at a new scale: the output is the previous scale's, upsampled.
    generator.set_growth(1, 0.0)
    coarse = generator(z)
    generator.set_growth(2, 1.0)
    torch.testing.assert_close(generator(z), F.interpolate(coarse, scale_factor=2), atol=1e-6, rtol=1e-5)
    # The discriminator fades in at the first grown scale too (pytorch_GAN_zoo skips it).
    discriminator.set_growth(1, 1.0)
    x = torch.rand(3, 1, 8, 8)
    faded = discriminator(x)
    discriminator.set_growth(0, 0.0)
    torch.testing.assert_close(faded, discriminator(F.avg_pool2d(x, 2)), atol=1e-5, rtol=1e-4)


def test_upsampling_equals_torch_nearest_interpolation():
    x = torch.randn(3, 5, 4, 6)
    assert torch.equal(upsample_nearest2x(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_minibatch_stddev_is_batch_independent_in_eval_mode():
    layer = MinibatchStdDev()
    x = torch.randn(8, 3, 4, 4)
    # In training mode an image's channel depends on its group...
    assert not torch.allclose(layer(x)[0, -1], layer(torch.cat([x[:1], 5 * x[1:]]))[0, -1])
    # ...and its running mean moves only on passes the training loop marks as real.
    assert layer.running_std == 0
    with real_batch_statistics(layer):
        layer(x)
    assert layer.running_std > 0
    layer.eval()
    alone = layer(x[:1])
    together = layer(torch.cat([x[:1], 5 * x[1:]]))
    torch.testing.assert_close(alone[0], together[0])


def test_residual_networks_of_the_fanogan_code():
    generator, critic, encoder = ResidualGenerator(), ResidualCritic(), CriticEncoder()
    x = generator(torch.randn(2, 128))
    assert x.shape == (2, 1, 64, 64) and x.abs().max() <= 1
    assert critic.features(x).shape == (2, 8192)
    assert critic(x).shape == (2,)
    z = encoder(x)
    assert z.shape == (2, 128) and z.abs().max() <= 1
    # LayerNorm per image over (C, H, W) in the critic; BatchNorm in the encoder.
    assert any(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1 for m in critic.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    with torch.no_grad():
        torch.testing.assert_close(critic(x[:1]), critic(x)[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "densenet169", "resnet18"])
def test_torchvision_encoders_take_one_channel_and_download_nothing(name, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    encoder = make_encoder(name, 512).eval()
    with torch.no_grad():
        assert encoder(torch.rand(2, 1, 64, 64)).shape == (2, 512)
    assert Encoder(name, 7)(torch.rand(2, 1, 32, 32)).shape == (2, 7)


# ------------------------------------------------------------------ schedule


def test_paper_schedule():
    per_scale, fade = paper_schedule(5)
    assert per_scale == (48_000, 96_000, 96_000, 96_000, 200_000) and sum(per_scale) == PAPER_ITERATIONS
    assert fade == 19_200
    # alpha drops by 1/600 every 32 iterations.
    assert fade_alpha(0, fade) == 1.0 and fade_alpha(31, fade) == 1.0
    assert fade_alpha(32, fade) == pytest.approx(1 - 1 / 600)
    assert fade_alpha(19_200, fade) == 0.0
    small, small_fade = paper_schedule(5, 536)
    assert small == (48, 96, 96, 96, 200) and small_fade == pytest.approx(19.2)
    assert sum(paper_schedule(3, 1001)[0]) == 1001
    assert min(paper_schedule(5, 5)[0]) == 1
    with pytest.raises(ValueError, match="at least 5 iterations"):
        paper_schedule(5, 4)


def _progressive_net(**kwargs):
    per_scale, fade = paper_schedule(3, 30)
    settings = dict(
        generator__latent_dim=4,
        generator__channels=(8, 4, 4),
        discriminator__channels=(8, 4, 4),
        iterations_per_scale=per_scale,
        fade_iterations=fade,
        loss="wgan-gp",
        drift_weight=0.001,
        latent_dim=4,
        x_range=(-1, 1),
        batch_size=4,
        max_epochs=20,
        callbacks=[MaxIter(30)],
        verbose=0,
    )
    settings.update(kwargs)
    return ProgressiveGANNet(ProgressiveGenerator, ProgressiveDiscriminator, **settings)


def test_progressive_gan_grows_through_every_scale_and_averages_the_generator():
    X = np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32)
    net = _progressive_net()
    seen = []
    original = net.prepare_batch

    def record(batch, training):
        inputs = original(batch, training)
        if training:
            seen.append((inputs["x"].shape[-1], float(net.generator_.alpha)))
        return inputs

    net.prepare_batch = record
    net.fit(X)
    assert net.schedule_complete_ and net.n_discriminator_steps_ == 30
    sides = [side for side, _ in seen]
    assert sides == sorted(sides) and set(sides) == {4, 8, 16}
    # Each new scale starts faded (alpha = 1) and the fade decreases.
    first_at_8 = next(alpha for side, alpha in seen if side == 8)
    assert first_at_8 == 1.0
    assert int(net.generator_.scale) == 2 and float(net.generator_.alpha) == 0.0
    ema, generator = net.generator_ema_, net.generator_
    assert int(ema.scale) == 2
    assert not any(p.requires_grad for p in ema.parameters())
    differs = [not torch.equal(a, b) for a, b in zip(ema.parameters(), generator.parameters())]
    assert any(differs)
    assert net.sample(3).shape == (3, 1, 16, 16)


def test_the_generator_average_is_the_textbook_exponential_average_restarted_per_scale():
    """``generator_ema_`` (torch's AveragedModel) equals an average written out by
    hand: a copy of the generator when a scale starts, then ``lerp(avg, G, 1 - decay)``
    after every generator step."""
    X = np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32)
    net = _progressive_net(ema_decay=0.7)
    steps = []  # (scale, generator parameters) after each generator update
    original = net.after_update

    def record(update):
        original(update)
        if update.group == "g":
            steps.append((int(net.generator_.scale), [p.detach().clone() for p in net.generator_.parameters()]))

    net.after_update = record
    net.initialize()
    expected = [p.detach().clone() for p in net.generator_.parameters()]
    previous, scale = expected, 0
    net.fit(X)
    assert len({s for s, _ in steps}) == 3
    for step_scale, params in steps:
        if step_scale != scale:
            expected, scale = [p.clone() for p in previous], step_scale
        expected = [torch.lerp(a, g, 1 - 0.7) for a, g in zip(expected, params)]
        previous = params
    for average, want in zip(net.generator_ema_.parameters(), expected):
        torch.testing.assert_close(average, want, rtol=0, atol=0)


def test_a_pickled_progressive_net_carries_no_averager_and_resumes_its_average():
    X = np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32)
    net = _progressive_net(ema_decay=0.7).fit(X)
    assert net._generator_averager.module is net.generator_ema_
    restored = pickle.loads(pickle.dumps(net))
    assert not hasattr(restored, "_generator_averager")
    before = [p.detach().clone() for p in restored.generator_ema_.parameters()]
    restored.after_update(Update("g", {"g_fake": 1.0}))
    # The average continues (it is not restarted from the generator).
    for average, old, generator in zip(restored.generator_ema_.parameters(), before, restored.generator_.parameters()):
        torch.testing.assert_close(average, torch.lerp(old, generator.detach(), 1 - 0.7), rtol=0, atol=0)


def test_progressive_gan_restarts_its_optimisers_at_each_scale():
    X = np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32)
    net = _progressive_net()
    optimisers = []
    original = net.initialize_optimizer

    def record(*args, **kwargs):
        result = original(*args, **kwargs)
        optimisers.append(net.optimizer_d_)
        return result

    net.initialize_optimizer = record
    net.fit(X)
    assert len({id(o) for o in optimisers}) == 3  # initialise + two new scales


# ------------------------------------------------------------------ encoder


@pytest.fixture(scope="module")
def tiny_gan():
    torch.manual_seed(0)
    generator = ResidualGenerator(latent_dim=3, channels=(16, 16, 16)).eval()
    critic = ResidualCritic(channels=(16, 16, 16)).eval()
    return generator, critic


def _encoder(latent_dim=3):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, latent_dim))


def test_encoder_losses_follow_their_formulas(tiny_gan):
    generator, critic = tiny_gan
    encoder = _encoder()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    roi = torch.ones_like(x, dtype=torch.bool)
    z = encoder(x)
    x_hat = generator(z)
    izi = ((x - x_hat) ** 2).mean()
    feature = ((critic.features(x) - critic.features(x_hat)) ** 2).mean()
    latent = ((z - encoder(x_hat)) ** 2).mean()
    kappa = 0.7
    with torch.no_grad():
        torch.testing.assert_close(encoder_loss("izi", x, roi, encoder, generator, critic, kappa), izi)
        torch.testing.assert_close(encoder_loss("izif", x, roi, encoder, generator, critic, kappa), izi + kappa * feature)
        torch.testing.assert_close(
            encoder_loss("izizf", x, roi, encoder, generator, critic, kappa), izi + kappa * feature + latent
        )
        prior = torch.randn(5, 3)
        torch.testing.assert_close(
            encoder_loss("ziz", x, roi, encoder, generator, critic, kappa, prior),
            ((prior - encoder(generator(prior))) ** 2).mean(),
        )


def test_encoder_scores_follow_their_formulas(tiny_gan):
    generator, critic = tiny_gan
    encoder = _encoder()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    roi = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        z = encoder(x)
        x_hat = generator(z)
        residual = (x - x_hat).abs().mean(dim=(1, 2, 3))
        izizf = residual + (z - encoder(x_hat)).abs().mean(1)
        izif = ((x - x_hat) ** 2).mean(dim=(1, 2, 3)) + 2.0 * (
            (critic.features(x) - critic.features(x_hat)) ** 2
        ).mean(1)
        for name, expected in (("residual", residual), ("izizf", izizf), ("izif", izif)):
            torch.testing.assert_close(encoder_scores(name, x, roi, encoder, generator, critic, 2.0)[1], expected)
        # Outside the ROI x~ takes x's values and pixel means run over the ROI only.
        roi[:, :, :4] = False
        x_hat, residual = encoder_scores("residual", x, roi, encoder, generator, critic, 1.0)
        expected = torch.stack([(x[i] - x_hat[i])[roi[i]].abs().mean() for i in range(5)])
        torch.testing.assert_close(residual, expected)
        assert torch.equal(x_hat[~roi], x[~roi])


def _encoder_net(generator, critic, **kwargs):
    settings = dict(
        module__name="critic",
        module__latent_dim=3,
        module__channels=(16, 16, 16),
        frozen_modules={"generator": generator, "discriminator": critic},
        loss="izizf",
        x_range=(-1, 1),
        image_side=16,
        batch_size=8,
        max_epochs=3,
        train_split=None,
        verbose=0,
    )
    settings.update(kwargs)
    return EncoderNet(Encoder, **settings)


@pytest.mark.parametrize("loss", ["izi", "ziz", "izif", "izizf"])
def test_the_gan_is_bit_identical_after_the_encoder_stage(tiny_gan, loss):
    generator, critic = tiny_gan
    before = {k: v.clone() for k, v in [*generator.state_dict().items(), *critic.state_dict().items()]}
    X = np.random.default_rng(0).random((24, 1, 16, 16), dtype=np.float32)
    net = _encoder_net(generator, critic, loss=loss).fit(X)
    after = dict([*generator.state_dict().items(), *critic.state_dict().items()])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not generator.training and not critic.training
    losses = net.history[:, "train_loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_best_validation_auc_restores_the_best_epoch(tiny_gan):
    generator, critic = tiny_gan
    rng = np.random.default_rng(0)
    X = rng.random((24, 1, 16, 16), dtype=np.float32)
    X_valid = rng.random((20, 16, 16), dtype=np.float32)
    y_valid = np.repeat([0, 1], 10)
    states = []

    class Snapshot(BestValidationAUC):
        def on_epoch_end(self, net, **kwargs):
            super().on_epoch_end(net, **kwargs)
            states.append({k: v.clone() for k, v in net.module_.state_dict().items()})

    callback = Snapshot(X_valid, y_valid)
    net = _encoder_net(generator, critic, max_epochs=5, callbacks=[callback]).fit(X)
    aucs = net.history[:, "valid_auc"]
    best = int(np.argmax(aucs))
    assert callback.best_epoch_ == best + 1 and callback.best_score_ == aucs[best]
    assert net.history[:, "valid_auc_best"].count(True) >= 1
    restored = net.module_.state_dict()
    assert all(torch.equal(restored[k], states[best][k]) for k in restored)
    np.testing.assert_allclose(
        __import__("sklearn.metrics", fromlist=["roc_auc_score"]).roc_auc_score(y_valid, net.anomaly_scores(X_valid)),
        aucs[best],
    )


def test_best_validation_auc_refuses_bad_input(tiny_gan):
    generator, critic = tiny_gan
    X = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    for X_valid, y_valid, match in (
        (np.zeros((4, 16, 16)), [0, 0, 0, 0], "both present"),
        (np.zeros((4, 2, 16, 16)), [0, 1, 0, 1], "shape"),
        (np.full((4, 16, 16), 200.0), [0, 1, 0, 1], r"\[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            _encoder_net(generator, critic, callbacks=[BestValidationAUC(X_valid, y_valid)]).fit(X)
