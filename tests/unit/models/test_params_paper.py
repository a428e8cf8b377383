"""MedNeXt parameter counts and GFLOPs against the paper (Roy et al. 2023, Table 1).

Counted on the meta device: no memory, no real forward pass (MedNeXt-L included).
"""

from __future__ import annotations

import pytest

from bratslab.models.config import ModelConfig
from bratslab.models.describe import describe_model

# size, kernel -> (params in millions, GFLOPs at 128³ with 1 multiply-add = 1 FLOP)
PAPER = {
    ("S", 3): (5.6, 130),
    ("S", 5): (5.9, 169),
    ("B", 3): (10.5, 170),
    ("B", 5): (11.0, 208),
    ("M", 3): (17.6, 248),
    ("M", 5): (18.3, 308),
    ("L", 3): (61.8, 500),
    ("L", 5): (63.0, 564),
}


@pytest.mark.parametrize(("size", "kernel"), list(PAPER))
def test_mednext_matches_paper_table(size, kernel):
    cfg = ModelConfig(
        arch="mednext",
        in_channels=1,
        out_channels=14,
        output="labels",
        mednext={"size": size, "kernel_size": kernel},
    )
    info = describe_model(cfg, (128, 128, 128))
    params_m, gflops = PAPER[(size, kernel)]
    assert info["params"] / 1e6 == pytest.approx(params_m, rel=0.02)
    # The paper's count is ~1-2% above the convolution/matmul count (it also counts norms).
    assert info["gmacs"] == pytest.approx(gflops, rel=0.03)
    assert sum(info["params_by_group"].values()) == info["params"]
