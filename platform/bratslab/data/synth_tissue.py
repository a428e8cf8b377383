"""The synthetic phantom's tissue classes and its smooth random 1-D functions, shared by the
clean phantom (:mod:`bratslab.data.synth`) and its scanner shift
(:mod:`bratslab.data.synth_scanner`)."""

from __future__ import annotations

import numpy as np

# Tissue classes of the phantom's label map.
BG, WM, GM, CSF, ED, ET, NCR = range(7)


def wave(rng: np.random.Generator, coord: np.ndarray, scale: float, n: int = 3) -> np.ndarray:
    """A smooth random 1-D function: a sum of ``n`` sinusoids with periods around ``scale``."""
    out = np.zeros_like(coord)
    for _ in range(n):
        w = 2 * np.pi / (scale * rng.uniform(0.6, 1.6))
        out += rng.uniform(0.3, 1.0) * np.sin(w * coord + rng.uniform(0, 2 * np.pi))
    return (out / n).astype(np.float32)
