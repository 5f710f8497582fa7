import logging
import signal
import threading
import warnings

import pytest

from lightning_green._internal.interrupts import interrupt_deferred


@pytest.fixture
def recorded_sigint():
    got = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    yield got
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_is_held_until_the_block_ends_and_reaches_the_handler_before_once(recorded_sigint, caplog):
    with caplog.at_level(logging.WARNING), interrupt_deferred("a prune"):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a second press is held too: the block must finish whole
        assert recorded_sigint == []
    assert recorded_sigint == [signal.SIGINT]
    assert [r.getMessage() for r in caplog.records if "Interrupted during a prune" in r.getMessage()] != []
    signal.raise_signal(signal.SIGINT)  # the handler before is back
    assert recorded_sigint == [signal.SIGINT, signal.SIGINT]


def test_a_third_ctrl_c_stops_at_once_and_every_held_one_says_how(recorded_sigint, caplog):
    reached = []
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt), interrupt_deferred("a prune"):
        for _ in range(3):
            signal.raise_signal(signal.SIGINT)
        reached.append(True)
    notices = [r.getMessage() for r in caplog.records if "Interrupted during a prune" in r.getMessage()]
    assert not reached and len(notices) == 2
    assert "Press Ctrl-C 2 more time(s)" in notices[0] and "Press Ctrl-C 1 more time(s)" in notices[1]
    assert recorded_sigint == []  # not delivered again on the way out
    signal.raise_signal(signal.SIGINT)
    assert recorded_sigint == [signal.SIGINT]


def test_warnings_as_errors_do_not_break_the_block(recorded_sigint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = []
        with interrupt_deferred("a prune"):
            signal.raise_signal(signal.SIGINT)
            done.append(True)
    assert done == [True] and recorded_sigint == [signal.SIGINT]


def test_a_block_that_raises_ends_with_its_own_exception(recorded_sigint):
    with pytest.raises(RuntimeError, match="boom"), interrupt_deferred("a prune"):
        signal.raise_signal(signal.SIGINT)
        raise RuntimeError("boom")
    assert recorded_sigint == []
    signal.raise_signal(signal.SIGINT)
    assert recorded_sigint == [signal.SIGINT]  # the handler before is back


def test_no_signal_leaves_everything_as_it_was(recorded_sigint):
    before = signal.getsignal(signal.SIGINT)
    with interrupt_deferred("a prune"):
        pass
    assert signal.getsignal(signal.SIGINT) is before and recorded_sigint == []


def test_outside_the_main_thread_the_block_just_runs():
    out = []

    def work():
        with interrupt_deferred("a prune"):
            out.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out == [before]
