"""Job specs: every shipped job validates; bad keys and values fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bratslab.config import ConfigError
from bratslab.jobs.spec import job_from_dict, load_job

JOBS = Path(__file__).resolve().parents[3] / "jobs"


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_validate(path):
    spec = load_job(path)
    assert spec.name
    assert spec.training.epochs >= 1


def test_smoke_job_is_small():
    spec = load_job(JOBS / "smoke.yaml")
    assert spec.scaling.num_workers == 2
    assert spec.training.epochs <= 3
    assert max(spec.training.patch_size) <= 48


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.optimizr.lr=1", "training.optimizr"),
        ("training.optimizer.lr=-1", "training.optimizer.lr"),
        ("training.patch_size=[32,32]", "training.patch_size"),
        ("scaling.num_workers=0", "scaling.num_workers"),
        ("model.arch=vit", "model.arch"),
        ("training.freeze=[decoderz]", "training.freeze"),
        ("training.optimizer.group_lr={nope: 0.1}", "training.optimizer.group_lr"),
    ],
)
def test_invalid_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_job(JOBS / "smoke.yaml", [override])
    assert key in str(err.value)
    assert "smoke.yaml" in str(err.value)


def test_freezing_everything_is_rejected():
    with pytest.raises(ConfigError, match="every parameter group is frozen"):
        load_job(JOBS / "smoke.yaml", ["training.freeze=['*']"])


def test_overrides_apply_and_store_path_resolves_against_home(monkeypatch, tmp_path):
    for store in ("home/stores/a", "abs", "cwd/stores/b"):
        (tmp_path / store).mkdir(parents=True)
        (tmp_path / store / "dataset.json").write_text("{}")
    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    spec = load_job(JOBS / "smoke.yaml", ["training.epochs=7", "data.store=stores/b"])
    assert spec.training.epochs == 7
    assert spec.data.store_path() == tmp_path / "cwd" / "stores" / "b"  # found here
    spec = load_job(JOBS / "smoke.yaml", ["data.store=stores/a"])
    assert spec.data.store_path() == tmp_path / "home" / "stores" / "a"  # not here: the home's
    spec = load_job(JOBS / "smoke.yaml", [f"data.store={tmp_path / 'abs'}"])
    assert spec.data.store_path() == tmp_path / "abs"


def test_resolved_round_trips():
    spec = load_job(JOBS / "finetune_ssa.yaml")
    again = job_from_dict(spec.resolved())
    assert again == spec
    assert again.model.init_from == "models:/bratslab-gli@champion"
    assert "init_from" not in again.model.model_config_only().model_dump()


def test_lesion_wise_selection_needs_lesion_wise_validation():
    from bratslab.config import ConfigError

    spec = load_job(JOBS / "smoke.yaml", ["training.selection_metric=val/lesion_dice_mean"])
    assert spec.training.selection_metric == "val/lesion_dice_mean"
    with pytest.raises(ConfigError, match="needs val_lesionwise"):
        load_job(
            JOBS / "smoke.yaml",
            ["training.selection_metric=val/lesion_dice_mean", "training.val_lesionwise=null"],
        )
    for job in ("train_unet", "train_segresnet", "train_mednext", "finetune_ssa"):
        assert load_job(JOBS / f"{job}.yaml").training.selection_metric == "val/lesion_dice_mean"
