"""The adversarial engine: declared schedules, optimiser groups, loss terms, the second
stream, and GANNet on it checked bit for bit against the textbook loop written out."""

import copy
import pickle

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F

from skanomaly.detectors.fanogan.progressive import MinibatchStdDev
from skanomaly.training.adversarial import AdversarialNet, Update
from skanomaly.training.penalties import drift_penalty, gradient_penalty
from skanomaly.training.random import make_generator, seeded_initialisation
from skanomaly.training.stages import GANNet

SIZE = 4
LATENT = 3


class Generator(nn.Module):
    def __init__(self, latent_dim=LATENT, hidden=16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, SIZE * SIZE), nn.Tanh(),
            nn.Unflatten(1, (1, SIZE, SIZE)),
        )  # fmt: skip

    def forward(self, z):
        return self.net(z)


class Critic(nn.Module):
    def __init__(self, hidden=16, minibatch_std=False):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, hidden), nn.LeakyReLU(0.2))
        self.std = MinibatchStdDev(group_size=4) if minibatch_std else None
        self.head = nn.Linear(hidden + (1 if minibatch_std else 0), 1)

    def forward(self, x):
        h = self.body(x)
        if self.std is not None:
            h = self.std(h[:, :, None, None])[:, :, 0, 0]
        return self.head(h)


def images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = np.clip(0.7 + 0.1 * rng.standard_normal((n, 1, SIZE, SIZE)), 0, 1).astype(np.float32)
    x[:, :, 0, 0] = np.nan  # outside the region of interest
    return x


def state(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def equal(a, b):
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


# ------------------------------------------------------- GANNet, bit for bit
def _textbook_gan(X, loss, n_critic, seed, epochs, batch_size, lr, betas, drift=0.0):
    """The GAN algorithm as a plain loop over the net's three seeded streams."""
    init_seed, shuffle_seed, step_seed = np.random.SeedSequence(seed).generate_state(3)
    with seeded_initialisation(init_seed):
        G, D = Generator(), Critic()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    rng, shuffle = make_generator(step_seed), make_generator(shuffle_seed)
    data = torch.utils.data.TensorDataset(torch.from_numpy(X))
    iteration = 0
    for _ in range(epochs):
        for (x,) in torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=shuffle):
            real = torch.nan_to_num(x, nan=0.0) * 2 - 1
            iteration += 1
            with torch.no_grad():
                fake = G(torch.randn((len(real), LATENT), generator=rng))
            real_scores, fake_scores = D(real).flatten(), D(fake).flatten()
            if loss == "bce":
                d_loss = F.binary_cross_entropy_with_logits(real_scores, torch.ones_like(real_scores))
                d_loss = d_loss + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores))
            else:
                d_loss = fake_scores.mean() - real_scores.mean() + 10.0 * gradient_penalty(D, real, fake, rng)
                if drift:
                    d_loss = d_loss + drift * drift_penalty(real_scores)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            if iteration % n_critic:
                continue
            D.requires_grad_(False)
            scores = D(G(torch.randn((len(real), LATENT), generator=rng))).flatten()
            if loss == "bce":
                g_loss = F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))
            else:
                g_loss = -scores.mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            D.requires_grad_(True)
    return G, D


