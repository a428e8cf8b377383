"""One documented way to name a registered model (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``); the short forms are read as it, with a one-line hint."""

from __future__ import annotations

import logging

import pytest

from bratslab.tracking import model_folder
from bratslab.tracking.model_folder import canonical_ref


@pytest.fixture(autouse=True)
def _fresh_hints(monkeypatch):
    monkeypatch.setattr(model_folder, "_hinted", set())


@pytest.mark.parametrize(
    "given,read_as",
    [
        ("bratslab-sweeps@champion", "models:/bratslab-sweeps@champion"),
        ("bratslab-sweeps/3", "models:/bratslab-sweeps/3"),
        ("my.model_v2@best-1", "models:/my.model_v2@best-1"),
    ],
)
def test_short_forms_are_read_as_the_documented_one_with_one_hint(given, read_as, caplog):
    with caplog.at_level(logging.WARNING, logger="bratslab.tracking.model_folder"):
        assert canonical_ref(given) == read_as
        assert canonical_ref(given) == read_as  # the second time: no second hint
    hints = [r.getMessage() for r in caplog.records]
    assert hints == [f"{given!r} read as {read_as}: write registered models that way"]


@pytest.mark.parametrize(
    "given",
    [
        "models:/bratslab-sweeps@champion",
        "models:/bratslab-sweeps/3",
        "models:/m-0123abcd",
        "runs:/0123456789abcdef0123456789abcdef/model",
        "0123456789abcdef0123456789abcdef",
        "s3://bucket/model",
        "some/folder/model",
        "bratslab-sweeps",  # a plain name only means a model where a command says so
    ],
)
def test_documented_forms_and_other_things_pass_unchanged(given, caplog):
    with caplog.at_level(logging.WARNING, logger="bratslab.tracking.model_folder"):
        assert canonical_ref(given) == given
    assert not caplog.records


def test_a_plain_name_means_its_champion_where_a_command_says_so():
    assert canonical_ref("bratslab-sweeps", bare_name=True) == "models:/bratslab-sweeps@champion"


def test_an_existing_folder_is_a_folder_whatever_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run@best").mkdir()
    (tmp_path / "models" / "3").mkdir(parents=True)
    assert canonical_ref("run@best") == "run@best"
    assert canonical_ref("models/3") == "models/3"
