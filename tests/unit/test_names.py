"""Names that become folder names: one rule (``bratslab.names.check_name``)."""

from __future__ import annotations

import pytest

from bratslab.config import ConfigError
from bratslab.names import NAME_MAX, check_name


@pytest.mark.parametrize("value", ["smoke", "it-smoke", "trial_00001", "run.2", "A", "9lives"])
def test_plain_names_pass_unchanged(value):
    assert check_name(value, "--name") == value


@pytest.mark.parametrize(
    "value",
    [
        "../../x",  # a separator and a parent step: outside the root
        "/abs",  # absolute: anywhere on the machine
        "a/b",
        "a\\b",
        ".",
        "..",
        ".hidden",  # must start with a letter or digit
        "-flag",  # would read as an option to tools given the folder
        "",
        "name\n",  # "$" alone would accept a trailing newline
        "sp ace",
        "x" * (NAME_MAX + 1),
    ],
)
def test_names_that_are_not_one_safe_folder_are_refused_naming_value_and_rule(value):
    with pytest.raises(ConfigError) as err:
        check_name(value, "--name")
    message = str(err.value)
    assert message.startswith(f"--name {value!r}: not a valid name")
    assert "letters, digits" in message and "starting with a letter or digit" in message


def test_a_name_of_the_maximum_length_passes():
    assert check_name("x" * NAME_MAX) == "x" * NAME_MAX


def test_the_rule_is_the_job_spec_name_rule():
    from bratslab.jobs.spec import JobSpec
    from bratslab.names import NAME_PATTERN

    assert JobSpec.model_fields["name"].metadata[0].pattern == NAME_PATTERN
