"""GANNet, frozen modules and MaxIter, on a toy GAN of 4x4 images that trains in a second."""

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from torch import nn

from skanomaly.training.losses import masked_reconstruction_loss
from skanomaly.training.penalties import gradient_penalty
from skanomaly.training.random import make_generator, seeded_initialisation
from skanomaly.training.stages import GANNet, MaxIter, StageNet

SIZE = 4
LATENT_DIM = 4
BRIGHTNESS = 0.8


class ToyGenerator(nn.Module):
    def __init__(self, latent_dim=LATENT_DIM, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, SIZE * SIZE),
            nn.Tanh(),
            nn.Unflatten(1, (1, SIZE, SIZE)),
        )

    def forward(self, z):
        return self.net(z)


class ToyDiscriminator(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(SIZE * SIZE, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x):
        return self.net(x)


def images(n=64, seed=0):
    """Images of brightness 0.8 with a little noise, in [0, 1]."""
    noise = np.random.default_rng(seed).standard_normal((n, 1, SIZE, SIZE))
    return np.clip(BRIGHTNESS + 0.05 * noise, 0, 1).astype(np.float32)


def make_net(**kwargs):
    settings = dict(
        generator=ToyGenerator,
        discriminator=ToyDiscriminator,
        latent_dim=LATENT_DIM,
        x_range=(-1, 1),
        lr=1e-3,
        batch_size=8,
        max_epochs=2,
        iterator_train__shuffle=True,
        verbose=0,
    )
    return GANNet(**{**settings, **kwargs})


def first_batch(net, X):
    return next(iter(net.get_iterator(net.get_dataset(X), training=True)))


def snapshot(module):
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def same(module, state):
    current = module.state_dict()
    return current.keys() == state.keys() and all(torch.equal(current[k], state[k]) for k in state)


def changed_all_parameters(module, state):
    return all(not torch.equal(p, state[name]) for name, p in module.named_parameters())


def batches(history):
    return [batch for epoch in history for batch in epoch["batches"]]


# ------------------------------------------------------------------ optimisers
def test_each_optimiser_has_its_own_settings_and_only_its_networks_parameters():
    net = make_net(
        lr=1e-4,
        optimizer_g__betas=(0.5, 0.999),
        optimizer_d__betas=(0.0, 0.9),
        optimizer_d__lr=4e-4,
    ).initialize()
    g_groups, d_groups = net.optimizer_g_.param_groups, net.optimizer_d_.param_groups
    assert {(g["lr"], g["betas"]) for g in g_groups} == {(1e-4, (0.5, 0.999))}
    assert {(g["lr"], g["betas"]) for g in d_groups} == {(4e-4, (0.0, 0.9))}
    g_params = {id(p) for group in g_groups for p in group["params"]}
    d_params = {id(p) for group in d_groups for p in group["params"]}
    assert g_params == {id(p) for p in net.generator_.parameters()}
    assert d_params == {id(p) for p in net.discriminator_.parameters()}
    assert not g_params & d_params

    # An optimiser setting on the initialised net changes that optimiser only.
    net.set_params(optimizer_g__lr=3e-4)
    assert {g["lr"] for g in net.optimizer_g_.param_groups} == {3e-4}
    assert {g["lr"] for g in net.optimizer_d_.param_groups} == {4e-4}


def test_module_parameters_build_the_networks():
    net = make_net(generator__hidden=7, discriminator__hidden=5).initialize()
    assert net.generator_.net[0].out_features == 7
    assert net.discriminator_.net[1].out_features == 5
    # Re-set on the initialised net: modules and optimisers are rebuilt together.
    net.set_params(generator__hidden=9)
    assert net.generator_.net[0].out_features == 9
    assert {id(p) for g in net.optimizer_g_.param_groups for p in g["params"]} == {
        id(p) for p in net.generator_.parameters()
    }


# ----------------------------------------------------------------- train steps
def test_train_step_updates_both_networks_and_leaves_no_gradients():
    net = make_net().initialize()
    batch = first_batch(net, images())
    g_before, d_before = snapshot(net.generator_), snapshot(net.discriminator_)
    step = net.train_step(batch)
    assert changed_all_parameters(net.generator_, g_before)
    assert changed_all_parameters(net.discriminator_, d_before)
    assert torch.isfinite(step["loss"]) and torch.isfinite(step["loss_d"])
    assert not step["loss"].requires_grad and not step["loss_d"].requires_grad
    params = [*net.generator_.parameters(), *net.discriminator_.parameters()]
    assert all(p.grad is None for p in params)
    assert all(p.requires_grad for p in params)


def _update(net, group):
    return next(update for update in net.schedule() if update.group == group)


def test_discriminator_step_changes_only_the_discriminator():
    net = make_net().initialize()
    batch = first_batch(net, images())
    net._set_training(True)
    inputs = net.prepare_batch(batch, training=True)
    g_before, d_before = snapshot(net.generator_), snapshot(net.discriminator_)
    net.run_update(_update(net, "d"), inputs, batch)
    assert same(net.generator_, g_before)
    assert changed_all_parameters(net.discriminator_, d_before)


def test_generator_step_changes_only_the_generator_and_computes_no_discriminator_gradient():
    net = make_net().initialize()
    batch = first_batch(net, images())
    seen = []
    # Record the discriminator gradients at the moment the generator's backward is done.
    net.callbacks_.append(("spy", _GradientSpy(seen)))
    g_before, d_before = snapshot(net.generator_), snapshot(net.discriminator_)
    net._set_training(True)
    net.run_update(_update(net, "g"), net.prepare_batch(batch, training=True), batch)
    assert changed_all_parameters(net.generator_, g_before)
    assert same(net.discriminator_, d_before)
    assert seen == [[None] * len(list(net.discriminator_.parameters()))]
    assert all(p.requires_grad for p in net.discriminator_.parameters())


class _GradientSpy(Callback):
    def __init__(self, seen):
        self.seen = seen

    def on_grad_computed(self, net, named_parameters, **kwargs):
        if {id(p) for _, p in named_parameters} == {id(p) for p in net.generator_.parameters()}:
            self.seen.append([p.grad for p in net.discriminator_.parameters()])


@pytest.mark.parametrize("frozen_side", ["g", "d"])
def test_zero_learning_rate_on_one_side_freezes_exactly_that_side(frozen_side):
    # A full train_step: with the discriminator's lr at 0 the generator step (which
    # follows the discriminator step) must still leave the discriminator unchanged.
    net = make_net(**{f"optimizer_{frozen_side}__lr": 0.0}).initialize()
    batch = first_batch(net, images())
    g_before, d_before = snapshot(net.generator_), snapshot(net.discriminator_)
    net.train_step(batch)
    if frozen_side == "d":
        assert same(net.discriminator_, d_before) and changed_all_parameters(net.generator_, g_before)
    else:
        assert same(net.generator_, g_before) and changed_all_parameters(net.discriminator_, d_before)


def test_n_critic_steps_the_discriminator_five_times_as_often():
    net = make_net(n_critic=5, loss="wgan-gp", max_epochs=5).fit(images(64))
    # 64 images in batches of 8: 8 discriminator steps per epoch, 40 in all.
    d_steps = {int(net.optimizer_d_.state[p]["step"]) for p in net.discriminator_.parameters()}
    g_steps = {int(net.optimizer_g_.state[p]["step"]) for p in net.generator_.parameters()}
    assert d_steps == {40} and g_steps == {8}
    assert (net.n_discriminator_steps_, net.n_generator_steps_) == (40, 8)
    # The generator steps after every fifth batch, counted across epochs.
    all_batches = batches(net.history)
    assert [i for i, b in enumerate(all_batches) if "train_loss" in b] == list(range(4, 40, 5))
    assert all("train_loss_d" in b for b in all_batches)


def test_both_losses_are_in_the_history_per_epoch_also_in_validation():
    X = images(64)
    valid = Dataset(images(16, seed=1), None)
    torch_state = torch.get_rng_state()
    net = make_net(max_epochs=3, train_split=predefined_split(valid)).fit(X)
    assert torch.equal(torch.get_rng_state(), torch_state)
    for key in ("train_loss", "train_loss_d", "valid_loss", "valid_loss_d"):
        values = net.history[:, key]
        assert len(values) == 3 and np.isfinite(values).all(), key
    # Validation draws from a stream of its own and updates nothing: training is
    # bit-identical without it.
    plain = make_net(max_epochs=3).fit(X)
    assert same(plain.generator_, snapshot(net.generator_))
    assert same(plain.discriminator_, snapshot(net.discriminator_))
    assert plain.history[:, "train_loss"] == net.history[:, "train_loss"]


def test_nan_outside_the_region_of_interest_never_reaches_the_discriminator():
    X = images(32)
    X[:, :, 0, :] = np.nan
    net = make_net(loss="wgan-gp").initialize()
    inputs = []
    net.discriminator_.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    net.partial_fit(X)
    assert inputs and all(torch.isfinite(x).all() for x in inputs)
    # Filled with 0 (black) before the mapping to x_range: -1 for the networks.
    assert any(bool((x[:, :, 0, :] == -1).all()) for x in inputs)
    assert np.isfinite(net.history[:, "train_loss_d"]).all()


def _replay(net, batch):
    """Networks and training draws as they are before ``net.train_step(batch)``."""
    G, D = copy.deepcopy(net.generator_), copy.deepcopy(net.discriminator_)
    rng = torch.Generator()
    rng.set_state(net.rng_.get_state())
    real = torch.as_tensor(batch[0]) * 2 - 1  # x_range=(-1, 1)
    return G, D, rng, real


def test_wgan_gp_losses_are_wasserstein_plus_gradient_and_drift_penalties():
    net = make_net(loss="wgan-gp", gp_weight=10.0, drift_weight=50.0).initialize()
    batch = first_batch(net, images())
    G, D, rng, real = _replay(net, batch)
    step = net.train_step(batch)

    # Draws in order: the critic step's latents, the penalty's interpolation
    # weights, the generator step's latents.
    with torch.no_grad():
        fake = G(torch.randn((len(real), LATENT_DIM), generator=rng))
    real_scores, fake_scores = D(real).flatten(), D(fake).flatten()
    penalty = gradient_penalty(D, real, fake, rng)
    drift = real_scores.square().mean()
    expected_d = fake_scores.mean() - real_scores.mean() + 10.0 * penalty + 50.0 * drift
    torch.testing.assert_close(step["loss_d"], expected_d.detach(), rtol=1e-5, atol=1e-6)
    # The penalties are not negligible, so leaving one out would fail the check above.
    assert 10.0 * penalty > 0.1 and 50.0 * drift > 1e-3
    # The generator step scores with the updated critic (which it does not change).
    with torch.no_grad():
        expected_g = -net.discriminator_(G(torch.randn((len(real), LATENT_DIM), generator=rng))).mean()
    torch.testing.assert_close(step["loss"], expected_g, rtol=1e-5, atol=1e-6)


def test_bce_losses_match_a_hand_computation():
    net = make_net(loss="bce", latent_distribution="uniform").initialize()
    batch = first_batch(net, images())
    G, D, rng, real = _replay(net, batch)
    step = net.train_step(batch)
    with torch.no_grad():
        fake = G(torch.rand((len(real), LATENT_DIM), generator=rng) * 2 - 1)
        expected_d = -torch.log(torch.sigmoid(D(real))).mean() - torch.log(1 - torch.sigmoid(D(fake))).mean()
        # Non-saturating generator loss: -log D(G(z)), with the updated discriminator.
        fake_g = G(torch.rand((len(real), LATENT_DIM), generator=rng) * 2 - 1)
        expected_g = -torch.log(torch.sigmoid(net.discriminator_(fake_g))).mean()
    torch.testing.assert_close(step["loss_d"], expected_d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step["loss"], expected_g, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- learning
@pytest.mark.parametrize(
    "settings",
    [
        dict(loss="bce", max_epochs=40, optimizer_g__betas=(0.5, 0.999), optimizer_d__betas=(0.5, 0.999)),
        dict(
            loss="wgan-gp",
            n_critic=5,
            max_epochs=100,
            drift_weight=0.001,
            optimizer_g__betas=(0.0, 0.9),
            optimizer_d__betas=(0.0, 0.9),
        ),
    ],
    ids=["bce", "wgan-gp"],
)
def test_toy_gan_learns_the_brightness_of_the_data(settings):
    net = make_net(batch_size=32, **settings).initialize()
    start = net.sample(256).mean().item()
    assert abs(start - BRIGHTNESS) > 0.2
    net.partial_fit(images(256))
    for key in ("train_loss", "train_loss_d"):
        assert np.isfinite(net.history[:, key]).all()
    generated = net.sample(256)
    assert generated.min() >= 0 and generated.max() <= 1
    assert abs(generated.mean().item() - BRIGHTNESS) < 0.1


# ----------------------------------------------------------------- randomness
def test_random_seed_makes_training_bit_identical_and_global_rng_is_untouched():
    X = images(40)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = make_net(random_seed=3, loss="wgan-gp", augment="default").fit(X)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    second = make_net(random_seed=3, loss="wgan-gp", augment="default").fit(X)
    other = make_net(random_seed=4, loss="wgan-gp", augment="default").fit(X)
    assert same(second.generator_, snapshot(first.generator_))
    assert same(second.discriminator_, snapshot(first.discriminator_))
    assert second.history[:, "train_loss_d"] == first.history[:, "train_loss_d"]
    assert not same(other.generator_, snapshot(first.generator_))


def test_sample_is_seeded_and_leaves_training_draws_alone():
    net = make_net().fit(images(16))
    state = net.rng_.get_state()
    assert torch.equal(net.sample(10, seed=1), net.sample(10, seed=1))
    assert not torch.equal(net.sample(10, seed=1), net.sample(10, seed=2))
    by_ten = net.sample(10, seed=1)
    net.set_params(batch_size=3)
    # The same latents, generated in chunks of 3 (equal up to float rounding).
    torch.testing.assert_close(net.sample(10, seed=1), by_ten, rtol=1e-6, atol=1e-6)
    assert torch.equal(net.rng_.get_state(), state)
    assert net.generator_.training  # mode restored


# ------------------------------------------------------- persistence, sklearn
def test_pickle_and_deepcopy_of_a_fitted_net_generate_and_train_on_identically():
    X = images(24)
    net = make_net(loss="wgan-gp", n_critic=2).fit(X)
    for copied in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert torch.equal(copied.sample(8), net.sample(8))
        assert (copied.n_discriminator_steps_, copied.n_generator_steps_) == (
            net.n_discriminator_steps_,
            net.n_generator_steps_,
        )
    resumed, original = pickle.loads(pickle.dumps(net)), net
    resumed.partial_fit(X)
    original.partial_fit(X)
    assert same(resumed.generator_, snapshot(original.generator_))
    assert same(resumed.discriminator_, snapshot(original.discriminator_))


def test_clone_and_set_params_of_an_unfitted_net():
    net = make_net(n_critic=3, optimizer_d__betas=(0.0, 0.9), generator__hidden=8)
    cloned = clone(net)
    assert not cloned.initialized_
    params, cloned_params = net.get_params(deep=False), cloned.get_params(deep=False)
    assert params.keys() == cloned_params.keys()
    for key in ("n_critic", "optimizer_d__betas", "generator__hidden", "x_range"):
        assert cloned_params[key] == params[key]
    cloned.set_params(n_critic=2, optimizer_d__lr=5e-4, loss="wgan-gp").fit(images(16))
    assert cloned.n_critic == 2 and {g["lr"] for g in cloned.optimizer_d_.param_groups} == {5e-4}
    assert net.n_critic == 3 and not net.initialized_

    # A network instance is a valid parameter (e.g. a pretrained generator).
    with seeded_initialisation(0):
        pretrained = ToyGenerator()
    plain = make_net()
    plain.set_params(generator=pretrained)
    assert plain.initialize().generator_ is pretrained


def test_unsupported_uses_and_bad_parameters_raise_clear_errors():
    net = make_net().fit(images(16))
    with pytest.raises(NotImplementedError, match="net.sample"):
        net.predict(images(4))
    with pytest.raises(NotImplementedError, match="no single forward pass"):
        net.forward(images(4))
    for bad, match in [
        (dict(loss="hinge"), "'loss' parameter of GANNet must be a str among .*Got 'hinge'"),
        (dict(n_critic=0), "n_critic"),
        (dict(latent_distribution="cauchy"), "latent_distribution"),
        (dict(gp_weight=-1.0), "gp_weight"),
        (dict(x_range=(1, -1)), "x_range"),
        (dict(module=nn.Linear(2, 2)), "does not use module"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_net(**bad).initialize()
    with seeded_initialisation(0):
        two_outputs = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 2))
    wide = make_net(discriminator=two_outputs)
    with pytest.raises(ValueError, match="one logit or score per image"):
        wide.fit(images(16))


# --------------------------------------------------------------------- MaxIter
def test_max_iter_ends_training_after_exactly_that_many_batches_mid_epoch():
    # 10 images in batches of 3: 4 batches per epoch; 6 batches end in epoch 2.
    net = make_net(batch_size=3, max_epochs=10, callbacks=[MaxIter(6)]).fit(images(10))
    assert len(net.history) == 2
    assert net.history[:, "train_batch_count"] == [4, 2]
    assert "train_loss" in net.history[-1] and "train_loss_d" in net.history[-1]
    assert len(batches(net.history)) == 6
    assert net.n_discriminator_steps_ == 6
    # A new training call gets a new budget, as max_epochs does.
    net.partial_fit(images(10))
    assert net.history[:, "train_batch_count"] == [4, 2, 4, 2]


def test_max_iter_cut_epoch_closes_normally_with_validation_and_printing(capsys):
    valid = Dataset(images(6, seed=1), None)
    net = make_net(
        batch_size=3, max_epochs=10, callbacks=[MaxIter(5)], train_split=predefined_split(valid), verbose=1
    ).fit(images(10))
    assert net.history[:, "train_batch_count"] == [4, 1]
    assert "valid_loss" in net.history[-1] and "valid_loss_d" in net.history[-1]
    # PrintLog, which skorch runs after every other callback, printed the last epoch.
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in printed if row and row[0].isdigit()] == ["1", "2"]


def test_max_epochs_still_bounds_training():
    net = make_net(batch_size=3, max_epochs=2, callbacks=[MaxIter(100)]).fit(images(10))
    assert net.history[:, "train_batch_count"] == [4, 4]


def test_max_iter_stops_a_plain_skorch_net_at_the_batch():
    X = np.random.default_rng(0).random((10, 2), dtype=np.float32)
    with seeded_initialisation(0):
        module = nn.Linear(2, 1)
    net = NeuralNet(
        module, nn.MSELoss, batch_size=3, max_epochs=10, train_split=None, verbose=0, callbacks=[MaxIter(6)]
    ).fit(X, X[:, :1])
    assert len(batches(net.history)) == 6
    # The interrupted epoch did not close: no epoch-level scores in its row.
    assert "train_loss" not in net.history[-1] and net.history[0, "train_batch_count"] == 4


def test_max_iter_must_be_a_positive_integer():
    for bad in (0, 2.5, "3"):
        with pytest.raises(ValueError, match="max_iter"):
            make_net(callbacks=[MaxIter(bad)]).initialize()


# ------------------------------------------------------------- frozen modules
class FrozenGenerator(nn.Module):
    """A generator with BatchNorm, so that eval mode matters."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, SIZE * SIZE), nn.Tanh()
        )

    def forward(self, z):
        return self.net(z).reshape(-1, 1, SIZE, SIZE)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(SIZE * SIZE, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)
        )

    def forward(self, x):
        return self.net(x)


class EncoderLoss(nn.Module):
    """||x - G(E(x))|| over the region of interest, G frozen."""

    def forward(self, z, x, roi, generator):
        return masked_reconstruction_loss(x, generator(z), roi)


@pytest.fixture
def trained_generator():
    with seeded_initialisation(1):
        generator = FrozenGenerator()
    # Move the BatchNorm statistics away from their initial values, as training would.
    with torch.no_grad():
        for seed in range(3):
            generator(torch.randn(16, 2, generator=make_generator(seed)))
    return generator


def make_encoder_net(generator, **kwargs):
    settings = dict(
        frozen_modules={"generator": generator},
        x_range=(-1, 1),
        optimizer=torch.optim.Adam,
        lr=1e-2,
        batch_size=8,
        max_epochs=4,
        train_split=None,
        iterator_train__shuffle=True,
        verbose=0,
    )
    return StageNet(Encoder, EncoderLoss, **{**settings, **kwargs})


def test_frozen_generator_is_shared_untouched_and_not_optimised(trained_generator):
    G = trained_generator
    frozen_state = snapshot(G)
    assert frozen_state["net.1.running_mean"].abs().sum() > 0
    net = make_encoder_net(G).initialize()
    encoder_start = snapshot(net.module_)
    net.partial_fit(images(64))

    assert net.generator_ is G and net.frozen_modules["generator"] is G
    assert same(G, frozen_state)  # parameters and buffers (BatchNorm statistics), bit for bit
    assert not G.training and not any(m.training for m in G.modules())
    assert not any(p.requires_grad for p in G.parameters())
    assert changed_all_parameters(net.module_, encoder_start)
    assert not same(net.module_, encoder_start)
    optimised = {id(p) for group in net.optimizer_.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in net.module_.parameters()}
    losses = net.history[:, "train_loss"]
    assert losses[-1] < losses[0]

    # Training mode never reaches the frozen module.
    net._set_training(True)
    assert net.module_.training and not G.training


def test_initialize_and_clone_keep_the_frozen_instance(trained_generator):
    G = trained_generator
    net = make_encoder_net(G).fit(images(16))
    net.initialize()
    net.fit(images(16))
    assert net.generator_ is G
    cloned = clone(net)
    assert cloned.frozen_modules["generator"] is G
    assert cloned.frozen_modules is not net.frozen_modules
    assert cloned.initialize().generator_ is G
    # A plain (deep) copy is a copy, and keeps its own net consistent.
    copied = pickle.loads(pickle.dumps(net))
    assert copied.generator_ is not G
    assert copied.generator_ is copied.frozen_modules["generator"] is copied.frozen_modules_["generator"]
    assert same(copied.generator_, snapshot(G))


def test_encoder_stage_with_max_iter_and_frozen_module(trained_generator):
    # 11 images in batches of 3 (the last of 2, as BatchNorm needs): 4 per epoch.
    net = make_encoder_net(trained_generator, batch_size=3, max_epochs=10, callbacks=[MaxIter(6)])
    net.fit(images(11))
    assert net.history[:, "train_batch_count"] == [4, 2]
    assert "train_loss" in net.history[-1]


def test_bad_frozen_modules_are_refused(trained_generator):
    G = trained_generator
    with pytest.raises(ValueError, match="used exactly as passed"):
        make_encoder_net(G, generator__width=3).initialize()
    with pytest.raises(TypeError, match="instance"):
        make_encoder_net(FrozenGenerator).initialize()
    with pytest.raises(ValueError, match="clashes"):
        make_encoder_net(None, frozen_modules={"module": G}).initialize()
    with pytest.raises(ValueError, match="not valid"):
        make_encoder_net(None, frozen_modules={"gen_": G}).initialize()
    with pytest.raises(TypeError, match="dict"):
        make_encoder_net(None, frozen_modules=[G]).initialize()
