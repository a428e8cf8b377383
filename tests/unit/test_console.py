"""A quiet run command prints bratslab's own lines; the rest goes to its log file."""

from __future__ import annotations

import logging
import os

import pytest

ENV = (
    "MLFLOW_CONFIGURE_LOGGING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "TQDM_DISABLE",
    "RAY_AIR_NEW_OUTPUT", "RAY_DATA_LOGGING_CONFIG", "BRATSLAB_LOG_LEVEL",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
)  # fmt: skip


@pytest.fixture()
def routing(tmp_path, monkeypatch):
    """bratslab.console with its state, the root logger and the environment restored."""
    from bratslab import console

    monkeypatch.setenv("BRATSLAB_HOME", str(tmp_path))
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, dict(vars(console._State)))
    yield console
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in saved[0]:
            h.close()
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    for key in ("quiet", "command", "console", "buffer", "file_handler", "default_log"):
        setattr(console._state, key, saved[2].get(key))
    console._state.dashboard = None
    logging.captureWarnings(False)
    for key in ENV:
        os.environ.pop(key, None)


def test_quiet_command_keeps_library_logs_in_its_file_and_bratslab_warnings_on_stderr(
    routing, tmp_path, capsys
):
    routing.configure("train", verbose=False)
    assert routing.quiet() and os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    logging.getLogger("ray.tune").warning("tensorboard --logdir hint")
    logging.getLogger("bratslab.train").info("an INFO line of bratslab")
    logging.getLogger("bratslab.train").warning("a bratslab warning")
    log_file = routing.attach(tmp_path / "run")  # the records so far are replayed into it
    logging.getLogger("mlflow.store").info("Creating initial MLflow database tables")
    assert routing.attach(tmp_path / "other") == log_file == tmp_path / "run" / "bratslab.log"

    err = capsys.readouterr().err
    assert err == "WARNING: a bratslab warning\n"
    text = log_file.read_text()
    for line in ("tensorboard --logdir hint", "an INFO line", "a bratslab warning", "Creating"):
        assert line in text


def test_worker_lines_go_to_the_file_and_relayed_lines_print_plainly(routing, tmp_path, capsys):
    routing.configure("sweep", verbose=False)
    log_file = routing.attach(tmp_path)
    routing.route_worker_output(
        {
            "pid": 9890,
            "actor_name": "TrainController",
            "is_err": True,
            "lines": [
                "Reporting training result 1: TrainingReport(...)",
                routing.RELAY_MARK + "smoke: epoch 1/2 | loss 0.9",
            ],
        }
    )
    routing.route_worker_output({"pid": "raylet", "is_err": False, "lines": ["worker warning"]})
    routing.route_worker_output({"pid": "autoscaler", "lines": ["======== Autoscaler status"]})

    assert capsys.readouterr().err == "smoke: epoch 1/2 | loss 0.9\n"
    text = log_file.read_text()
    assert "(TrainController pid=9890) Reporting training result 1" in text
    assert "(raylet) worker warning" in text
    assert "smoke: epoch 1/2" in text and "Autoscaler" not in text


@pytest.mark.parametrize("command,env", [("train", "DEBUG"), ("models", None)])
def test_verbose_and_other_commands_log_everything_on_stderr(routing, monkeypatch, command, env):
    if env:
        monkeypatch.setenv("BRATSLAB_LOG_LEVEL", env)
    routing.configure(command, verbose=False)
    assert not routing.quiet()
    assert routing.attach(routing._logs_folder()) is None
    assert logging.getLogger().level == (logging.DEBUG if env else logging.INFO)


def test_commands_without_a_run_folder_log_under_bratslab_home(routing, tmp_path):
    routing.configure("predict", verbose=False)
    path = routing.log_file()
    assert path.parent == tmp_path / "logs" and path.name.startswith("predict-")
    assert not path.parent.exists()  # nothing created before anything is logged
    after = _Collect()  # a handler after the buffer (pytest's capture, for one)
    logging.getLogger().addHandler(after)
    logging.getLogger("ray").warning("a Ray warning")
    # the first record opens the file from inside the buffer's emit(): it is written there
    # once, and the handlers after the buffer still receive it
    assert path.read_text().count("a Ray warning") == 1 and routing.log_file() == path
    assert [r.getMessage() for r in after.records] == ["a Ray warning"]


def test_a_buffer_left_by_an_earlier_command_does_not_swallow_the_first_record(routing, tmp_path):
    stale = routing._Buffer()  # what an earlier command of this process (tests) left on root
    logging.getLogger().addHandler(stale)
    routing.configure("predict", verbose=False)
    assert stale not in logging.getLogger().handlers  # configure() removes it
    logging.getLogger().handlers.insert(0, stale)  # and if one still sits first, it stays inert
    logging.getLogger("ray").warning("first record")
    assert routing.log_file().read_text().count("first record") == 1
    assert not stale.records


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_ray_hands_worker_output_to_the_router(routing):
    """The contract of bratslab.compat.ray_logs with Ray 2.60's driver-side printing: both
    the dispatcher (worker lines) and print_to_stdstream (published errors) reach the handler."""
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from bratslab.compat.ray_logs import BRATSLAB_HANDLER, route_worker_output

    seen = []
    original, handlers = worker.print_to_stdstream, list(dispatcher.handlers)
    try:
        assert route_worker_output(seen.append)
        dispatcher.emit({"pid": 1, "lines": ["from a worker"]})
        worker.print_to_stdstream({"pid": "raylet", "lines": ["an error"]}, ignore_prefix=False)
        assert [d["lines"] for d in seen] == [["from a worker"], ["an error"]]
        assert [name for name, _ in dispatcher.handlers].count(BRATSLAB_HANDLER) == 1
    finally:
        worker.print_to_stdstream = original
        dispatcher.handlers = handlers


def test_the_lines_that_say_what_a_command_does_stay_on_the_console(routing, capsys):
    routing.configure("predict", verbose=False)
    logging.getLogger("bratslab.postprocess.resolve").info("post-processing: min 10 (from m)")
    logging.getLogger("bratslab.inference.predict").info("an internal detail")
    assert capsys.readouterr().err == "post-processing: min 10 (from m)\n"


def test_a_sweep_keeps_the_post_processing_choice_of_its_candidates_in_the_file(routing, capsys):
    routing.configure("sweep", verbose=False)
    logging.getLogger("bratslab.postprocess.resolve").info("post-processing: none (...)")
    assert capsys.readouterr().err == ""
