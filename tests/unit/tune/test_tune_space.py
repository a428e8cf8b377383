"""Search-space files: parsing, validation against the job spec, conditional sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from bratslab.config import ConfigError, load_yaml
from bratslab.jobs.spec import JobSpec, load_job
from bratslab.tune.config import SweepConfig
from bratslab.tune.space import SearchSpace, load_space, set_dotted

ROOT = Path(__file__).resolve().parents[3]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
BASE_JOB = {
    "smoke.yaml": "jobs/sweep_smoke.yaml",
    "demo.yaml": "jobs/demo.yaml",
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_shipped_spaces_exist():
    names = {p.name for p in SPACES}
    expected = {"mednext.yaml", "segresnet.yaml", "unet.yaml", "architectures.yaml", "smoke.yaml"}
    assert expected <= names


@pytest.mark.parametrize("space_file", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_fit_the_job_spec(space_file):
    base = load_yaml(ROOT / BASE_JOB.get(space_file.name, "jobs/sweep_mednext.yaml"))
    space = load_space(space_file)
    space.check_against(JobSpec, base, source="job")  # raises naming the parameter otherwise
    # and sampled trials produce valid jobs too
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(6):
        trial = study.ask()
        space.suggest(trial)
        JobSpec.model_validate(space.apply(base, space.decode(trial.params)))
        study.tell(trial, 0.5)


def test_shipped_sweep_jobs_load():
    for job in ("jobs/sweep_smoke.yaml", "jobs/sweep_mednext.yaml"):
        spec = load_job(ROOT / job)
        assert isinstance(spec.sweep, SweepConfig)
        assert (ROOT / spec.sweep.space).is_file()
    smoke = load_job(ROOT / "jobs/sweep_smoke.yaml").sweep
    assert 3 <= smoke.num_trials <= 4 and smoke.max_concurrent == 2


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ({"type": "gaussian", "low": 0, "high": 1}, "unknown type 'gaussian'"),
        ({"type": "uniform", "low": 1.0, "high": 0.5}, r"high \(0.5\) must be greater than low"),
        ({"type": "loguniform", "low": 0.0, "high": 0.1}, "low: Input should be greater than 0"),
        ({"type": "choice", "values": []}, "values: List should have at least 1 item"),
        ({"type": "choice", "values": [3, 3]}, "values must be distinct"),
        ({"type": "int", "low": 1, "high": 4, "lows": 2}, "lows: unknown key"),
        ({"type": "int", "low": 0, "high": 4, "log": True}, "log sampling needs low >= 1"),
        ([1, 2, 3], "expected a mapping with `type`"),
    ],
)
def test_malformed_parameter_is_named(tmp_path, param, message):
    path = _write(tmp_path, {"parameters": {"training.optimizer.lr": param}})
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path)
    assert "parameter 'training.optimizer.lr'" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({"model.arch": "mednext"}, "condition on 'model.arch': no such parameter"),
        ({"training.optimizer.lr": 0.1}, "may only refer to choice parameters"),
        ({"model.unet.res_block": "maybe"}, "'maybe' is not one of"),
    ],
)
def test_bad_conditions_are_named(tmp_path, when, message):
    params = {
        "training.optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "model.unet.res_block": {"type": "choice", "values": [True, False]},
        "model.mednext.kernel_size": {"type": "choice", "values": [3, 5], "when": when},
    }
    with pytest.raises(ConfigError, match=message) as err:
        load_space(_write(tmp_path, {"parameters": params}))
    assert "parameter 'model.mednext.kernel_size'" in str(err.value)


def test_condition_must_come_after_its_parameter(tmp_path):
    params = {
        "model.mednext.kernel_size": {"type": "choice", "values": [3], "when": {"model.arch": "x"}},
        "model.arch": {"type": "choice", "values": ["x"]},
    }
    with pytest.raises(ConfigError, match="must be declared before"):
        load_space(_write(tmp_path, {"parameters": params}))


def test_unknown_key_and_bad_value_fail_against_job_naming_parameter(tmp_path):
    base = load_yaml(ROOT / "jobs/sweep_smoke.yaml")
    typo = SearchSpace({"training.optimizer.lrr": {"type": "uniform", "low": 0.1, "high": 0.2}}, {})
    with pytest.raises(ConfigError, match=r"(?s)parameter 'training.optimizer.lrr'.*unknown key"):
        typo.check_against(JobSpec, base)
    bad = SearchSpace({"model.mednext.kernel_size": {"type": "choice", "values": [3, 4]}}, {})
    with pytest.raises(ConfigError, match=r"parameter 'model.mednext.kernel_size' = 4"):
        bad.check_against(JobSpec, base)
    into_value = SearchSpace({"training.epochs.x": {"type": "int", "low": 1, "high": 2}}, {})
    with pytest.raises(ConfigError, match="training.epochs is a value, not a section"):
        into_value.check_against(JobSpec, base)
    fixed = SearchSpace(
        {"training.epochs": {"type": "int", "low": 1, "high": 2}}, {"training.nope": 1}
    )
    with pytest.raises(ConfigError, match="`fixed` values do not fit"):
        fixed.check_against(JobSpec, base)


def test_top_level_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key 'parameter'"):
        load_space(_write(tmp_path, {"parameter": {}}))
    with pytest.raises(ConfigError, match="non-empty mapping"):
        load_space(_write(tmp_path, {"parameters": {}}))


def test_conditional_parameters_follow_their_branch():
    space = load_space(ROOT / "search_spaces/architectures.yaml")
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(
            seed=0, n_startup_trials=5, multivariate=True, group=True
        )
    )
    seen = set()
    for i in range(20):
        trial = study.ask()
        space.suggest(trial)
        params = space.decode(trial.params)
        arch = params["model.arch"]
        seen.add(arch)
        assert ("model.mednext.kernel_size" in params) == (arch == "mednext")
        assert ("model.unet.filters" in params) == (arch == "unet")
        assert ("model.segresnet.init_filters" in params) == (arch == "segresnet")
        # list-valued choices come back as lists, not their Optuna labels
        assert isinstance(params["training.patch_size"], list)
        study.tell(trial, float(i % 3))
    assert seen == {"unet", "segresnet", "mednext"}


def test_decode_rejects_parameters_not_in_space():
    space = load_space(ROOT / "search_spaces/smoke.yaml")
    with pytest.raises(ConfigError, match="'model.arch' is not in the space"):
        space.decode({"model.arch": "unet"})


def test_set_dotted_creates_sections_and_keeps_types():
    data: dict = {"training": {"optimizer": {}}}
    set_dotted(data, "training.optimizer.group_lr.stem", 1e-5)
    assert data["training"]["optimizer"]["group_lr"] == {"stem": 1e-5}


def test_sweep_config_validation():
    with pytest.raises(ValueError, match="grace_period"):
        SweepConfig(space="x", scheduler={"grace_period": 5, "max_t": 2})
    with pytest.raises(ValueError, match="to_kernel"):
        SweepConfig(space="x", upkern={"from_kernel": 5, "to_kernel": 4})
    with pytest.raises(ValueError):
        SweepConfig(space="x", search={"algorithm": "grid"})
    cfg = SweepConfig(space="x")
    assert cfg.scheduler.kind == "asha" and cfg.search.algorithm == "tpe"
    assert cfg.selection_metric == "tta/dice_mean" and cfg.alias == "champion"


def test_initial_points_run_first_once_even_after_resume(tmp_path):
    """jobs/demo.yaml's one-point-per-architecture start: enqueued once in the persisted study."""
    from bratslab.tune.search import make_searcher
    from bratslab.tune.sweep_paths import SweepPaths

    spec = load_job(ROOT / "jobs/demo.yaml")
    space = load_space(ROOT / spec.sweep.space)
    paths = SweepPaths(tmp_path)
    for _ in range(2):  # a resumed sweep builds its searcher again over the same study
        make_searcher(spec.sweep, space, paths, "s")
    study = optuna.load_study(study_name="s", storage=paths.optuna_url)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    queued = [t.system_attrs["fixed_params"]["model.arch"] for t in waiting]
    assert queued == ["unet", "segresnet", "mednext"]
    with pytest.raises(ConfigError, match="unknown parameter.*model.archh"):
        space.encode_point({"model.archh": "unet"})
