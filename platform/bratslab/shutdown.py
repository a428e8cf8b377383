"""Stopping cleanly on SIGTERM and SIGINT: the signal becomes an exception in the main thread.

``bratslab jobs stop``, Kubernetes and Slurm preemption send SIGTERM; Ctrl-C sends SIGINT.
Python's default SIGTERM action ends the process at once, so ``try``/``except``/``finally``
blocks never run and an MLflow run stays RUNNING. Inside :func:`stop_on_signals` either signal
raises :class:`Terminated` instead; the caller closes what it opened (e.g. marks its MLflow run
KILLED) and lets it propagate; the CLI exits with ``128 + signum`` (143 for SIGTERM, 130 for
SIGINT), as a shell reports a process killed by that signal.

Blocking Ray calls need :func:`call_interruptibly`. While the main thread waits inside
``ray.get`` (where ``TorchTrainer.fit()`` spends its time) Ray's C++ core
checks for signals itself: an exception from a Python handler comes out rewritten as a bare
``KeyboardInterrupt``/``SystemExit(1)``, and any other exception type is held back until the
call returns, then surfaces as a ``SystemError`` (measured with Ray 2.60). In the main thread
``TorchTrainer.fit()`` also replaces the SIGINT handler with its own.
:func:`call_interruptibly` therefore runs the blocking call in a helper thread while the main
thread waits in short, interruptible steps, so the handler's exception surfaces within a
fraction of a second; :func:`stop_on_signals` also turns any other exception that escapes after
a signal into :class:`Terminated`.

Adopting it (as :func:`bratslab.train.trainer.run_training` does)::

    with stop_on_signals():
        try:
            result = call_interruptibly(trainer.fit)
        except Terminated as stop:
            tag_run(STOP_REASON_TAG, stop.reason); end_run("KILLED")
            raise

and in the CLI: ``except Terminated as stop: leave(stop.exit_code)``.

A call abandoned that way is still inside Ray's C++ core worker, so the process must not run
``ray.shutdown()`` or the interpreter's own exit (whose ``atexit`` hook calls it): both free the
core worker under that thread, and the process ends in a segmentation fault instead of 143 (seen
in CI, about one run in thirty). :func:`abandoned_calls` tells :func:`bratslab.cluster.stop_driver`
to leave Ray alone, and :func:`leave` then ends the process with ``os._exit`` after flushing its
streams and log files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_REASON_TAG = "bratslab.stop_reason"  # MLflow tag: which signal stopped the run
POLL_S = 0.2  # how often a waiting main thread returns to Python (and so runs handlers)
_ABANDONED: list[threading.Thread] = []  # helper threads of call_interruptibly left running


class Terminated(BaseException):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """The process was asked to stop by signal ``signum``.

    A ``BaseException`` so that ``except Exception`` blocks let it through, as they do
    ``KeyboardInterrupt``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {self.reason}")

    @property
    def reason(self) -> str:
        """The signal's name, e.g. ``"SIGTERM"``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """``128 + signum``: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


@dataclass
class StopRequest:
    """What :func:`stop_on_signals` yields: the signal received so far, if any."""

    signum: int | None = None
    installed: bool = False  # False outside the main thread: no handlers there

    @property
    def requested(self) -> bool:
        return self.signum is not None


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Inside the block, the first of ``signals`` raises :class:`Terminated` in the main thread.

    Later signals are ignored while the block cleans up (send SIGKILL to force an exit); on
    leaving the block the previous handlers are restored. An exception of another type that
    escapes the block after a signal arrived (a blocking C call rewrote it) is re-raised as
    :class:`Terminated`, chained to the original.

    Outside the main thread (a Tune trial's driver runs in a thread) Python cannot install
    handlers: the block runs unchanged and the yielded request stays empty.
    """
    request = StopRequest()
    if not in_main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:
            return  # already stopping: let the cleanup finish
        request.signum = signum
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    request.installed = True
    try:
        yield request
    except Terminated:
        raise
    except BaseException as e:
        if request.signum is None:
            raise
        raise Terminated(request.signum) from e
    finally:
        for s, old in previous.items():
            # None: the old handler was not installed from Python; the default is closest.
            signal.signal(s, signal.SIG_DFL if old is None else old)


def call_interruptibly(fn: Callable[[], T], *, name: str = "bratslab-blocking") -> T:
    """``fn()``, run so that signal handlers of the main thread can interrupt the wait.

    In the main thread ``fn`` runs in a daemon helper thread while the main thread waits in
    steps of ``POLL_S`` (see the module docstring for why). If the wait is interrupted
    (:class:`Terminated`), ``fn`` is abandoned: its thread keeps running until the process
    exits. Elsewhere ``fn`` is simply called. ``fn``'s exception is re-raised as is.
    """
    if not in_main_thread():
        return fn()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed to the waiting thread, which re-raises it
            outcome["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        while not done.wait(POLL_S):
            pass
    except BaseException:
        if not done.is_set():
            _ABANDONED.append(thread)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def abandoned_calls() -> list[threading.Thread]:
    """The helper threads of interrupted :func:`call_interruptibly` calls that still run."""
    return [t for t in _ABANDONED if t.is_alive()]


def leave(code: int) -> NoReturn:
    """End the command with exit status ``code``.

    Normally this raises ``SystemExit(code)``. With an abandoned blocking call still running
    (see the module docstring) the interpreter's exit is not safe: the standard streams and the
    log handlers are flushed and the process ends at once with ``os._exit(code)``.
    """
    if not abandoned_calls():
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to say there
            stream.flush()
    logging.shutdown()
    os._exit(code)
