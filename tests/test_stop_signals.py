"""StopSignals: a signal inside a deferred stretch lands when the stretch ends, not in its middle."""
import os
import signal

import pytest

from esam.search.tune.stop_signals import SearchStopped, StopSignals


def test_a_signal_inside_a_deferred_stretch_is_raised_at_its_end():
    reached = []
    with StopSignals() as signals:
        with pytest.raises(SearchStopped) as stopped:
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("after the signal")  # the stretch runs to its end
        assert stopped.value.exit_code == 130 and reached == ["after the signal"]


def test_outside_a_deferred_stretch_a_signal_stops_at_once():
    with StopSignals():
        with pytest.raises(SearchStopped):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes: this loop does not finish
                pass
            pytest.fail("the signal did not stop the code")
