"""Precise normalisation statistics: running means recomputed for the current weights.

Batch normalisation keeps exponential running averages of batch statistics (momentum 0.1) and
uses them in evaluation. Over a short run, with few steps per epoch and weights still moving,
those averages lag the weights: the pooled features of the volume models have a small
between-subject spread beside a large common offset, so a lag of a fraction of that offset
turns the evaluation-mode model into a constant predictor while training loss keeps falling.
The symmetry grid saw octahedral cells end at 0.74 accuracy that way (their validation loss
jumped from 0.63 to 1.5 between epochs); with statistics recomputed after every epoch the same
cell reached 0.91 with a smooth validation curve.

The statistics are taken on the training set *without* augmentation: a model is evaluated on
inputs as they come, and the statistics of randomly rotated, resampled volumes (zero-filled
corners, interpolation-smoothed noise) differ from theirs. Averages over augmented batches,
lagging or precise, left the CNN trained with SO(3) augmentation at chance on its unrotated
validation volumes in 3 of the first 24 such cells of the symmetry grid (validation loss 2–5
while the training loss fell to 0.2); with statistics of the unaugmented training set the same
cell reached 1.00. This is AdaBN's point (Li et al. 2016: normalisation statistics belong to the
domain the model is applied to), within the training data.

This is "precise BN" (Wu & Johnson 2021, *Rethinking "Batch" in BatchNorm*; fvcore's
``PreciseBN``): after an epoch, forward the training set once more without gradients and set
every running statistic to the mean over those batches. :func:`torch.optim.swa_utils.update_bn`
does it for :class:`torch.nn.modules.batchnorm._BatchNorm` only (it sets ``momentum = None``,
which e3nn's ``BatchNorm`` and :class:`~pipeline.models.steerable.NormGate` do not accept);
here any module with a float ``momentum`` and ``running_*`` buffers takes part, by setting the
momentum of the k-th batch to ``1 / (k + 1)``, which makes an exponential average a cumulative
one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

__all__ = ["recompute_running_statistics", "running_statistics_modules"]


def running_statistics_modules(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that keep running statistics: a float ``momentum`` and at least
    one ``running_*`` buffer (torch's batch norms, e3nn's ``BatchNorm``, ``NormGate``).

    >>> net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.ReLU())
    >>> [type(m).__name__ for m in running_statistics_modules(net)]
    ['BatchNorm3d']
    """
    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "momentum", None), float)
        and any(name.startswith("running_") for name, _ in m.named_buffers(recurse=False))
    ]


@torch.no_grad()
def recompute_running_statistics(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    amp: Callable[[], AbstractContextManager] | None = None,
) -> int:
    """Set every running statistic of ``model`` to its mean over ``batches``.

    Parameters
    ----------
    model : torch.nn.Module
        Its modules with running statistics (:func:`running_statistics_modules`) are updated in
        place; its training flag and each module's momentum are restored.
    batches : iterable of torch.Tensor
        Model inputs, on the model's device, drawn like the inputs the model will be applied to
        (the training set without augmentation); each batch weighs the same, as in
        :func:`torch.optim.swa_utils.update_bn`.
    amp : callable, optional
        Context of the forward pass (the training's mixed precision).

    Returns
    -------
    int
        Batches forwarded (0 when the model keeps no running statistics; nothing is run).

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> bn = nn.BatchNorm1d(1)
    >>> data = [torch.randn(16, 1) * 2 + 5 for _ in range(4)]
    >>> recompute_running_statistics(bn, data)
    4
    >>> round(float(bn.running_mean), 2) == round(float(torch.stack([d.mean() for d in data]).mean()), 2)
    True
    """
    modules = running_statistics_modules(model)
    if not modules:
        return 0
    momenta = [m.momentum for m in modules]
    was_training = model.training
    model.train()
    n = 0
    try:
        for x in batches:
            for m in modules:
                m.momentum = 1.0 / (n + 1)
            if amp is None:
                model(x)
            else:
                with amp():
                    model(x)
            n += 1
    finally:
        for m, momentum in zip(modules, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return n
