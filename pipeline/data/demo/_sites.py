"""Per-site scanner gauges and acquisitions of the demo, and the intensity nuisances they plant
as :mod:`pipeline.symmetry` actions (one definition of each nuisance, shared with the audit)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.demo._grid import stored_grid
from pipeline.data.demo._spec import DUMMY_SCANS, SITE_ORIENTATIONS, DemoSpec, stream
from pipeline.data.epi import SITE_ACQUISITIONS
from pipeline.symmetry import BiasField, Gain, MonotoneContrast, RicianNoise


def site_gauges(spec: DemoSpec) -> list[dict[str, Any]]:
    """Per-site scanner gauge: gain, contrast exponent, bias coefficients, noise, voxel size, FOV."""
    gauges = []
    for s in range(spec.sites):
        rng = stream(spec.seed, 1, s)
        scale = 1.0 + 0.1 * (s % 3)
        voxel = np.full(3, spec.resolution * scale)
        if s % 3 == 2:  # one anisotropic site: thicker slices
            voxel[2] *= 1.2
        gauges.append(
            {
                "site": spec.site_label(s),
                "orientation": "".join(SITE_ORIENTATIONS[s % len(SITE_ORIENTATIONS)]),
                "gain": float(rng.uniform(0.6, 1.8)),
                "gamma": float(rng.uniform(0.7, 1.4)),
                "bias_coefficients": rng.normal(0.0, 0.12, size=9).round(4).tolist(),
                "noise_fraction": float(rng.uniform(0.01, 0.03)),
                "t1w_voxel_mm": voxel.round(3).tolist(),
                "t1w_fov_mm": [float(rng.uniform(236, 256))] * 3,
                "bold_voxel_mm": [spec.bold_resolution * (1.0 + 0.05 * (s % 2))] * 3,
                "bold_fov_mm": [float(rng.uniform(236, 250))] * 2 + [220.0],
                "bold_gain": float(rng.uniform(0.5, 2.0)),
                "manufacturer": ["Siemens", "GE", "Philips"][s % 3],
            }
        )
        gauges[-1].update(_site_acquisition(spec, s, gauges[-1], rng))
    return gauges


def _site_acquisition(
    spec: DemoSpec, index: int, gauge: dict[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    """TR, volume count, slice order, phase encoding and FOV placement of a site's BOLD."""
    scheme = SITE_ACQUISITIONS[index % len(SITE_ACQUISITIONS)] if spec.epi_effects else None
    if scheme is None:
        scheme = {**SITE_ACQUISITIONS[0], "tr": 1.0, "volumes": 1.0}
    offset = rng.uniform(-12.0, 12.0, size=3) if spec.epi_effects else np.zeros(3)
    shape, _ = stored_grid(
        np.array(gauge["bold_fov_mm"]),
        np.array(gauge["bold_voxel_mm"]),
        tuple(gauge["orientation"]),
    )
    n_pe = shape["ijk".index(scheme["pe"][0])]
    return {
        "bold_tr": round(spec.repetition_time * scheme["tr"], 4),
        "bold_volumes": max(int(round(spec.n_volumes * scheme["volumes"])), DUMMY_SCANS + 6),
        "slice_order": scheme["slice_order"],
        "phase_encoding_direction": scheme["pe"],
        "total_readout_time": round(scheme["echo_spacing"] * (n_pe - 1), 5)
        if spec.epi_effects
        else 0.0,
        "bold_fov_offset_mm": offset.round(3).tolist(),
    }


def gauge_actions(
    gauge: dict[str, Any], reference_max: float
) -> tuple[MonotoneContrast, Gain, BiasField]:
    """The site's T1w intensity gauge as :mod:`pipeline.symmetry` actions, the ones the
    invariance audit applies.

    Parameters
    ----------
    gauge : dict
        One entry of :func:`site_gauges` (``gamma``, ``gain``, ``bias_coefficients``).
    reference_max : float
        The intensity :math:`m` that the contrast change keeps fixed.

    Returns
    -------
    contrast, gain, bias
        :math:`I \\mapsto m\\,(I/m)^{\\gamma}`, :math:`I \\mapsto g\\,I` and the smooth
        multiplicative bias, evaluated at scanner positions (``bias.field_at``) so that it is
        fixed to the scanner, as a coil's is.
    """
    return (
        MonotoneContrast(gauge["gamma"], reference_max),
        Gain(gauge["gain"]),
        BiasField(tuple(gauge["bias_coefficients"])),
    )


def noise_action(sigma: float, rng: np.random.Generator) -> RicianNoise:
    """Rician magnitude noise of ``sigma`` per channel (:class:`pipeline.symmetry.RicianNoise`),
    seeded from ``rng``."""
    return RicianNoise(float(sigma), seed=int(rng.integers(2**32)))
