"""``build_model("roiset")``: exact permutation invariance, any N, frame-invariant coordinates,
and a relaxed variant whose symmetry breaking is learned and measured."""

from __future__ import annotations

import pytest
import torch
from scipy.spatial.transform import Rotation

from pipeline.errors import ConfigError
from pipeline.models import build_model
from pipeline.models.roiset import FlatMLP, permutation_error, permute_rois


def _batch(b: int, n: int, extra: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, n, n, generator=g)
    a = (a + a.transpose(1, 2)) / 2
    feats = torch.randn(b, n, extra, generator=g) * 40.0  # coordinates in mm
    return torch.cat([a, feats], dim=2)


@pytest.mark.parametrize("n", [7, 23])
@pytest.mark.parametrize("kw", [{"matrix": True}, {"matrix": True, "coords": True}, {}])
def test_roiset_is_exactly_permutation_invariant_for_any_n(n, kw):
    extra = 3  # plain features, or x, y, z with coords
    model = build_model("roiset", extra, 2, **kw).eval()
    x = _batch(5, n, extra)
    if not kw.get("matrix"):
        x = x[..., n:]
    assert permutation_error(model, x, n_perms=4) <= 1e-5
    # and it is not a constant: other inputs give other outputs
    with torch.no_grad():
        assert (model(x) - model(x.flip(0))).abs().max() > 1e-3


def test_a_permutation_moves_an_mlp_but_not_roiset():
    n = 12
    x = _batch(4, n, 0)
    mlp, roiset = FlatMLP(n, 2).eval(), build_model("roiset", 0, 2, matrix=True).eval()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    px = permute_rois(x, perm, matrix=True)
    # the action is the relabelling A -> P A P^T
    assert torch.equal(px[0, :, :n], x[0][perm][:, perm])
    with torch.no_grad():
        assert (mlp(px) - mlp(x)).abs().max() > 1e-3
        assert (roiset(px) - roiset(x)).abs().max() <= 1e-5


def test_coordinates_are_used_only_through_frame_invariants():
    n = 15
    model = build_model("roiset", 3, 2, matrix=True, coords=True).eval()
    x = _batch(3, n, 3)
    for seed in range(3):
        R = torch.tensor(Rotation.random(random_state=seed).as_matrix(), dtype=torch.float32)
        if seed == 2:
            R = -R  # a reflection too
        moved = x.clone()
        moved[..., -3:] = x[..., -3:] @ R.T + torch.tensor([12.0, -30.0, 7.0])
        with torch.no_grad():
            assert (model(moved) - model(x)).abs().max() <= 1e-5
    # while the geometry itself matters: stretching the frame changes the output
    stretched = x.clone()
    stretched[..., -3:] *= 1.5
    with torch.no_grad():
        assert (model(stretched) - model(x)).abs().max() > 1e-4


def test_relaxed_variant_starts_exact_and_its_epsilon_is_measured():
    n = 10
    model = build_model("roiset", 0, 2, matrix=True, relaxed=True).eval()
    x = _batch(4, n, 0)
    assert float(model.symmetry_defect().detach()) == 0.0 and permutation_error(model, x) <= 1e-5
    with torch.no_grad():
        model.epsilon.fill_(0.3)
    defect, err = float(model.symmetry_defect().detach()), permutation_error(model, x)
    assert defect > 0 and err > 1e-3
    with torch.no_grad():
        model.epsilon.fill_(0.03)
    assert permutation_error(model, x) < err  # the error follows epsilon
    assert float(model.symmetry_penalty().detach()) == pytest.approx(
        1e-2 * float(model.symmetry_defect().detach())
    )
    # epsilon is learned: the loss has a gradient along it
    model.train()
    model(x).logsumexp(1).sum().backward()
    assert model.epsilon.grad is not None and float(model.epsilon.grad.abs()) > 0


def test_bad_shapes_and_options_are_one_line_errors():
    model = build_model("roiset", 3, 2, matrix=True)
    with pytest.raises(ValueError, match=r"expected 13 channels per ROI \(10 \(matrix\) \+ 3\)"):
        model(torch.zeros(2, 10, 12))
    with pytest.raises(ConfigError, match="roiset"):
        build_model("roiset", 2, 2, coords=True, bogus=1)
    with pytest.raises(ValueError, match="needs in_channels >= 3"):
        build_model("roiset", 2, 2, coords=True)
