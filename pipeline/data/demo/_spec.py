"""What the demo generates: :class:`DemoSpec` and the planted constants (atrophy, network, FC
effect, tissue T2*, non-steady-state volumes), and the independent random streams."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SITE_ORIENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("R", "A", "S"),
    ("L", "P", "S"),
    ("A", "S", "R"),
)
#: planted atrophy: centre (MNI mm, left medial temporal lobe), Gaussian sigma (mm), strength
DIAGNOSIS_CENTRE_MM = (-26.0, -22.0, -14.0)
DIAGNOSIS_SIGMA_MM = 7.0
DIAGNOSIS_STRENGTH = 0.6
#: planted resting-state network: regions (MNI mm) and their network membership
NETWORK_REGIONS = pd.DataFrame(
    {
        "region": ["PCC", "mPFC", "lAG", "rAG", "lMotor", "rMotor"],
        "x": [0.0, 0.0, -46.0, 46.0, -38.0, 38.0],
        "y": [-54.0, 50.0, -66.0, -66.0, -22.0, -22.0],
        "z": [28.0, 4.0, 32.0, 32.0, 56.0, 56.0],
        "network": ["DMN", "DMN", "DMN", "DMN", "SMN", "SMN"],
    }
)
REGION_RADIUS_MM = 8.0
#: planted connectivity effect: ASD subjects' within-DMN correlation is scaled by (1 - this)
DIAGNOSIS_FC_EFFECT = 0.5
TISSUE_T2STAR = {"gm": 800.0, "wm": 640.0, "csf": 1000.0}
DUMMY_SCANS = 2


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults are the demo of ``make demo``.

    Parameters
    ----------
    sites, subjects_per_site : int
        Number of sites and subjects per site.
    seed : int
        Seed of everything random (same seed, same bytes).
    resolution : float
        Base T1w voxel size in mm; sites scale it by up to 20 % (one site anisotropic).
    bold_resolution : float
        Base BOLD voxel size in mm.
    n_volumes : int
        BOLD volumes per run (including the non-steady-state ones).
    repetition_time : float
        BOLD TR in seconds.
    max_translation_mm : float
        Translations are uniform in ``[-max, max]`` per axis.
    warp_amplitude_mm : float
        Typical size of the anatomical displacements.
    motion_regime : {"still", "drift", "spiky"}
        Head-motion regime of every run (:func:`pipeline.data.epi.motion_parameters`).
    epi_effects : bool
        Plant susceptibility dropout and distortion and physiological noise, and vary TR, volume
        count and slice order across sites (:mod:`pipeline.data.epi`). ``False`` gives the
        earlier, easier BOLD (one acquisition for all sites, no distortion), for comparison.
    """

    sites: int = 3
    subjects_per_site: int = 4
    seed: int = 0
    resolution: float = 2.0
    bold_resolution: float = 4.0
    n_volumes: int = 60
    repetition_time: float = 2.0
    max_translation_mm: float = 15.0
    warp_amplitude_mm: float = 3.0
    site_names: tuple[str, ...] = field(default=())
    motion_regime: str = "spiky"
    epi_effects: bool = True

    def site_label(self, index: int) -> str:
        """BIDS-safe site label: ``siteA``, ``siteB``, …"""
        if self.site_names:
            return self.site_names[index]
        return "site" + "".join(chr(ord("A") + d) for d in _digits(index))


def _digits(index: int) -> list[int]:
    out = [index % 26]
    while index >= 26:
        index = index // 26 - 1
        out.insert(0, index % 26)
    return out


def stream(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, index): adding sites or subjects leaves
    the existing ones unchanged."""
    return np.random.default_rng([seed, *key])
