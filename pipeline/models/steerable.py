r"""SO(3)-steerable 3D CNN on e3nn: voxel convolutions with spherical-harmonic × radial kernels.

Each convolution maps features of irreps :math:`\rho_\text{in}` to :math:`\rho_\text{out}` with the
kernel (Weiler et al. 2018; e3nn ``nn/models/v2104/voxel_convolution.py``)

.. math::

    K(u) = \sum_{b} \varphi_b(\lVert u \rVert)\,
    \mathrm{TP}_{w_b}\big(\cdot,\ Y(u/\lVert u\rVert)\big),

where :math:`u` runs over the voxel lattice in *physical* units (voxel sizes ``steps``, kernel
``diameter``), :math:`\varphi_b` is a smooth finite radial basis and :math:`Y` the spherical
harmonics up to ``lmax``. Hence :math:`K(Ru) = D_\text{out}(R) K(u) D_\text{in}(R)^{-1}` and the
layer is equivariant to every rotation that maps the lattice onto itself (the 24 cube rotations
for cubic voxels), and approximately to all of :math:`SO(3)`. Gated nonlinearities (Weiler et
al. 2018) act channel-last; pooling is an isotropic Gaussian blur + stride 2 (rotation-
commuting); the head reads only the scalar channels, averaged over space.

SO(3), not O(3)
---------------
Spherical harmonics are declared with even parity (``0e + 1e + 2e``) and every hidden irrep is
even, so all :math:`SO(3)` Clebsch–Gordan paths exist, including chiral ones such as
:math:`1 \otimes 1 \to 1` (the cross product). The network is therefore *not* forced to be
invariant to reflections: left–right differences remain learnable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from torch import nn

from pipeline.models._layers import BlurPool3d, CachedKernel

__all__ = ["SteerableCNN", "VoxelConvolution"]


class VoxelConvolution(CachedKernel, nn.Module):
    r"""Steerable convolution on a voxel grid (same-size output), kernel as in the module docstring.

    Parameters
    ----------
    irreps_in, irreps_out : str or e3nn.o3.Irreps
        Feature types.
    lmax : int
        Largest degree of the spherical harmonics (declared even parity, see module docstring).
    diameter : float
        Kernel diameter in physical units; the lattice spans ``floor(diameter / 2 / step)`` voxels
        each side.
    steps : tuple of float
        Voxel sizes in physical units (anisotropic voxels are supported).
    num_radial_basis : int, default=3
        Radial basis functions :math:`\varphi_b`.
    """

    def __init__(
        self,
        irreps_in: str | o3.Irreps,
        irreps_out: str | o3.Irreps,
        lmax: int,
        diameter: float,
        steps: Sequence[float] = (1.0, 1.0, 1.0),
        num_radial_basis: int = 3,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        irreps_sh = o3.Irreps.spherical_harmonics(lmax, p=1)
        r = diameter / 2
        axes = [torch.arange(-math.floor(r / s), math.floor(r / s) + 1.0) * s for s in steps]
        if any(len(a) < 3 for a in axes):
            raise ValueError(
                f"kernel diameter {diameter} is smaller than two voxels (steps {tuple(steps)})"
            )
        lattice = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        self.padding = tuple(n // 2 for n in lattice.shape[:3])
        emb = soft_one_hot_linspace(
            lattice.norm(dim=-1), 0.0, r, num_radial_basis, basis="smooth_finite", cutoff=True
        )
        sh = o3.spherical_harmonics(irreps_sh, lattice, normalize=True, normalization="component")
        self.register_buffer("emb", emb)
        self.register_buffer("sh", sh)
        self.tp = o3.FullyConnectedTensorProduct(
            self.irreps_in, irreps_sh, self.irreps_out, shared_weights=False,
            compile_left_right=False, compile_right=True,
        )  # fmt: skip
        self.weight = nn.Parameter(torch.randn(num_radial_basis, self.tp.weight_numel))
        self.sc = o3.Linear(self.irreps_in, self.irreps_out)

    def kernel(self) -> torch.Tensor:
        """The dense kernel ``(out_dim, in_dim, kx, ky, kz)``; the self-connection sits at its
        centre."""
        weight = self.emb @ self.weight / self.sh[..., 0].numel() ** 0.5
        kernel = self.tp.right(self.sh, weight).permute(4, 3, 0, 1, 2)  # (out, in, x, y, z)
        # equivariant self-connection (o3.Linear) as a dense matrix, added at the lattice centre
        eye = torch.eye(self.irreps_in.dim, device=kernel.device, dtype=kernel.dtype)
        centre = torch.zeros_like(kernel)
        cx, cy, cz = self.padding
        centre[:, :, cx, cy, cz] = self.sc(eye).T
        return kernel + centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, X, Y, Z)`` → ``(B, out_dim, X, Y, Z)`` (one dense ``conv3d``)."""
        return nn.functional.conv3d(x, self.cached_kernel().to(x.dtype), padding=self.padding)


