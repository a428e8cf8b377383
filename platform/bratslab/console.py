"""What a bratslab command prints, and where everything else goes.

The run commands (``train``, ``sweep``, ``demo``, ``predict``, ``evaluate-model``,
``postprocess``) print bratslab's own lines only: a header (what runs where, the name and how
to resume), one line per epoch, progress bars for long steps, and a summary. Everything else
goes to a log file:

- bratslab's own logging at INFO (its WARNING and ERROR records also reach the console),
- the logging of Ray, MLflow, Optuna, SQLAlchemy and Python ``warnings`` in the driver,
- what native code in the driver writes to descriptor 2 (Ray's C++ core worker's errors,
  :mod:`bratslab.native_stderr`),
- the stdout/stderr of every Ray worker and actor (Train workers and controllers, Tune trials,
  Ray's own helper actors) and the raylet's messages, which Ray would otherwise print on the
  driver's console with an ``(Actor pid=…)`` prefix (:mod:`bratslab.compat.ray_logs`).

A few INFO lines say what a command does (which post-processing ``predict`` applies, each pass
of ``postprocess fit``): those reach the console too (:data:`CONSOLE_INFO_LOGGERS`).

The log file is ``bratslab.log`` in the run's folder (``$BRATSLAB_HOME/ray_results/<name>/``
for ``train``, the sweep's or the demo's folder), or ``$BRATSLAB_HOME/logs/<command>-<time>.log``
for commands without one; the train and sweep commands also log it to their MLflow run.

``-v/--verbose`` or ``BRATSLAB_LOG_LEVEL=DEBUG`` turns all of this off: every log record at
DEBUG on stderr and every worker line as Ray prints it. Other commands log at INFO on stderr.

A line that a Ray actor wants on the driver's console (the Train controller's epoch line,
:mod:`bratslab.train.progress`) is printed with :func:`relay`: the driver then prints it
without Ray's prefix and colours.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout, suppress
from pathlib import Path
from typing import Any

from bratslab.compat.mlflow_output import silence_eprint, silence_run_urls
from bratslab.compat.ray_logs import route_worker_output as install
from bratslab.native_stderr import divert, restore
from bratslab.settings import get_settings

LOG_FILE = "bratslab.log"
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
RELAY_MARK = "[bratslab-console] "  # on a worker's stderr: print this line on the console
QUIET_COMMANDS = frozenset(
    {"train", "sweep", "demo", "recipe", "predict", "evaluate-model", "postprocess", "data"}
)
# Commands that have no run folder of their own: their log file is in $BRATSLAB_HOME/logs.
LOGS_FOLDER_COMMANDS = frozenset({"predict", "evaluate-model", "postprocess", "data"})
# Libraries that install their own stderr handler (and stop propagation) on import or init.
LIBRARY_LOGGERS = ("ray", "mlflow", "optuna", "alembic", "sqlalchemy.engine", "huey")
# bratslab loggers whose INFO lines a quiet command still prints: which post-processing
# predict and evaluate-model apply (and why), and each pass of the post-processing fit's search.
CONSOLE_INFO_LOGGERS = {
    "predict": frozenset({"bratslab.postprocess.resolve"}),
    "evaluate-model": frozenset({"bratslab.postprocess.resolve"}),
    "postprocess": frozenset({"bratslab.postprocess.fit"}),
}
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BUFFER_CAPACITY = 20_000  # records kept until the log file is known

log = logging.getLogger(__name__)
worker_log = logging.getLogger("ray_workers")  # not under bratslab: file only


def _on_console(record: logging.LogRecord) -> bool:
    """bratslab's warnings and errors, and the few INFO lines that say what a command does."""
    if not record.name.startswith("bratslab"):
        return False
    shown = CONSOLE_INFO_LOGGERS.get(_state.command, frozenset())
    return record.levelno >= logging.WARNING or record.name in shown


