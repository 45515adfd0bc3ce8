r"""Permutation-invariant models of brain networks: ROIs as a set of tokens.

An atlas's ROI order is arbitrary: relabelling the ROIs by a permutation :math:`P` maps the
per-ROI features :math:`X \in \mathbb{R}^{N\times F}` to :math:`PX` and a connectivity matrix
:math:`A` to :math:`PAP^\top`. :class:`RoiSet` is a set transformer (Lee et al. 2019) whose output
is exactly invariant under that action, for any :math:`N`:

.. math::
    h^{(0)}_i &= W_0\,[\,x_i \,\|\, q(A_{i,\cdot}) \,\|\, r_i\,], \\
    h^{(l+1)} &= h^{(l)} + \operatorname{MHA}\big(h^{(l)};\ b^{(l)}(A_{ij}, \phi(d_{ij}))\big)
               + W_l\,\tfrac{1}{N} A\,h^{(l)} + \operatorname{MLP}(h^{(l)}), \\
    f(X, A) &= \operatorname{MLP}\big([\operatorname{mean}_i h_i \,\|\, \max_i h_i]\big),

where :math:`q(A_{i,\cdot})` are quantiles of row :math:`i`'s off-diagonal values (a function of
the *set* of a ROI's edges, so invariant to the order of the others), the attention logits get a
learned bias per head from the edge weight :math:`A_{ij}` and from radial basis functions
:math:`\phi` of the inter-ROI distance :math:`d_{ij}`, and :math:`r_i` are the ROI's distance to
the centroid and its mean distance to the others. Distances are invariant to rotations,
reflections and translations of the coordinate frame, so with ``coords=True`` the model knows which
region is where without depending on the atlas order or on the frame.

The relaxed variant adds :math:`\varepsilon\, E_i W_E` to :math:`h^{(0)}_i`, with :math:`E_i` a
sinusoidal code of the position :math:`i` in the atlas order and a learned scalar
:math:`\varepsilon` (0 at initialisation: the model starts exactly invariant).
:meth:`RoiSet.symmetry_defect` is :math:`|\varepsilon|\,\|W_E\|_F/\sqrt{d}`; the permutation
error actually reached is measured by :func:`permutation_error`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FlatMLP", "RoiSet", "permutation_error", "permute_rois"]


def permute_rois(x: torch.Tensor, perm: torch.Tensor, matrix: bool) -> torch.Tensor:
    """Relabel the ROIs of ``x`` (B, N, C): token ``i`` becomes token ``perm[i]``'s.

    With ``matrix``, the first N channels are an N×N matrix in the ROI order and are permuted
    too (:math:`A \\mapsto PAP^\\top`). ``perm`` is (N,) for the whole batch or (B, N) per item.
    """
    n = x.shape[1]
    if perm.ndim == 1:
        perm = perm.expand(x.shape[0], n)
    idx = perm[:, :, None].expand(-1, -1, x.shape[2])
    out = torch.gather(x, 1, idx)
    if matrix:
        cols = perm[:, None, :].expand(-1, n, -1)
        out = torch.cat([torch.gather(out[..., :n], 2, cols), out[..., n:]], dim=2)
    return out


@torch.no_grad()
def permutation_error(model: nn.Module, x: torch.Tensor, n_perms: int = 8, seed: int = 0) -> float:
    """Largest :math:`|f(Px) - f(x)|` over ``n_perms`` random ROI relabellings of the batch ``x``."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ref = model(x)
    err = 0.0
    for _ in range(n_perms):
        perm = torch.stack([torch.randperm(x.shape[1], generator=g) for _ in range(len(x))])
        out = model(permute_rois(x, perm.to(x.device), getattr(model, "matrix", False)))
        err = max(err, float((out - ref).abs().max()))
    return err


def _sinusoidal(n: int, width: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal code (n, width) of the positions 0..n-1 (Vaswani et al. 2017)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, width, 2, device=device).float() / width)
    code = torch.zeros(n, width, device=device)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return code