class NormGate(nn.Module):
    r"""Equivariant normalisation + gated nonlinearity, channel-first and vectorised.

    Input channels are ``[scalars | gates | gated]``. Scalars and gates are batch-normalised;
    scalars go through ReLU. Each gated irrep field :math:`v_k` (dimension :math:`2l+1`) is scaled
    by
    its (running) root-mean-square norm and by :math:`\sigma(\text{gate}_k)`:

    .. math::

        v_k \mapsto \gamma_k\, \sigma(g_k)\, v_k
        / \sqrt{\mathbb{E}\lVert v_k\rVert^2/(2l+1) + \epsilon}.

    Norms and scalars are invariant, so the layer is equivariant (e3nn's ``Gate`` and
    ``BatchNorm`` compute the same kind of map channel-last, one slice per irrep, which is slow
    on volumes).
    """

    def __init__(
        self, n_scalars: int, gated: o3.Irreps, momentum: float = 0.1, eps: float = 1e-5
    ) -> None:
        super().__init__()
        dims = [ir.dim for mul, ir in gated for _ in range(mul)]
        self.n_scalars, self.n_gated = n_scalars, len(dims)
        self.irreps_in = o3.Irreps(f"{n_scalars + len(dims)}x0e") + gated
        self.irreps_out = o3.Irreps(f"{n_scalars}x0e") + gated
        self.bn = nn.BatchNorm3d(n_scalars + len(dims), momentum=momentum, eps=eps)
        idx = (
            torch.cat([torch.full((d,), k) for k, d in enumerate(dims)]) if dims else torch.zeros(0)
        )
        self.register_buffer("index", idx.long())
        self.register_buffer("dims", torch.tensor(dims, dtype=torch.float32))
        self.register_buffer("running_sq", torch.ones(len(dims)))
        self.gain = nn.Parameter(torch.ones(len(dims)))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ns, ng = self.n_scalars, self.n_gated
        s = self.bn(x[:, : ns + ng])
        scalars = torch.relu(s[:, :ns])
        if ng == 0:
            return scalars
        v = x[:, ns + ng :]
        if self.training:
            comp = v.detach().float().pow(2).mean(dim=(0, 2, 3, 4))
            sq = torch.zeros_like(self.running_sq).index_add_(0, self.index, comp) / self.dims
            self.running_sq.lerp_(sq, self.momentum)
            sq = (
                torch.zeros_like(self.running_sq).index_add(
                    0, self.index, v.float().pow(2).mean(dim=(0, 2, 3, 4))
                )
                / self.dims
            )
        else:
            sq = self.running_sq
        scale = (self.gain / torch.sqrt(sq + self.eps)).to(v.dtype)
        factor = torch.sigmoid(s[:, ns:]) * scale[None, :, None, None, None]
        return torch.cat([scalars, v * factor.index_select(1, self.index)], dim=1)


class _GatedBlock(nn.Module):
    """Voxel convolution → :class:`NormGate` (channel-first throughout)."""

    def __init__(self, irreps_in: o3.Irreps, hidden: o3.Irreps, lmax: int, diameter: float,
                 steps: Sequence[float], num_radial_basis: int) -> None:  # fmt: skip
        super().__init__()
        n_scalars = sum(m for m, ir in hidden if ir.l == 0)
        gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
        self.gate = NormGate(n_scalars, gated)
        self.conv = VoxelConvolution(irreps_in, self.gate.irreps_in, lmax, diameter, steps,
                                     num_radial_basis)  # fmt: skip
        self.irreps_out = self.gate.irreps_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))


class SteerableCNN(nn.Module):
    """SO(3)-steerable CNN: gated voxel-convolution blocks, blur pooling, invariant scalar head.

    Parameters
    ----------
    in_channels, num_outputs : int
        Scalar input channels and outputs.
    widths : sequence of str, default=("4x0e + 2x1e", "12x0e + 4x1e + 2x2e", "48x0e + 12x1e + 4x2e")
        Hidden irreps per level (even parity: SO(3), see module docstring).
    lmax : int, default=2
        Spherical-harmonic degree of the kernels.
    diameter : float, default=3.6
        Kernel diameter at the first level, in the physical units of ``steps`` (doubles per level).
    steps : tuple of float, default=(1, 1, 1)
        Voxel sizes of the input.
    num_radial_basis : int, default=3
        Radial basis functions per kernel.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        widths: Sequence[str] = ("4x0e + 2x1e", "12x0e + 4x1e + 2x2e", "48x0e + 12x1e + 4x2e"),
        lmax: int = 2,
        diameter: float = 3.6,
        steps: tuple[float, float, float] = (1.0, 1.0, 1.0),
        num_radial_basis: int = 3,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        irreps = o3.Irreps(f"{in_channels}x0e")
        for level, hidden in enumerate(widths):
            st = tuple(s * 2**level for s in steps)
            if level:
                blocks.append(BlurPool3d(tuple(s * 2 ** (level - 1) for s in steps)))
            block = _GatedBlock(irreps, o3.Irreps(hidden).simplify(), lmax, diameter * 2**level,
                                st, num_radial_basis)  # fmt: skip
            blocks.append(block)
            irreps = block.irreps_out
        self.features = nn.Sequential(*blocks)
        self.n_scalars = sum(m for m, ir in irreps if ir.l == 0 and ir.p == 1)
        if self.n_scalars == 0 or irreps[0].ir.l != 0:
            raise ValueError(
                f"the last level needs 0e channels for the invariant head, got {irreps}"
            )
        c = self.n_scalars
        self.head = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, num_outputs))
        self.levels = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, X, Y, Z)`` to ``(B, num_outputs)`` from the spatial mean and max of the 0e
        channels."""
        f = self.features(x)
        s = f[:, : self.n_scalars].flatten(2)
        return self.head(torch.cat([s.mean(-1), s.amax(-1)], dim=1))
