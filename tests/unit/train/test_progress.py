"""The per-epoch console line (bratslab.train.progress): formatting and the ETA clock."""

from __future__ import annotations

import pytest

from bratslab.train.progress import EpochClock, format_duration, format_epoch_line


def _metrics(**extra):
    m = {"epoch": 1, "train/loss": 0.81234, "time/epoch_s": 12.34, "val/fresh": 1}
    m.update({"val/dice_wt": 0.8123, "val/dice_tc": 0.7041, "val/dice_et": 0.6512})
    m.update(extra)
    return m


def test_validated_epoch_shows_region_dice_lesion_mean_time_and_eta():
    m = _metrics(
        **{"val/lesion_dice_wt": 0.7, "val/lesion_dice_tc": 0.6, "val/lesion_dice_et": 0.5}
    )
    line = format_epoch_line(m, 10, epoch_s=41.23, eta_s=330, name="smoke")
    assert line == (
        "smoke: epoch 2/10 | loss 0.8123 | Dice WT 0.812 TC 0.704 ET 0.651 | "
        "lesion Dice 0.600 | 41.2 s/epoch | ETA 5m30s"
    )
    assert "\n" not in line


def test_reported_lesion_mean_wins_over_the_region_mean():
    m = _metrics(**{"val/lesion_dice_mean": 0.42, "val/lesion_dice_wt": 0.9})
    assert "lesion Dice 0.420" in format_epoch_line(m, 2)


def test_unvalidated_epoch_omits_dice_and_falls_back_to_worker_time():
    # Between validations the report repeats the last Dice; the line must not present it as new.
    m = _metrics(**{"val/fresh": 0, "val/lesion_dice_wt": 0.7})
    line = format_epoch_line(m, 3)
    assert line == "epoch 2/3 | loss 0.8123 | 12.3 s/epoch"


def test_no_lesion_scores_no_lesion_column():
    line = format_epoch_line(_metrics(), 2, eta_s=0)
    assert "Dice WT" in line and "lesion" not in line
    assert line.endswith("ETA 0s")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (7500, "2h05m")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_epoch_clock_measures_between_reports_and_extrapolates():
    now = iter([100.0, 130.0, 150.0])
    clock = EpochClock(5, clock=lambda: next(now))
    # First report: no previous one, so the worker's own epoch time.
    assert clock.tick({"epoch": 0, "time/epoch_s": 20.0}) == (20.0, 4 * 20.0)
    assert clock.tick({"epoch": 1, "time/epoch_s": 1.0}) == (30.0, 3 * 25.0)
    spent, eta = clock.tick({"epoch": 4})
    assert spent == 20.0 and eta == 0.0


def test_the_report_counts_epochs_from_1_with_whole_ticks(tmp_path, monkeypatch):
    """MLflow steps are 0-based epochs; the report's learning curves show them as people count
    (the console's `epoch 1/2`), on whole-number ticks."""
    import matplotlib.pyplot as plt

    from bratslab.app.run_report import render_report

    closed = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), close(fig)))
    render_report(tmp_path / "r.png", curves={"t": [(0, 0.2), (1, 0.5)]}, region_dice={})
    ax = closed[0].axes[0]
    assert list(ax.lines[0].get_xdata()) == [1, 2]
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_the_report_is_a_figure_for_a_slide(tmp_path, monkeypatch):
    """Bars carry their values, the overlays name the modality and the slice, are cropped to the
    brain, and one colour key names every label drawn (the cavity included)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from bratslab.app.run_report import OverlayCase, brain_box, render_report

    closed = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), close(fig)))
    image = np.zeros((40, 50, 20), np.float32)
    image[10:30, 5:45, :] = 1.0
    truth = np.zeros(image.shape, np.uint8)
    truth[12:16, 10:14, 8] = 1
    truth[16:20, 10:14, 8] = 2
    truth[20:24, 10:14, 8] = 3
    pred = truth.copy()
    pred[24:26, 10:14, 8] = 4
    out = render_report(
        tmp_path / "r.png",
        curves={"t0 unet (TTA lesion-wise 0.70)": [(0, 0.2), (1, 0.5)]},
        region_dice={
            "voxel Dice": {"wt": 0.91, "tc": 0.8, "et": 0.75},
            "lesion-wise Dice": {"wt": 0.7, "tc": 0.6, "et": 0.55},
        },
        overlays=[OverlayCase("BraTS-GLI-00001-000", image, truth, pred, modality="t2f")],
        bars_title="champion on held-out cases (flip TTA)",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = closed[0]
    bars = fig.axes[1]
    assert [t.get_text() for t in bars.texts] == ["0.91", "0.80", "0.75", "0.70", "0.60", "0.55"]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["WT", "TC", "ET"]
    assert bars.get_title() == "champion on held-out cases (flip TTA)"
    titles = [ax.get_title() for ax in fig.axes[2:]]
    assert titles == [
        "BraTS-GLI-00001-000: ground truth\nFLAIR (t2f), axial slice 9",
        "BraTS-GLI-00001-000: prediction\nFLAIR (t2f), axial slice 9",
    ]
    key = [t.get_text() for t in fig.legends[0].get_texts()]
    assert key == ["NCR (necrosis)", "ED (oedema)", "ET (enhancing)", "RC (cavity)"]
    # The brain (rows 10-29, columns 5-44) fills the panel, with a 4-voxel margin.
    assert brain_box(image[..., 8]) == (slice(6, 34), slice(1, 49))
    assert fig.axes[2].images[0].get_array().shape == (48, 28)