class _ConsoleFormatter(logging.Formatter):
    """``WARNING: text`` for warnings and errors, the bare text for INFO lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


class _Buffer(logging.Handler):
    """Holds records until the command knows its log file (:func:`attach`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self is not _state.buffer:  # left on the root logger by an earlier configure()
            return
        if len(self.records) < BUFFER_CAPACITY:
            self.records.append(record)
        if _state.default_log is not None:  # the first record opens the logs-folder file
            with suppress(OSError):
                attach(_state.default_log.parent, _state.default_log.name)


class _State:
    quiet = False
    command = ""
    console: logging.Handler | None = None
    buffer: _Buffer | None = None
    file_handler: logging.FileHandler | None = None
    default_log: Path | None = None  # where a command without a run folder logs, once it does
    dashboard: str | None = None  # the Ray dashboard of the connected cluster, if any


_state = _State()


def quiet() -> bool:
    """True when this process routes the libraries' output to the log file."""
    return _state.quiet


def log_file() -> Path | None:
    """The log file of this command, once known."""
    fh = _state.file_handler
    return Path(fh.baseFilename) if fh is not None else _state.default_log


def configure(command: str | None, verbose: bool) -> None:
    """Set up logging for one CLI command (called by the root callback).

    Args:
        command: the subcommand name (``train``, ``postprocess``...), None for none.
        verbose: ``-v``; ``BRATSLAB_LOG_LEVEL=DEBUG`` means the same.
    """
    verbose = verbose or os.environ.get("BRATSLAB_LOG_LEVEL", "").upper() == "DEBUG"
    _undo()  # a second command in one process (tests) starts from the defaults
    root = logging.getLogger()
    for h in list(root.handlers):  # a handler left writing to a stream since closed (tests)
        if getattr(getattr(h, "stream", None), "closed", False):
            root.removeHandler(h)
    if verbose or command not in QUIET_COMMANDS:
        level = logging.DEBUG if verbose else logging.INFO
        logging.basicConfig(level=level, format=FILE_FORMAT)
        logging.getLogger().setLevel(level)  # also where a handler already existed
        return
    _state.quiet, _state.command = True, command
    # Inherited by Ray's workers too: MLflow's loggers propagate (to this process's file, or
    # to the worker's stderr, which the driver routes there) and no tqdm bars are drawn.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    silence_run_urls()  # MLflow's "🏃 View run ... at" lines: the summary names the run
    # Ray Tune's console reporter prints its experiment table and a TensorBoard hint even at
    # verbose=0; the legacy reporter prints nothing at verbose=0 (bratslab.tune.tuner).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray Data configures its own console handler when imported (its progress every 10 s):
    # this config keeps its session file and lets the records propagate to ours instead.
    if RAY_DATA_LOGGING.is_file():  # package data; a build without it keeps Ray's default
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
    for h in list(root.handlers):  # a console handler of basicConfig's; others (pytest's) stay
        if getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
            root.removeHandler(h)
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    _state.console = console
    console.addFilter(_on_console)
    console.setFormatter(_ConsoleFormatter())
    _state.buffer = _Buffer()
    root.addHandler(console)
    root.addHandler(_state.buffer)
    logging.captureWarnings(True)  # UserWarnings of the libraries: into the file
    adopt_library_loggers()
    if command in LOGS_FOLDER_COMMANDS:  # created with its first record, not on a usage error
        _state.default_log = _logs_folder() / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    else:
        atexit.register(_attach_fallback)


def _undo() -> None:
    """Remove what an earlier :func:`configure` of this process installed."""
    restore()
    root = logging.getLogger()
    for h in (_state.console, _state.buffer, _state.file_handler):
        if h is not None:
            root.removeHandler(h)
    for h in [h for h in root.handlers if isinstance(h, _Buffer)]:  # one that outlived its state
        root.removeHandler(h)
    if _state.file_handler is not None:
        _state.file_handler.close()
    if _state.quiet:
        logging.captureWarnings(False)
    _state.quiet, _state.console, _state.buffer, _state.file_handler = False, None, None, None
    _state.default_log = None


def adopt_library_loggers() -> None:
    """Route the libraries' own handlers into ours (call again after importing one of them:
    Ray and Optuna install a stderr handler when imported, Ray again in ``ray.init``)."""
    if not _state.quiet:
        return

    silence_eprint()
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def attach(folder: Path, name: str = LOG_FILE) -> Path | None:
    """Write this command's log to ``folder/name`` from now on, starting with every record
    held so far; the first call wins (a cross-validation's folds share their parent's file).
    Returns the file, or None when the command does not route its logs (``--verbose``)."""
    if not _state.quiet:
        return None
    if _state.file_handler is not None:
        return log_file()
    _state.default_log = None
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / name, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    buffer, _state.buffer = _state.buffer, None
    for record in buffer.records if buffer is not None else ():
        handler.handle(record)
    # A new list, not removeHandler/addHandler: attach() may run inside the buffer's emit(),
    # while logging iterates root.handlers for that record; mutating that list in place would
    # skip the handler after the buffer and hand the record to the file a second time.
    root.handlers = [h for h in root.handlers if h is not buffer] + [handler]
    _state.file_handler = handler
    return log_file()


def _logs_folder() -> Path:
    return get_settings().home / "logs"


def _attach_fallback() -> None:
    """At exit, a command that stopped before its run folder keeps a log that holds a warning
    in the logs folder."""
    records = _state.buffer.records if _state.quiet and _state.buffer else []
    # Only a log with a warning in it: a usage error must not create folders.
    if _state.file_handler is None and any(r.levelno >= logging.WARNING for r in records):
        with suppress(OSError):
            attach(_logs_folder(), f"{_state.command}-{time.strftime('%Y%m%d-%H%M%S')}.log")


def ray_where() -> str:
    """Where Ray runs, for a command's header: ``local Ray (6 CPUs)`` or the cluster address,
    with its dashboard URL when there is one."""
    import ray  # Ray: the connected cluster's address and size

    if not ray.is_initialized():
        return "Ray not started"
    cpus = int(ray.cluster_resources().get("CPU", 0))
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    where = f"Ray: {nodes} node(s), {cpus} CPUs"
    if _state.dashboard:
        where += f", dashboard {_state.dashboard}"
    return where


def say(text: str) -> None:
    """One line of the command's own output: on stderr, and in the log file."""
    if _state.quiet:
        print(text, file=sys.stderr, flush=True)
        log.info("%s", text)
    else:
        log.info("%s", text)


@contextmanager
def step(text: str) -> Iterator[None]:
    """A step that takes a while (a TTA re-evaluation, a post-processing fit): ``text ...`` as
    it starts, ``text: 42 s`` in the log file when it ends. (No spinner: the step may show a
    progress bar of its own, and rich allows one live display at a time.)"""
    t0 = time.monotonic()
    say(f"{text} ...")
    yield
    log.info("%s: %.0f s", text, time.monotonic() - t0)


class _LogWriter(io.TextIOBase):
    """A text stream whose lines become INFO records of ``logger`` (file only)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.pending = logger, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info("%s", line)
        return len(text)


@contextmanager
def captured() -> Iterator[None]:
    """Library calls that print straight to stdout/stderr (MLflow's "Created version ..." when
    a model is registered): their lines go to the log file in a quiet command."""
    if not _state.quiet:
        yield
        return
    writer = _LogWriter(logging.getLogger("printed"))
    with redirect_stdout(writer), redirect_stderr(writer):
        yield


def relay(line: str) -> None:
    """From a Ray actor: print ``line`` on the driver's console, without Ray's prefix (the
    driver's router strips the mark); printed as is where nothing routes the output."""
    print(RELAY_MARK + line, file=sys.stderr, flush=True)


def route_worker_output(data: dict[str, Any]) -> None:
    """The driver's handler of a batch of worker output (see :mod:`bratslab.compat.ray_logs`):
    relayed lines on the console, every line in the log file."""
    who = data.get("actor_name") or data.get("task_name") or ""
    pid = data.get("pid", "?")
    prefix = f"({who} pid={pid})" if pid not in ("raylet", "autoscaler") else f"({pid})"
    if pid == "autoscaler":  # periodic cluster-status dumps (``ray status`` shows them)
        return
    for line in data.get("lines") or ():
        if RELAY_MARK in line:
            text = line.split(RELAY_MARK, 1)[1]
            print(text, file=sys.stderr, flush=True)
            log.info("%s", text)
        else:
            worker_log.info("%s %s", prefix, line)


def route_ray_output(context: Any = None) -> None:
    """After ``ray.init`` (``context`` is what it returned): in a quiet command, the driver's
    Ray logging and every worker line into the log file (relayed lines on the console)."""
    url = getattr(context, "dashboard_url", None)
    _state.dashboard = f"http://{url}" if url and "://" not in url else url
    if not _state.quiet:
        return

    adopt_library_loggers()
    if not install(route_worker_output):
        log.debug("Ray's worker-output hooks differ from 2.60: workers print as Ray does")
    # Ray's C++ core worker prints its errors on descriptor 2 (bratslab.native_stderr).
    path = log_file()
    if path is not None and divert(path) and _state.console is not None:
        _state.console.setStream(sys.stderr)
