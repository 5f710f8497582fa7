import signal
import threading

import pytest

from lightning_green._internal.interrupts import interrupt_deferred


@pytest.fixture
def recorded_sigint():
    got = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    yield got
    signal.signal(signal.SIGINT, before)


def test_a_first_ctrl_c_is_held_until_the_block_ends_and_reaches_the_handler_before(recorded_sigint):
    with pytest.warns(UserWarning, match=r"during a prune: finishing it first"), interrupt_deferred("a prune"):
        signal.raise_signal(signal.SIGINT)
        assert recorded_sigint == []  # held
    assert recorded_sigint == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is not None  # the handler before is back
    signal.raise_signal(signal.SIGINT)
    assert recorded_sigint == [signal.SIGINT, signal.SIGINT]


def test_a_second_ctrl_c_interrupts_at_once_and_the_handler_is_put_back(recorded_sigint):
    reached = []
    with pytest.warns(UserWarning), pytest.raises(KeyboardInterrupt), interrupt_deferred("a prune"):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        reached.append(True)
    assert not reached and recorded_sigint == []  # not delivered again on the way out
    signal.raise_signal(signal.SIGINT)
    assert recorded_sigint == [signal.SIGINT]


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
