r"""3D convolutional variational autoencoder on template-space volumes (Kingma & Welling 2014),
with an optional rotation-invariant encoder.

The encoder gives :math:`q(z \mid x) = \mathcal{N}(\mu(x), \operatorname{diag} \sigma^2(x))`,
the decoder a mean volume :math:`\hat x(z)` (Gaussian likelihood), and the loss per sample is the
β-weighted negative ELBO

.. math::

    \mathcal{L}(x) = \frac{1}{N}\lVert x - \hat x(z)\rVert^2
      + \frac{\beta}{N}\, \tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1\big),
    \qquad z = \mu + \sigma \odot \varepsilon,

with :math:`N` the number of voxels. ``encoder="octahedral"`` (or ``"steerable"``) computes
:math:`(\mu, \log\sigma^2)` from group-pooled, spatially pooled invariant features
(:class:`~pipeline.models.octahedral.OctahedralCNN`, :class:`~pipeline.models.steerable.SteerableCNN`),
so :math:`\mu(g x) = \mu(x)` for the 24 rotations of the cube by construction (steerable: for
every rotation, up to the grid). ``forward(x)`` returns :math:`\mu(x)`, so a VAE is a model like
the others for :func:`pipeline.models.build_model` and :mod:`pipeline.symmetry`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models._layers import BlurPool3d

__all__ = ["VAE"]

logger = logging.getLogger(__name__)

ENCODERS = ("cnn", "octahedral", "steerable")


class _ConvEncoder(nn.Module):
    """Plain encoder: conv blocks with anti-aliased stride-2 pooling, flattened to the two heads."""

    def __init__(self, in_channels: int, out: int, widths: Sequence[int], shape: Sequence[int]):
        super().__init__()
        blocks: list[nn.Module] = []
        c = in_channels
        for level, w in enumerate(widths):
            if level:
                blocks.append(BlurPool3d((1.0, 1.0, 1.0)))
            blocks += [nn.Conv3d(c, w, 3, padding=1), nn.GroupNorm(1, w), nn.SiLU()]
            c = w
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, *shape)).numel()
        self.head = nn.Linear(n, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class _Decoder(nn.Module):
    """Linear map to a coarse grid, then (upsample ×2, conv, norm, SiLU) per level, resized to
    ``shape``."""

    def __init__(self, latent: int, out_channels: int, widths: Sequence[int], shape: Sequence[int]):
        super().__init__()
        levels = len(widths) - 1
        self.shape = tuple(int(s) for s in shape)
        self.base = tuple(max(1, math.ceil(s / 2**levels)) for s in self.shape)
        rev = list(widths)[::-1]
        self.fc = nn.Linear(latent, rev[0] * math.prod(self.base))
        self.c0 = rev[0]
        blocks: list[nn.Module] = []
        for a, b in zip(rev[:-1], rev[1:], strict=True):
            blocks += [
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                nn.Conv3d(a, b, 3, padding=1),
                nn.GroupNorm(1, b),
                nn.SiLU(),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv3d(rev[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.c0, *self.base)
        h = self.blocks(h)
        if tuple(h.shape[-3:]) != self.shape:
            h = F.interpolate(h, size=self.shape, mode="trilinear", align_corners=False)
        return self.out(h)


class VAE(nn.Module):
    """3D convolutional VAE; ``forward`` returns the posterior mean :math:`\\mu(x)`.

    Parameters
    ----------
    in_channels : int
        Channels of the volumes.
    num_outputs : int
        Latent dimension.
    shape : sequence of int, default=(17, 17, 17)
        Spatial shape of the volumes (the decoder's output grid).
    widths : sequence of int, default=(8, 16, 32)
        Channels per level (``len(widths) - 1`` stride-2 stages) of encoder and decoder.
    encoder : {"cnn", "octahedral", "steerable"}, default="cnn"
        ``octahedral``/``steerable``: rotation-invariant encoder (see module docstring).
    beta : float, default=1.0
        Weight of the KL term.
    encoder_hparams : dict, optional
        Extra keyword arguments of the invariant encoder (e.g. ``lmax`` for steerable; ``widths``
        for octahedral, which otherwise shares the decoder's).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        shape: Sequence[int] = (17, 17, 17),
        widths: Sequence[int] = (8, 16, 32),
        encoder: str = "cnn",
        beta: float = 1.0,
        encoder_hparams: dict | None = None,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"VAE encoder must be one of {', '.join(ENCODERS)}; got {encoder!r}")
        if len(shape) != 3:
            raise ConfigError(f"VAE shape must have 3 sizes; got {list(shape)}")
        self.latent_dim, self.in_channels = num_outputs, in_channels
        self.shape, self.beta, self.encoder_kind = tuple(int(s) for s in shape), beta, encoder
        extra = dict(encoder_hparams or {})
        if encoder == "cnn":
            self.encoder: nn.Module = _ConvEncoder(in_channels, 2 * num_outputs, widths, shape)
        elif encoder == "octahedral":
            from pipeline.models.octahedral import OctahedralCNN

            # encoder_hparams may give the encoder its own widths (the decoder keeps ``widths``)
            self.encoder = OctahedralCNN(
                in_channels, 2 * num_outputs, **{"widths": widths, **extra}
            )
        else:
            from pipeline.models.steerable import SteerableCNN

            self.encoder = SteerableCNN(in_channels, 2 * num_outputs, **extra)
        self.decoder = _Decoder(num_outputs, in_channels, widths, shape)
        # the input side must suit both the decoder's and the encoder's stride-2 stages
        self.levels = max(len(widths) - 1, int(getattr(self.encoder, "levels", 0)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``(B, latent_dim)``."""
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean volume ``(B, C, *shape)`` of :math:`p(x \\mid z)`."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\mu(x)`, shape ``(B, latent_dim)``."""
        return self.encode(x)[0]

    def reparameterize(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:math:`z = \\mu + e^{\\log\\sigma^2 / 2} \\varepsilon` (the mean in eval mode).

        ``generator`` (on the device of ``mu``) draws :math:`\\varepsilon`; seeded, it makes a
        training step reproducible without touching the global random state.
        """
        if not self.training:
            return mu
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` synthetic volumes :math:`\\hat x(z)`, :math:`z \\sim \\mathcal{N}(0, I)`."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype).to(p.device)
        return self.decode(z)

    def loss(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """β-weighted negative ELBO (mean over the batch) and its terms ``recon`` and ``kl``
        (both per voxel), computed in float32 (also under autocast).

        In eval mode :math:`z = \\mu` and ``recon`` is the reconstruction MSE per voxel.
        ``target`` (default ``x``) is what the decoder must reconstruct: a denoising VAE encodes
        a corrupted ``x`` and is scored against the clean ``target``.
        """
        mu, logvar = self.encode(x)
        mu, logvar = mu.float(), logvar.float()
        xhat = self.decode(self.reparameterize(mu, logvar, generator)).float()
        x = (x if target is None else target).float()
        n = x[0].numel()
        recon = (xhat - x).pow(2).flatten(1).sum(1) / n
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1) / n
        return {
            "loss": (recon + self.beta * kl).mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
        }
