"""Models: shapes, dtypes, exact invariance to the 24 cube rotations, relaxed symmetry breaking."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models import MODEL_NAMES, build_model, centred_size, n_parameters, pad_to_centred
from pipeline.symmetry import cube_rotations, equivariance_error, rotate_cube

SIDE = 13  # ≡ 1 (mod 4): both stride-2 lattices of the default 3-level models stay centred


def _calibrated(name: str, **hparams) -> torch.nn.Module:
    """A model whose BatchNorm statistics have seen one batch, in eval mode."""
    model = build_model(name, 1, 3, **hparams)
    with torch.no_grad():
        model(torch.randn(4, 1, SIDE, SIDE, SIDE))
    return model.eval()


def _structured(batch: int = 2) -> torch.Tensor:
    """Random anisotropic Gaussian blobs: a volume with no rotational symmetry."""
    g = torch.Generator().manual_seed(1)
    axes = torch.arange(SIDE, dtype=torch.float32) - (SIDE - 1) / 2
    p = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij"), -1)
    x = torch.zeros(batch, 1, SIDE, SIDE, SIDE)
    for b in range(batch):
        for _ in range(4):
            c = (torch.rand(3, generator=g) - 0.5) * SIDE * 0.6
            w = 1.0 + 3.0 * torch.rand(3, generator=g)
            x[b, 0] += torch.exp(-(((p - c) / w) ** 2).sum(-1))
    return x + 0.1 * torch.randn(x.shape, generator=g)


def _cube_errors(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    acts = [lambda v, g=g: rotate_cube(v, g) for g in cube_rotations()]
    return equivariance_error(model, x, acts)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_and_dtypes(name):
    model = build_model(name, 2, 5)
    out = model(torch.randn(3, 2, SIDE, SIDE, SIDE))
    assert out.shape == (3, 5) and out.dtype == torch.float32
    assert model.name == name and model.hparams["num_outputs"] == 5
    # non-cubic, non-centred inputs still run
    assert model.eval()(torch.randn(1, 2, 12, 14, 10)).shape == (1, 5)


def test_parameter_counts_are_comparable():
    counts = {name: n_parameters(build_model(name, 1, 2)) for name in MODEL_NAMES}
    assert max(counts.values()) / min(counts.values()) < 4, counts


@pytest.mark.parametrize("name", ["octahedral", "steerable", "relaxed"])
def test_exact_invariance_to_the_24_cube_rotations(name):
    model = _calibrated(name)
    err = _cube_errors(model, _structured())
    assert err.shape == (24, 2)
    assert err.max() <= 1e-5, f"{name}: max relative error {err.max():.2e}"


def test_plain_cnn_is_not_invariant():
    err = _cube_errors(_calibrated("cnn"), _structured())
    assert err[0].max() == 0  # identity
    assert err[1:].mean() > 1e-3  # > 100 × the tolerance the invariant models meet


def test_relaxed_model_starts_equivariant_and_can_break_symmetry():
    model = _calibrated("relaxed", penalty=0.5)
    assert float(model.symmetry_penalty().detach()) == 0.0
    with torch.no_grad():
        for p in (m.relaxed_weights for m in model.modules() if hasattr(m, "relaxed_weights")):
            if p is not None:
                p.add_(0.5 * torch.randn_like(p))
    defect = float(model.symmetry_defect().detach())
    assert defect > 0 and float(model.symmetry_penalty().detach()) == pytest.approx(0.5 * defect)
    assert _cube_errors(model, _structured()).max() > 1e-4


def test_even_size_is_padded_to_a_centred_lattice():
    assert centred_size(64, 2) == 65 and centred_size(91, 3) == 97 and centred_size(17, 2) == 17
    x = torch.ones(1, 1, 16, 15, 17)
    y = pad_to_centred(x, 2)
    assert y.shape[-3:] == (17, 17, 17)
    assert y.sum() == x.sum()


def test_unknown_model_and_bad_hparams():
    with pytest.raises(ConfigError, match="model name must be one of cnn, octahedral"):
        build_model("resnet", 1, 2)
    with pytest.raises(ConfigError, match="invalid hyperparameters for model 'cnn'"):
        build_model("cnn", 1, 2, lmax=3)
    with pytest.raises(ValueError, match="relaxed model needs banks >= 2"):
        build_model("relaxed", 1, 2, banks=1)


def _cube_generators() -> list:
    """90° about z and 120° about (1, 1, 1): together they generate all 24 cube rotations."""
    quarter = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    third = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    return [g for g in cube_rotations() if g.matrix.tolist() in (quarter, third)]


SMALL = {
    "octahedral": {"widths": (1, 1, 2)},
    "relaxed": {"widths": (1, 1, 2)},
    "steerable": {"widths": ("2x0e + 1x1e", "2x0e + 1x1e", "2x0e"), "head_width": 8},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cube_invariance_holds_at_any_input_size(name):
    """Even, odd, ≢ 1 (mod 4) and non-cubic sides: the stride lattices stay centred by parity."""
    gens = _cube_generators()
    assert len(gens) == 2
    model = build_model(name, 1, 3, **SMALL[name]).eval()
    g = torch.Generator().manual_seed(3)
    for shape in [(32,) * 3, (33,) * 3, (35,) * 3, (48,) * 3, (24, 29, 22)]:
        x = torch.randn(1, 1, *shape, generator=g)
        err = equivariance_error(model, x, [lambda v, h=h: rotate_cube(v, h) for h in gens])
        assert err.max() <= 1e-5, f"{name} at {shape}: {err.max():.2e}"


@pytest.mark.parametrize("name", ["cnn", "octahedral", "relaxed", "steerable"])
def test_head_standardises_pooled_features_and_accepts_a_batch_of_one(name):
    """The pooled features reach the MLP standardised over the batch (a large common offset and
    a small spread, as ReLU maps pool at initialisation, come out with mean 0 and sd 1), and a
    one-volume training batch falls back to the running statistics without updating them."""
    model = build_model(name, 1, 2).train()
    norm = model.head[0]
    n = norm.num_features
    feats = 0.4 + 0.05 * torch.randn(16, n, generator=torch.Generator().manual_seed(0))
    z = norm(feats)
    assert torch.allclose(z.mean(0), torch.zeros(n), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(n), atol=1e-2)
    before = norm.running_mean.clone()
    out = model(_structured(1))
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    assert torch.equal(norm.running_mean, before)


@pytest.mark.parametrize("shape", [(17, 16, 15), (8, 9, 10)])
@pytest.mark.parametrize("steps", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.5)])
def test_blur_pool_equals_the_dense_strided_gaussian_convolution(shape, steps):
    """The banded-matrix blur is the dense 3-D Gaussian (outer product of the taps) applied
    with stride 2 and zero padding, on every parity and anisotropic voxels, and so are its
    gradients."""
    from pipeline.models import BlurPool3d

    layer = BlurPool3d(steps, sigma=1.2)
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    kernel, pads = layer._build(tuple(bool(n % 2) for n in shape))
    dense = torch.nn.functional.conv3d(
        x.reshape(6, 1, *shape), kernel.to(x.dtype), stride=2, padding=pads
    ).reshape(2, 3, *[(n + 1) // 2 for n in shape])
    fast = layer(x)
    assert fast.shape == dense.shape
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    g = torch.randn_like(dense)
    (grad_fast,) = torch.autograd.grad(fast, x, g)
    (grad_dense,) = torch.autograd.grad(dense, x, g)
    torch.testing.assert_close(grad_fast, grad_dense, rtol=0, atol=1e-12)