@pytest.mark.parametrize(
    "loss, n_critic, drift", [("bce", 1, 0.0), ("wgan-gp", 3, 0.0), ("wgan-gp", 1, 0.001)], ids=str
)
def test_gan_on_the_engine_trains_the_textbook_loop_bit_for_bit(loss, n_critic, drift):
    # Same arithmetic in the same order, so not one bit may differ: a reordered draw,
    # a term added in another order or a stray gradient would show here.
    X = images(40)
    settings = dict(loss=loss, n_critic=n_critic, seed=7, epochs=3, batch_size=8, lr=1e-3, betas=(0.5, 0.9))
    G, D = _textbook_gan(X, drift=drift, **settings)
    net = GANNet(
        Generator, Critic, loss=loss, n_critic=n_critic, drift_weight=drift, latent_dim=LATENT,
        x_range=(-1, 1), lr=1e-3, optimizer_g__betas=(0.5, 0.9), optimizer_d__betas=(0.5, 0.9),
        batch_size=8, max_epochs=3, iterator_train__shuffle=True, random_seed=7, verbose=0,
    ).fit(X)  # fmt: skip
    assert equal(state(net.generator_, net.discriminator_), state(G, D))
    assert net.n_steps_ == {"d": 15, "g": 15 // n_critic}


def test_every_loss_term_is_in_the_history_per_epoch():
    net = GANNet(
        Generator, Critic, loss="wgan-gp", drift_weight=0.5, latent_dim=LATENT, batch_size=8,
        max_epochs=2, verbose=0,
    ).fit(images(32))  # fmt: skip
    row = net.history[-1]
    for key in ("train_loss", "train_loss_d", "train_d_real", "train_d_fake", "train_gp", "train_drift", "train_g_fake"):
        assert np.isfinite(row[key]), key
    # The epoch value of a term is the batch-size-weighted mean of its batch values.
    batch_values = [b["train_gp"] for b in row["batches"]]
    assert row["train_gp"] == pytest.approx(np.mean(batch_values), rel=1e-12)
    # The critic's total is its weighted terms, batch by batch.
    for b in row["batches"]:
        expected = b["train_d_fake"] + b["train_d_real"] + 10.0 * b["train_gp"] + 0.5 * b["train_drift"]
        assert b["train_loss_d"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_minibatch_std_statistic_is_updated_on_real_batches_only():
    # One critic step sees real images, fakes and penalty interpolates, and the
    # generator step fakes again: four training-mode passes per iteration, one real.
    net = GANNet(
        Generator, Critic, discriminator__minibatch_std=True, loss="wgan-gp", latent_dim=LATENT,
        x_range=(-1, 1), batch_size=8, max_epochs=1, iterator_train__shuffle=False, verbose=0,
    ).initialize()  # fmt: skip
    layer = net.discriminator_.std
    passes = []
    layer.register_forward_hook(
        lambda module, args, out: passes.append((bool(module.update_statistics), module.running_std.item()))
    )
    net.partial_fit(images(16))
    assert len(passes) == 2 * 4  # two iterations
    updated = [flag for flag, _ in passes]
    assert updated == [True, False, False, False] * 2
    # The running value moved exactly at the real passes and nowhere else.
    values = [value for _, value in passes]
    assert values[0] != 0.0 and values[1:4] == [values[0]] * 3
    assert values[4] != values[3] and values[5:] == [values[4]] * 3


# ----------------------------------------------------------------- the engine
class TinyAutoencoder(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(16, 16), nn.Unflatten(1, (1, 4, 4)))


class TinyEncoder(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(16, 2))


class TinyCritic(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(16, 1))


class AutoencoderCritic(AdversarialNet):
    """A three-network model of the shape of Tang et al.'s: autoencoder U, encoder E
    and discriminator D; group "ue" owns U and E, group "d" owns D and steps every
    second iteration; the unlabelled stream adds a reconstruction term."""

    NETWORKS = ("autoencoder", "encoder", "discriminator")
    OPTIMIZER_GROUPS = {"d": ("discriminator",), "ue": ("autoencoder", "encoder")}

    def __init__(
        self, *, autoencoder=TinyAutoencoder, encoder=TinyEncoder, discriminator=TinyCritic,
        optimizer_d=torch.optim.Adam, optimizer_ue=torch.optim.SGD, **kwargs,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.autoencoder = autoencoder
        self.encoder = encoder
        self.discriminator = discriminator
        self.optimizer_d = optimizer_d
        self.optimizer_ue = optimizer_ue

    def initialize(self):
        self.seen_ = []
        return super().initialize()

    def schedule(self):
        return (
            Update("d", {"d_real": 1.0, "d_fake": 1.0}, every=2),
            Update(
                "ue", {"recon": 20.0, "adv": 4.0, "latent": 8.0, "unlabelled": 1.0}, record="loss",
                optional=("unlabelled",),
            ),
        )

    def loss_terms(self, group, inputs, rng):
        x = inputs["x"]
        self.seen_.append((group, None if inputs["unlabelled"] is None else tuple(inputs["unlabelled"].shape)))
        x_hat = self.autoencoder_(x)
        if group == "d":
            return {
                "d_real": F.softplus(-self.discriminator_(x)).mean(),
                "d_fake": F.softplus(self.discriminator_(x_hat)).mean(),
            }
        terms = {
            "recon": (x - x_hat).abs().mean(),
            "adv": F.softplus(-self.discriminator_(x_hat)).mean(),
            "latent": (self.encoder_(x) - self.encoder_(x_hat)).square().mean(),
        }
        if inputs["unlabelled"] is not None:
            terms["unlabelled"] = (inputs["unlabelled"] - self.autoencoder_(inputs["unlabelled"])).abs().mean()
        return terms


def _three_networks(**kwargs):
    settings = dict(lr=1e-2, batch_size=4, max_epochs=2, random_seed=0, verbose=0)
    return AutoencoderCritic(**{**settings, **kwargs})


def test_groups_own_their_networks_parameters_with_their_own_optimiser():
    net = _three_networks(optimizer_ue__momentum=0.5, optimizer_d__lr=3e-3).initialize()
    assert isinstance(net.optimizer_d_, torch.optim.Adam) and isinstance(net.optimizer_ue_, torch.optim.SGD)
    ue = {id(p) for g in net.optimizer_ue_.param_groups for p in g["params"]}
    d = {id(p) for g in net.optimizer_d_.param_groups for p in g["params"]}
    assert ue == {id(p) for m in (net.autoencoder_, net.encoder_) for p in m.parameters()}
    assert d == {id(p) for p in net.discriminator_.parameters()}
    assert {g["momentum"] for g in net.optimizer_ue_.param_groups} == {0.5}
    assert {g["lr"] for g in net.optimizer_d_.param_groups} == {3e-3}
    assert {g["lr"] for g in net.optimizer_ue_.param_groups} == {1e-2}


def test_declared_schedule_steps_each_group_on_its_iterations_and_nothing_else():
    net = _three_networks(max_epochs=1).initialize()
    X = images(12)  # three iterations
    before = []

    class Watch(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                before.append(state(net.autoencoder_, net.encoder_, net.discriminator_))

    net.callbacks_.append(("watch", Watch()))
    net.partial_fit(X)
    after = state(net.autoencoder_, net.encoder_, net.discriminator_)
    assert net.n_steps_ == {"d": 1, "ue": 3} and net.n_iterations_ == 3
    # Iteration 3 (no critic step): D untouched, U and E moved.
    assert equal([before[2][2]], [after[2]])
    assert not equal([before[2][0]], [after[0]]) and not equal([before[2][1]], [after[1]])
    # The critic's terms appear in its iterations only; U+E's in every one.
    batches = net.history[-1]["batches"]
    assert ["train_d_real" in b for b in batches] == [False, True, False]
    assert all("train_loss" in b and "train_recon" in b for b in batches)
    # Without a second stream its (optional) term is absent.
    assert not any("train_unlabelled" in b for b in batches)
    assert all(p.grad is None and p.requires_grad for m in (net.autoencoder_, net.discriminator_) for p in m.parameters())


def test_the_discriminator_gets_no_gradient_in_the_other_groups_update():
    net = _three_networks().initialize()
    grads = []

    class Spy(Callback):
        def on_grad_computed(self, net, named_parameters, **kwargs):
            grads.append(([name for name, _ in named_parameters], [p.grad for p in net.discriminator_.parameters()]))

    net.callbacks_.append(("spy", Spy()))
    net.partial_fit(images(8))
    ue_steps = [(names, g) for names, g in grads if names[0].startswith("autoencoder.")]
    assert ue_steps and all(all(grad is None for grad in g) for _, g in ue_steps)
    assert all(name.split(".")[0] in ("autoencoder", "encoder") for name in ue_steps[0][0])


def test_second_unlabelled_stream_is_seeded_cycled_and_not_kept():
    X, U = images(8), images(10, seed=1)
    first = _three_networks(max_epochs=3).fit(X, unlabelled=U)
    # Every training update saw a batch of the second stream; validation-free fits
    # see none outside training.
    assert all(shape is not None and shape[1:] == (1, SIZE, SIZE) for _, shape in first.seen_)
    assert np.isfinite(first.history[:, "train_unlabelled"]).all()
    # 3 epochs x 2 iterations of 4 images from a set of 10: the stream cycled, each
    # batch as large as the real one.
    assert [shape[0] for group, shape in first.seen_ if group == "ue"] == [4] * 6
    # The fitted net keeps nothing of the stream (a large one would show in the pickle).
    big = images(4000, seed=2)
    kept = len(pickle.dumps(_three_networks(max_epochs=1).fit(X, unlabelled=big)))
    assert abs(kept - len(pickle.dumps(_three_networks(max_epochs=1).fit(X)))) < 0.05 * big.nbytes
    torch_state = torch.get_rng_state()
    second = _three_networks(max_epochs=3).fit(X, unlabelled=U)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert equal(state(first.autoencoder_, first.discriminator_), state(second.autoencoder_, second.discriminator_))
    # The stream changes training, and another seed shuffles it otherwise.
    plain = _three_networks(max_epochs=3).fit(X)
    assert not equal(state(first.autoencoder_), state(plain.autoencoder_))
    other = _three_networks(max_epochs=3, random_seed=1).fit(X, unlabelled=U)
    assert not equal(state(first.autoencoder_), state(other.autoencoder_))


def test_fitted_engine_pickles_and_resumes_identically():
    X, U = images(8), images(10, seed=1)
    net = _three_networks().fit(X, unlabelled=U)
    resumed = pickle.loads(pickle.dumps(net))
    copied = copy.deepcopy(net)
    for other in (resumed, copied):
        other.partial_fit(X, unlabelled=U)
    net.partial_fit(X, unlabelled=U)
    for other in (resumed, copied):
        assert equal(state(net.autoencoder_, net.discriminator_), state(other.autoencoder_, other.discriminator_))
        assert other.n_steps_ == net.n_steps_


def test_engine_refuses_bad_declarations_clearly():
    class Unknown(AutoencoderCritic):
        def schedule(self):
            return (Update("g", {"recon": 1.0}),)

    with pytest.raises(ValueError, match="unknown group 'g'"):
        Unknown(verbose=0).initialize()

    class Missing(AutoencoderCritic):
        def schedule(self):
            return (Update("ue", {"nope": 1.0}),)

    with pytest.raises(KeyError, match="no term 'nope'"):
        Missing(batch_size=4, verbose=0).fit(images(8))
    with pytest.raises(TypeError, match="no fit parameters but `unlabelled`"):
        _three_networks().fit(images(8), weights=np.ones(8))


def test_unlabelled_stream_takes_any_numpy_layout():
    X, U = images(8), images(10, seed=1)
    expected = _three_networks(max_epochs=2).fit(X, unlabelled=U)
    for layout in (U[::-1], np.asfortranarray(U), U.repeat(2, axis=0)[::2]):
        net = _three_networks(max_epochs=2).fit(X, unlabelled=layout)
        assert np.isfinite(net.history[:, "train_unlabelled"]).all()
    # The same samples in another memory layout train the same weights.
    same_order = _three_networks(max_epochs=2).fit(X, unlabelled=np.asfortranarray(U))
    assert equal(state(expected.autoencoder_), state(same_order.autoencoder_))
