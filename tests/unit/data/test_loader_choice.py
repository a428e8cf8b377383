"""``data.loader`` / ``data.loader_cpus``: defaults, validation messages, and the data-wait
share on the epoch line that tells whether a loader keeps up."""

from __future__ import annotations

from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.data.config import DataSection
from bratslab.jobs.spec import load_job
from bratslab.train.progress import format_epoch_line

SMOKE = Path(__file__).resolve().parents[3] / "jobs" / "smoke.yaml"


def test_defaults_keep_the_thread_loader_with_one_cpu():
    d = DataSection(store="store")
    assert d.loader == "thread" and d.loader_cpus == 1.0
    assert load_job(SMOKE).data.loader == "thread"


def test_ray_loader_with_fractional_cpus_is_accepted():
    spec = load_job(SMOKE, ["data.loader=ray", "data.loader_cpus=0.5"])
    assert spec.data.loader == "ray" and spec.data.loader_cpus == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.loader=dataloader", "data.loader: Input should be 'thread' or 'ray'"),
        ("data.loader_cpus=0", "data.loader_cpus: Input should be greater than 0"),
        ("data.loader_cpus=-2", "data.loader_cpus: Input should be greater than 0"),
        ("data.loader_cpus=nan", "data.loader_cpus: Input should be a finite number"),
        ("data.loader_cpus=many", "data.loader_cpus: Input should be a valid number"),
    ],
)
def test_bad_values_name_the_file_and_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_job(SMOKE, [override])
    assert str(SMOKE.name) in str(e.value) and message in str(e.value)


def test_epoch_line_shows_the_data_wait_share():
    m = {"epoch": 0, "train/loss": 0.5, "time/epoch_s": 10.0, "time/data_wait_frac": 0.234}
    assert format_epoch_line(m, 2) == "epoch 1/2 | loss 0.5000 | 10.0 s/epoch | data wait 23%"
