"""--challenge and --device take only what the code can use; anything else is exit 2 before
any model or folder is touched, naming the allowed values."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bratslab.app.cli.choices import CHALLENGES as CHALLENGE_CHOICES
from bratslab.app.cli.choices import check_challenge
from bratslab.app.main import app
from bratslab.evaluate.lesionwise import CHALLENGES

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
MISSING = "/nonexistent/model"  # never reached: the option is checked first


def test_the_challenge_choices_are_the_lesionwise_parameter_sets():
    assert sorted(CHALLENGE_CHOICES) == sorted(CHALLENGES)


@pytest.mark.parametrize("given", ["gli", "GLI", "BraTS-GLI", "brats-gli"])
def test_a_challenge_is_read_as_the_scoring_code_reads_it(given):
    assert check_challenge(given) == "gli"


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--pred", "p", "--ref", "r", "--challenge", "brats"],
        ["evaluate-model", "--model", MISSING, "--store", "s", "--challenge", "brats"],
        ["postprocess", "fit", "--model", MISSING, "--store", "s", "--challenge", "brats"],
    ],
    ids=lambda a: a[0] if a[0] != "postprocess" else "postprocess fit",
)
def test_an_unknown_challenge_exits_2_listing_the_known_ones(argv, tmp_path):
    r = CliRunner().invoke(app, argv, env=ENV)
    assert r.exit_code == 2, r.output
    assert "--challenge" in r.output and "'gli'" in r.output and "'met'" in r.output


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CUDA", ""])
@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--model", MISSING, "-i", "raw", "-o", "pred"],
        ["models", "compare-ensemble", "NAME/1", "--store", "s"],
    ],
    ids=lambda a: a[0],
)
def test_an_unknown_device_exits_2_naming_the_forms(argv, device):
    r = CliRunner().invoke(app, [*argv, "--device", device], env=ENV)
    assert r.exit_code == 2, r.output
    assert "--device" in r.output and "cuda:N" in r.output


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_the_device_forms_pass_the_check(device):
    from bratslab.app.cli.choices import check_device

    assert check_device(device) == device


def test_help_lists_the_challenges():
    out = CliRunner().invoke(app, ["evaluate", "--help"], env=ENV).output
    assert "gli|ssa|ped|men|met" in out.replace(" ", "")