class _Block(nn.Module):
    """One equivariant block: biased self-attention, matrix message passing, feed-forward."""

    def __init__(self, width: int, heads: int, edge_dim: int, matrix: bool, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.bias = nn.Linear(edge_dim, heads) if edge_dim else None
        self.message = nn.Linear(width, width) if matrix else None
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, width)
        )

    def forward(
        self, h: torch.Tensor, edges: torch.Tensor | None, adj: torch.Tensor | None
    ) -> torch.Tensor:
        b, n, d = h.shape
        z = self.norm1(h)
        q, k, v = self.qkv(z).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = None
        if self.bias is not None and edges is not None:
            bias = self.bias(edges).permute(0, 3, 1, 2)  # (B, heads, N, N)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        h = h + self.proj(att.transpose(1, 2).reshape(b, n, d))
        if self.message is not None and adj is not None:
            h = h + self.message(adj @ z / n)
        return h + self.ff(self.norm2(h))


class RoiSet(nn.Module):
    """Set transformer over ROI tokens, exactly invariant to the ROI order (see the module doc).

    Parameters
    ----------
    in_channels : int
        Per-ROI feature channels ``F`` (besides the matrix); with ``coords`` the last three are
        the ROI's x, y, z (mm). May be 0 with ``matrix``.
    num_outputs : int
        Logits (or regression targets).
    width, depth, heads : int, default=32, 2, 4
        Token width, blocks, attention heads (``width`` divisible by ``heads``).
    matrix : bool, default=False
        The input is ``(B, N, N + F)``: its first N channels are an N×N matrix (FC) in the ROI
        order, used as row quantiles, attention bias and messages (``A h / N``).
    coords : bool, default=False
        The last three of the ``F`` channels are coordinates, used only through distances.
    relaxed : bool, default=False
        Add a learned, ε-scaled code of the ROI position (breaks the symmetry by a measured ε).
    quantiles : int, default=8
        Row quantiles per ROI (``matrix``).
    rbf : int, default=8
        Radial basis functions of the inter-ROI distance (``coords``), centres 0..``rbf_max_mm``.
    rbf_max_mm : float, default=160
    dropout : float, default=0.1
    penalty : float, default=1e-2
        :math:`\\lambda` of :meth:`symmetry_penalty` (relaxed model).

    Examples
    --------
    >>> model = RoiSet(3, 2, matrix=True, coords=True)
    >>> model(torch.zeros(4, 10, 13)).shape
    torch.Size([4, 2])
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        width: int = 32,
        depth: int = 2,
        heads: int = 4,
        matrix: bool = False,
        coords: bool = False,
        relaxed: bool = False,
        quantiles: int = 8,
        rbf: int = 8,
        rbf_max_mm: float = 160.0,
        dropout: float = 0.1,
        penalty: float = 1e-2,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        if coords and in_channels < 3:
            raise ValueError(f"coords=True needs in_channels >= 3 (x, y, z); got {in_channels}")
        if in_channels < 0 or (in_channels == 0 and not matrix):
            raise ValueError(f"in_channels must be >= 1 (or 0 with matrix=True); got {in_channels}")
        self.in_channels, self.matrix, self.coords = in_channels, matrix, coords
        self.relaxed, self.penalty = relaxed, penalty
        self.n_plain = in_channels - 3 * coords
        self.n_quantiles = quantiles if matrix else 0
        node_dim = self.n_plain + (self.n_quantiles + 2 if matrix else 0) + (2 if coords else 0)
        self.rbf = rbf if coords else 0
        self.register_buffer(
            "rbf_centres", torch.linspace(0.0, rbf_max_mm, max(self.rbf, 1)), persistent=False
        )
        self.rbf_width = rbf_max_mm / max(self.rbf - 1, 1)
        edge_dim = int(matrix) + self.rbf
        self.embed = nn.Linear(node_dim, width)
        if relaxed:
            self.position = nn.Linear(width, width, bias=False)
            self.epsilon = nn.Parameter(torch.zeros(()))
        self.blocks = nn.ModuleList(
            _Block(width, heads, edge_dim, matrix, dropout) for _ in range(depth)
        )
        self.head = nn.Sequential(
            nn.LayerNorm(2 * width),
            nn.Linear(2 * width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, num_outputs),
        )

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if x.ndim != 3:
            raise ValueError(f"RoiSet input must be (batch, rois, channels); got {tuple(x.shape)}")
        n = x.shape[1]
        expected = (n if self.matrix else 0) + self.in_channels
        if x.shape[2] != expected:
            detail = f"{n} (matrix) + {self.in_channels}" if self.matrix else str(self.in_channels)
            raise ValueError(
                f"RoiSet expected {expected} channels per ROI ({detail}); got {x.shape[2]}"
            )
        if self.matrix:
            return x[..., :n], x[..., n:]
        return None, x

    def _row_quantiles(self, adj: torch.Tensor) -> torch.Tensor:
        """Row mean, sd and quantiles of the off-diagonal values (invariant to column order)."""
        n = adj.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=adj.device)
        off = torch.sort(adj.masked_fill(eye, float("-inf")), dim=-1).values[..., 1:]
        levels = torch.linspace(0, 1, self.n_quantiles, device=adj.device) * max(n - 2, 0)
        q = off[..., levels.round().long()]
        mean = off.mean(-1, keepdim=True)
        sd = off.std(-1, keepdim=True, correction=0) if n > 2 else torch.zeros_like(mean)
        return torch.cat([mean, sd, q], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)`` of ``x`` ``(B, N, [N +] F)``."""
        adj, feats = self._split(x)
        parts, edges = [], []
        if self.n_plain:
            parts.append(feats[..., : self.n_plain])
        if adj is not None:
            parts.append(self._row_quantiles(adj))
            edges.append(adj[..., None])
        if self.coords:
            xyz = feats[..., -3:].double()
            dist = torch.cdist(xyz, xyz)  # float64: frame changes move it by ~1e-13 only
            centre = (xyz - xyz.mean(1, keepdim=True)).norm(dim=-1, keepdim=True)
            mean_dist = dist.sum(-1, keepdim=True) / max(x.shape[1] - 1, 1)
            parts.append((torch.cat([centre, mean_dist], -1) / 100.0).to(x.dtype))
            phi = torch.exp(
                -(((dist[..., None] - self.rbf_centres.double()) / self.rbf_width) ** 2)
            )
            edges.append(phi.to(x.dtype))
        h = self.embed(torch.cat(parts, dim=-1))
        if self.relaxed:
            code = _sinusoidal(x.shape[1], h.shape[-1], x.device)
            h = h + self.epsilon * self.position(code)
        e = torch.cat(edges, dim=-1) if edges else None
        for block in self.blocks:
            h = block(h, e, adj)
        return self.head(torch.cat([h.mean(1), h.max(1).values], dim=-1))

    def symmetry_defect(self) -> torch.Tensor:
        """:math:`|\\varepsilon|\\,\\|W_E\\|_F/\\sqrt{d}` (0 for the exact model)."""
        if not self.relaxed:
            return torch.zeros((), device=self.embed.weight.device)
        w = self.position.weight
        return self.epsilon.abs() * w.norm() / math.sqrt(w.shape[0])

    def symmetry_penalty(self) -> torch.Tensor:
        """The loss term :math:`\\lambda\\cdot` :meth:`symmetry_defect`."""
        return self.penalty * self.symmetry_defect()


class FlatMLP(nn.Module):
    """MLP on the flattened upper triangle of an N×N matrix (no symmetry: the usual baseline).

    Takes the same input as ``RoiSet(..., matrix=True)``: ``(B, N, N + F)``; the extra channels
    are ignored.

    Parameters
    ----------
    n_rois : int
    num_outputs : int
    hidden : int, default=64
    dropout : float, default=0.3
    """

    def __init__(
        self, n_rois: int, num_outputs: int, hidden: int = 64, dropout: float = 0.3
    ) -> None:
        super().__init__()
        self.n_rois, self.matrix = n_rois, True
        self.register_buffer("iu", torch.triu_indices(n_rois, n_rois, 1), persistent=False)
        self.net = nn.Sequential(
            nn.Dropout(dropout * 0.5),
            nn.Linear(self.iu.shape[1], hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` ``(B, N, N + F)``."""
        if x.shape[1] != self.n_rois:
            raise ValueError(f"FlatMLP was built for {self.n_rois} ROIs; got {x.shape[1]}")
        return self.net(x[:, self.iu[0], self.iu[1]])
