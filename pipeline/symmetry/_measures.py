r"""Equivariance and invariance errors of functions of volumes (ε-approximate equivariance).

For a function :math:`f`, an input action :math:`g_\text{in}` and an output action
:math:`g_\text{out}` (identity for invariance), the per-sample relative error is

.. math::

    \varepsilon(x, g) =
    \frac{\lVert f(g_\text{in} x) - g_\text{out} f(x) \rVert}{\lVert f(x) \rVert + \delta}.

When :math:`g_\text{in}` resamples, even an exactly invariant :math:`f` shows an error; the
*resampling floor* :math:`\lVert f(g^{-1} g x) - f(x)\rVert / \lVert f(x)\rVert` (rotate and rotate
back, no net rotation) is the error expected from interpolation alone and is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = [
    "cube_epsilon",
    "equivariance_error",
    "group_epsilon",
    "relative_error",
    "resampling_floor",
]

Action = Callable[[torch.Tensor], torch.Tensor]


def relative_error(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample ``||a - b|| / (||b|| + eps)`` over all but the first axis."""
    d = (a - b).flatten(1).norm(dim=1)
    return d / (b.flatten(1).norm(dim=1) + eps)


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


@torch.no_grad()
def equivariance_error(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    actions_in: Action | Iterable[Action],
    actions_out: Action | Iterable[Action] | None = None,
    eps: float = 1e-12,
    relative: bool = True,
) -> torch.Tensor:
    """Relative equivariance errors of ``f`` at ``x`` for each action.

    Parameters
    ----------
    f : callable
        Maps a batch ``(B, ...)`` to ``(B, ...)``.
    x : torch.Tensor
        Batch of inputs.
    actions_in : callable or iterable of callables
        Group elements acting on inputs.
    actions_out : callable or iterable of callables, optional
        Matching actions on outputs; ``None`` means invariance (identity on outputs).
    relative : bool, default=True
        Divide by ``||f(x)||`` per sample; ``False`` gives the absolute norm of the difference.

    Returns
    -------
    torch.Tensor
        Shape ``(n_actions, B)``: relative error per action and per sample.
    """
    ins = [actions_in] if callable(actions_in) else list(actions_in)
    if actions_out is None:
        outs: list[Action | None] = [None] * len(ins)
    else:
        outs = [actions_out] if callable(actions_out) else list(actions_out)
    if len(outs) != len(ins):
        raise ValueError(f"got {len(ins)} input actions but {len(outs)} output actions")
    fx = f(x)
    errs = []
    for g_in, g_out in zip(ins, outs, strict=True):
        ref = fx if g_out is None else g_out(fx)
        errs.append(relative_error(f(g_in(x)), ref, eps) if relative else _dist(f(g_in(x)), ref))
    return torch.stack(errs)


@torch.no_grad()
def resampling_floor(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    actions: Iterable,
    eps: float = 1e-12,
    relative: bool = True,
) -> torch.Tensor:
    """Errors ``||f(g⁻¹(g(x))) − f(x)|| / ||f(x)||`` (no net rotation), shape ``(n_actions, B)``.

    Each action must have an ``inverse()`` method (e.g. :class:`pipeline.symmetry.Rotation`);
    ``relative=False`` gives absolute norms.
    """
    fx = f(x)
    err = relative_error if relative else lambda a, b, _eps: _dist(a, b)
    return torch.stack([err(f(g.inverse()(g(x))), fx, eps) for g in actions])


@torch.no_grad()
def group_epsilon(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    actions: Iterable[Action],
    batch_size: int = 4,
) -> dict[str, float | int | None]:
    r"""Measured :math:`\varepsilon` of :math:`\varepsilon`-approximate invariance of ``f`` at ``x``.

    :math:`f` is :math:`\varepsilon`-approximately invariant to a group :math:`G` when
    :math:`\lVert f(gx) - f(x)\rVert \le \varepsilon \lVert f(x)\rVert` for every :math:`g` and
    :math:`x` (Wang, Walters & Yu 2022, relative form). Measured on the inputs ``x`` over the
    group elements ``actions``:

    - ``epsilon``: the largest relative change (the sup of the definition, over what was seen);
    - ``epsilon_mean``: its mean over inputs and elements;
    - ``epsilon_spread``: RMS movement :math:`(\operatorname{mean}\lVert f(gx) - f(x)\rVert^2)^{1/2}`
      in units of the RMS distance between the outputs of different inputs (the unit of
      :func:`pipeline.symmetry.so3_invariance`); None with fewer than two inputs.

    Parameters
    ----------
    f : callable
        Maps ``(B, ...)`` to ``(B, ...)`` sample by sample (a model in ``eval()`` mode).
    x : torch.Tensor
        Inputs.
    actions : iterable of callables
        Group elements acting on inputs (e.g. the non-trivial :func:`cube_rotations`).
    batch_size : int, default=4
        Inputs per call of ``f``.

    Returns
    -------
    dict
        ``epsilon``, ``epsilon_mean``, ``epsilon_spread``, ``n_inputs``, ``n_actions``.
    """
    acts = list(actions)
    if not acts or len(x) == 0:
        raise ValueError("group_epsilon needs at least one input and one group element")

    def apply(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([f(v[i : i + batch_size]) for i in range(0, len(v), batch_size)])

    fx = apply(x).flatten(1).double()
    moved = torch.stack([(apply(g(x)).flatten(1).double() - fx).norm(dim=1) for g in acts])
    rel = moved / fx.norm(dim=1).clamp(min=1e-12)
    spread = None
    if len(fx) > 1:
        b = len(fx)
        s = float(((fx[:, None] - fx[None]).pow(2).sum(-1).sum() / (b * (b - 1))).sqrt())
        spread = float(moved.pow(2).mean().sqrt()) / s if s > 0 else None
    return {
        "epsilon": float(rel.max()),
        "epsilon_mean": float(rel.mean()),
        "epsilon_spread": spread,
        "n_inputs": int(len(x)),
        "n_actions": len(acts),
    }


def cube_epsilon(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 4
) -> dict[str, float | int | None]:
    """:func:`group_epsilon` over the 23 non-trivial rotations of the cube (exact index maps, so
    no resampling floor: an exactly invariant model gives rounding error only)."""
    from pipeline.symmetry._cube import cube_rotations

    out = group_epsilon(f, x, cube_rotations()[1:], batch_size)
    return {**out, "group": "O (24 rotations of the cube)"}
