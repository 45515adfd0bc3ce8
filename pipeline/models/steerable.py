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
import torch.nn.functional as F  # noqa: N812
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from torch import nn

from pipeline.models._layers import BlurPool3d, CachedKernel, invariant_head

__all__ = ["NormGate", "SteerableCNN", "VoxelConvolution", "ball_window"]


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
        kernel = (
            self.tp.right(self.sh, weight).permute(4, 3, 0, 1, 2).contiguous()
        )  # (o, i, x, y, z)
        # equivariant self-connection (o3.Linear) as a dense matrix, added at the lattice centre
        eye = torch.eye(self.irreps_in.dim, device=kernel.device, dtype=kernel.dtype)
        centre = torch.zeros_like(kernel)
        cx, cy, cz = self.padding
        centre[:, :, cx, cy, cz] = self.sc(eye).T
        return kernel + centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, X, Y, Z)`` → ``(B, out_dim, X, Y, Z)`` (one dense ``conv3d``)."""
        return nn.functional.conv3d(x, self.cached_kernel().to(x.dtype), padding=self.padding)


def ball_window(
    shape: Sequence[int],
    spacing: Sequence[float],
    radius: float,
    taper: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Radial window :math:`w(\lVert p\rVert)` on a grid centred at its middle voxel.

    .. math::

        w(r) = \begin{cases} 1 & r \le r_1 - \tau \\
        \cos^2\!\big(\tfrac{\pi}{2}\,(r - r_1 + \tau)/\tau\big) & r_1 - \tau < r < r_1 \\
        0 & r \ge r_1 \end{cases}

    with :math:`r_1` = ``radius`` and :math:`\tau` = ``taper`` (physical units), set to zero
    where it falls below :math:`10^{-6}`. It depends on the distance to the centre only, so it
    commutes with every rotation about the centre.
    """
    axes = [
        (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s
        for n, s in zip(shape, spacing, strict=True)
    ]
    r = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).norm(dim=-1)
    u = ((r - (radius - taper)) / max(taper, 1e-12)).clamp(0.0, 1.0)
    w = torch.cos(0.5 * math.pi * u).pow(2)
    # the taper's last values would be subnormal in float32 (and make convolutions ~3× slower)
    return torch.where(w < 1e-6, 0.0, w).to(dtype=dtype, device=device)


