"""SIGTERM/SIGINT → ``Terminated`` in the main thread (bratslab.shutdown), with the previous
handlers restored afterwards, and a blocking call that a signal can interrupt."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bratslab.shutdown import (
    StopRequest,
    Terminated,
    abandoned_calls,
    call_interruptibly,
    leave,
    stop_on_signals,
)


@pytest.fixture
def sentinel_handlers():
    """Known Python handlers for SIGTERM and SIGINT during the test, restored after it."""
    seen: list[int] = []

    def sentinel(signum, frame):
        seen.append(signum)

    saved = {s: signal.signal(s, sentinel) for s in (signal.SIGTERM, signal.SIGINT)}
    yield sentinel, seen
    for s, h in saved.items():
        signal.signal(s, h)


def _kill_self(sig: int, after_s: float = 0.0) -> None:
    if after_s:
        threading.Timer(after_s, os.kill, (os.getpid(), sig)).start()
    else:
        os.kill(os.getpid(), sig)


@pytest.mark.parametrize(
    ("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_a_signal_raises_terminated_and_the_previous_handler_comes_back(
    sentinel_handlers, sig, code, name
):
    sentinel, seen = sentinel_handlers
    with pytest.raises(Terminated) as err, stop_on_signals() as request:
        _kill_self(sig)
        time.sleep(5)  # interrupted at once
    assert (err.value.signum, err.value.exit_code, err.value.reason) == (sig, code, name)
    assert str(err.value) == f"stopped by {name}"
    assert request.signum == sig and request.requested and request.installed
    assert signal.getsignal(sig) is sentinel
    _kill_self(sig)
    assert seen == [sig]  # the restored handler runs again, not ours


def test_later_signals_are_ignored_while_the_block_cleans_up(sentinel_handlers):
    cleaned = []
    with pytest.raises(Terminated), stop_on_signals():
        try:
            _kill_self(signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            _kill_self(signal.SIGTERM)  # e.g. a second `jobs stop` during the MLflow update
            _kill_self(signal.SIGINT)
            cleaned.append(True)
            raise
    assert cleaned == [True]
    assert sentinel_handlers[1] == []


def test_an_exception_rewritten_after_the_signal_leaves_as_terminated(sentinel_handlers):
    # Ray's blocking get turns a handler's exception into a bare SystemExit/KeyboardInterrupt.
    with pytest.raises(Terminated) as err, stop_on_signals():
        try:
            _kill_self(signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            raise SystemExit(1) from None
    assert err.value.signum == signal.SIGTERM
    assert isinstance(err.value.__cause__, SystemExit)


def test_without_a_signal_exceptions_and_results_pass_through(sentinel_handlers):
    with pytest.raises(KeyError), stop_on_signals() as request:
        raise KeyError("x")
    assert not request.requested
    with stop_on_signals(signals=(signal.SIGTERM,)) as request:
        value = call_interruptibly(lambda: 42)
    assert value == 42
    assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[0]


def test_outside_the_main_thread_nothing_is_installed(sentinel_handlers):
    got: list[StopRequest] = []

    def body():
        with stop_on_signals() as request:
            got.append(request)
            got.append(call_interruptibly(threading.current_thread))

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert got[0].installed is False and not got[0].requested
    assert got[1] is t  # called directly, in the calling thread
    assert signal.getsignal(signal.SIGTERM) is sentinel_handlers[0]


def test_call_interruptibly_reraises_the_calls_exception():
    def boom():
        raise ValueError("from the helper thread")

    with pytest.raises(ValueError, match="from the helper thread"):
        call_interruptibly(boom)


def test_a_signal_interrupts_a_blocking_call_promptly(sentinel_handlers):
    release = threading.Event()
    t0 = time.monotonic()
    try:
        with pytest.raises(Terminated), stop_on_signals():
            _kill_self(signal.SIGTERM, after_s=0.3)
            call_interruptibly(lambda: release.wait(60))  # blocks, like TorchTrainer.fit()
        # Still running: the process must not leave through ray.shutdown or atexit.
        assert [t.name for t in abandoned_calls()] == ["bratslab-blocking"]
    finally:
        release.set()  # let the abandoned helper thread finish
    assert time.monotonic() - t0 < 5
    for t in abandoned_calls():
        t.join(5)
    assert abandoned_calls() == []
    with pytest.raises(SystemExit) as exit_:  # nothing abandoned: an ordinary exit
        leave(143)
    assert exit_.value.code == 143


def test_leave_with_an_abandoned_call_skips_the_interpreters_exit(tmp_path):
    """The abandoned call blocks forever; ``leave`` still ends the process with the code, its
    printed lines and log records flushed, and no atexit hook runs (Ray's calls ray.shutdown)."""
    import subprocess
    import sys
    import textwrap

    marker, log_file = tmp_path / "atexit-ran", tmp_path / "log.txt"
    script = textwrap.dedent(f"""
        import atexit, logging, pathlib, signal, threading, os
        from bratslab.shutdown import Terminated, call_interruptibly, leave, stop_on_signals
        logging.basicConfig(filename={str(log_file)!r}, level=logging.INFO)
        atexit.register(pathlib.Path({str(marker)!r}).touch)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        try:
            with stop_on_signals():
                call_interruptibly(threading.Event().wait)
        except Terminated as stop:
            print("stopped", flush=False)
            logging.info("cleaned up")
            leave(stop.exit_code)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout == "stopped\n"
    assert "cleaned up" in log_file.read_text()
    assert not marker.exists()
