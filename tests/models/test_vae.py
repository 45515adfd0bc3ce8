"""The 3D VAE: shapes, a falling loss, an invariant encoder, registry, Lie derivative end to end."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models import VAE, build_model, train_vae
from pipeline.symmetry import cube_rotations, lie_derivative

SHAPE = (9, 9, 9)


def _blobs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(9.0) - 4
    p = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    c = torch.randn(n, 3, generator=g) * 1.5
    return torch.exp(-((p[None] - c[:, None, None, None]) ** 2).sum(-1) / 4.0)[:, None]


def test_vae_shapes_and_registry():
    model = build_model("vae", 1, 4, shape=SHAPE, widths=(4, 8))
    assert isinstance(model, VAE) and model.name == "vae"
    x = _blobs(3)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 4)
    assert model(x).shape == (3, 4)
    assert model.decode(mu).shape == x.shape
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, *SHAPE)
    terms = model.loss(x)
    assert set(terms) == {"loss", "recon", "kl"} and terms["kl"] >= 0


def test_vae_rejects_bad_options():
    with pytest.raises(ConfigError, match="VAE encoder must be one of cnn, octahedral, steerable"):
        build_model("vae", 1, 4, encoder="mlp")


def test_vae_training_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("vae", 1, 4, shape=SHAPE, widths=(4, 8), beta=0.1)
    history = train_vae(model, _blobs(16), epochs=12, batch_size=8, learning_rate=3e-3)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert not model.training  # left in eval mode


@pytest.mark.parametrize("encoder", ["octahedral", "steerable"])
def test_invariant_encoder_mu_is_cube_invariant(encoder):
    torch.manual_seed(0)
    model = build_model("vae", 1, 3, shape=SHAPE, widths=(2, 4), encoder=encoder).eval()
    x = torch.rand(2, 1, *SHAPE)
    mu = model(x)
    err = max((model(g(x)) - mu).abs().max().item() for g in cube_rotations()[1:])
    assert err <= 1e-5 and mu.abs().max() > 1e-3
    # the plain encoder is not invariant
    plain = build_model("vae", 1, 3, shape=SHAPE, widths=(2, 4)).eval()
    assert max((plain(g(x)) - plain(x)).abs().max().item() for g in cube_rotations()[1:4]) > 1e-3


def test_lie_derivative_of_the_vae_encoder_end_to_end():
    model = build_model("vae", 1, 3, shape=SHAPE, widths=(4, 8)).eval()
    L = lie_derivative(lambda v: model.encode(v)[0], _blobs(2))
    assert L.shape == (3, 2, 3) and torch.isfinite(L).all() and L.abs().max() > 1e-4