class NormGate(nn.Module):
    r"""Equivariant normalisation + nonlinearity, channel-first, that maps zero to zero.

    Input channels are ``[scalars | gates | gated]``. Every channel is divided by a (running)
    root-mean-square, never centred, so a zero feature stays zero (features outside the
    windowed field of view stay zero and the cube's faces never enter the result). Scalars go
    through SiLU; each gated irrep field :math:`v_k` (dimension :math:`2l+1`) is scaled by its
    running RMS norm and by :math:`\sigma(\text{gate}_k)`:

    .. math::

        s_c \mapsto \operatorname{SiLU}\big(\gamma_c\, s_c / \sqrt{\mathbb{E} s_c^2 + \epsilon}\big),
        \qquad
        v_k \mapsto \gamma_k\, \sigma\big(g_k / \sqrt{\mathbb{E} g_k^2 + \epsilon} + b_k\big)\, v_k
        / \sqrt{\mathbb{E}\lVert v_k\rVert^2/(2l+1) + \epsilon}.

    Norms and scalars are invariant, so the layer is equivariant (e3nn's ``Gate`` and
    ``BatchNorm`` compute the same kind of map channel-last, one slice per irrep, which is slow
    on volumes). Statistics are taken over the batch and space in training, running in eval.
    """

    def __init__(
        self, n_scalars: int, gated: o3.Irreps, momentum: float = 0.1, eps: float = 1e-5
    ) -> None:
        super().__init__()
        dims = [ir.dim for mul, ir in gated for _ in range(mul)]
        self.n_scalars, self.n_gated = n_scalars, len(dims)
        self.irreps_in = o3.Irreps(f"{n_scalars + len(dims)}x0e") + gated
        self.irreps_out = (o3.Irreps(f"{n_scalars}x0e") + gated).simplify()
        ns, ng = n_scalars, len(dims)
        idx = (
            torch.cat([torch.full((d,), k) for k, d in enumerate(dims)]) if dims else torch.zeros(0)
        )
        self.register_buffer("index", idx.long())
        self.register_buffer("dims", torch.tensor(dims, dtype=torch.float32))
        self.register_buffer("running_sq", torch.ones(ns + 2 * ng))  # scalars, gates, fields
        self.gain = nn.Parameter(torch.ones(ns + ng))  # scalars, fields
        self.gate_bias = nn.Parameter(torch.zeros(ng))
        self.momentum, self.eps = momentum, eps

    def _mean_squares(self, x: torch.Tensor) -> torch.Tensor:
        ns, ng = self.n_scalars, self.n_gated
        comp = x.pow(2).mean(dim=(0, 2, 3, 4))
        fields = torch.zeros(ng, dtype=x.dtype, device=x.device).index_add(
            0, self.index, comp[ns + ng :]
        ) / self.dims.to(x.dtype)
        return torch.cat([comp[: ns + ng], fields])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, irreps_in.dim, X, Y, Z)`` → ``(B, irreps_out.dim, X, Y, Z)``."""
        ns, ng = self.n_scalars, self.n_gated
        if self.training:
            sq = self._mean_squares(x)
            with torch.no_grad():
                self.running_sq.lerp_(sq.detach().to(self.running_sq.dtype), self.momentum)
        else:
            sq = self.running_sq.to(x.dtype)
        inv = torch.rsqrt(sq + self.eps)
        shape = (1, -1, 1, 1, 1)
        scalars = F.silu(x[:, :ns] * (self.gain[:ns] * inv[:ns]).to(x.dtype).view(shape))
        if ng == 0:
            return scalars
        gates = x[:, ns : ns + ng] * inv[ns : ns + ng].view(shape) + self.gate_bias.view(shape)
        scale = (self.gain[ns:] * inv[ns + ng :]).to(x.dtype).view(shape)
        factor = torch.sigmoid(gates.to(x.dtype)) * scale
        return torch.cat([scalars, x[:, ns + ng :] * factor.index_select(1, self.index)], dim=1)


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
    r"""SO(3)-steerable CNN: windowed input, gated 5³ voxel convolutions, isotropic low-pass
    before every stride, invariant pooling over a ball.

    .. math::

        x \mapsto w\,x \;\to\; [\,\text{conv}_{5^3} \to \text{NormGate}\,]
        \;\to\; [\,G_\sigma * \cdot\,]_{\downarrow 2} \to \dots \;\to\;
        \Big(\tfrac{\sum_u b(u) s_c(u)}{\sum_u b(u)},\
        \big(\tfrac{\sum_u b(u) s_c(u)^2}{\sum_u b(u)}\big)^{1/2}\Big)_c \to \text{MLP}

    Every stage commutes with rotations about the grid centre up to the grid: the input window
    :math:`w` and the pooling ball :math:`b` are radial (:func:`ball_window`); kernels are
    spherical harmonics times smooth radial profiles with a cutoff (:class:`VoxelConvolution`,
    5³ lattices at every level by default); nonlinearities act on invariants
    (:class:`NormGate`, which also keeps zero features zero); and the Gaussian low-pass
    :class:`~pipeline.models._layers.BlurPool3d` before each stride-2 subsampling is isotropic
    (``blur_sigma`` voxels of the finer grid). The pooled features are the ball-weighted mean
    and root-mean-square of the ``0e`` channels. Exactly invariant to the 24 cube rotations at
    any input size (the stride lattices are centred whatever the parity); measured against
    arbitrary rotations by :func:`pipeline.symmetry.so3_invariance`.

    Parameters
    ----------
    in_channels, num_outputs : int
        Scalar input channels and outputs.
    widths : sequence of str, default=("4x0e + 2x1e + 1x2e", "8x0e + 4x1e + 2x2e", "24x0e + 6x1e + 3x2e")
        Hidden irreps per level (even parity: SO(3), see module docstring).
    lmax : int, default=2
        Spherical-harmonic degree of the kernels.
    diameter : float, default=5.0
        Kernel diameter at the first level, in the physical units of ``steps`` (doubles per
        level with the grid step, so every level has a 5³ lattice whose corners the radial
        cutoff removes).
    steps : tuple of float, default=(1, 1, 1)
        Voxel sizes of the input.
    num_radial_basis : int, default=3
        Radial basis functions per kernel.
    window : float or None, default=0.95
        Input window radius as a fraction of the half-extent of the shortest side (the
        inscribed ball); ``None`` disables the window and pools over the whole grid.
    taper : float, default=0.35
        Width of the window's cosine taper, as a fraction of its radius.
    blur_sigma : float, default=1.2
        Width of the Gaussian low-pass before each stride, in voxels of the finer grid.
    head_width : int, default=128
        Hidden units of the invariant MLP head (cheap capacity: it runs once per volume).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        widths: Sequence[str] = ("4x0e + 2x1e + 1x2e", "8x0e + 4x1e + 2x2e",
                                 "24x0e + 6x1e + 3x2e"),
        lmax: int = 2,
        diameter: float = 5.0,
        steps: tuple[float, float, float] = (1.0, 1.0, 1.0),
        num_radial_basis: int = 3,
        window: float | None = 0.95,
        taper: float = 0.35,
        blur_sigma: float = 1.2,
        head_width: int = 128,
    ) -> None:  # fmt: skip
        super().__init__()
        if window is not None and not 0 < window <= 1:
            raise ValueError(f"window must be in (0, 1] or None, got {window}")
        if not 0 < taper <= 1:
            raise ValueError(f"taper must be in (0, 1], got {taper}")
        blocks: list[nn.Module] = []
        irreps = o3.Irreps(f"{in_channels}x0e")
        for level, hidden in enumerate(widths):
            st = tuple(s * 2**level for s in steps)
            if level:
                fine = tuple(s * 2 ** (level - 1) for s in steps)
                blocks.append(BlurPool3d(fine, sigma=blur_sigma * min(fine)))
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
        self.head = invariant_head(2 * c, head_width, num_outputs)
        self.levels = len(widths) - 1
        self.steps = tuple(float(s) for s in steps)
        self.window, self.taper = window, taper
        self._windows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _ball(self, shape: tuple[int, ...], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Input window and pooling ball (on the coarsest grid) for an input of ``shape``."""
        key = (shape, device, dtype)
        if key not in self._windows:
            radius = (
                self.window * min((n - 1) / 2 * s for n, s in zip(shape, self.steps, strict=True))
                if self.window is not None
                else math.inf
            )
            taper = self.taper * radius if self.window is not None else 1.0
            w_in = ball_window(shape, self.steps, radius, taper, dtype, device)
            coarse = list(shape)
            for _ in range(self.levels):
                coarse = [(n + 1) // 2 if n % 2 else n // 2 for n in coarse]
            cs = [s * 2**self.levels for s in self.steps]
            ball = ball_window(coarse, cs, radius, taper, dtype, device)
            if float(ball.sum()) == 0:
                raise ValueError(f"input of shape {shape} is too small for {self.levels} levels")
            self._windows[key] = (w_in, ball / ball.sum())
        return self._windows[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, X, Y, Z)`` to ``(B, num_outputs)`` from the ball-weighted mean and RMS
        of the final 0e channels."""
        w_in, ball = self._ball(tuple(x.shape[-3:]), x.device, x.dtype)
        f = self.features(x * w_in)
        s = f[:, : self.n_scalars]
        mean = (s * ball).sum(dim=(2, 3, 4))
        rms = ((s * s * ball).sum(dim=(2, 3, 4)) + 1e-12).sqrt()
        return self.head(torch.cat([mean, rms], dim=1))
