"""The progress lines (callbacks.Progress): epoch lines on long trials, one clock for the command, and
a time left from the epochs trained, checked against the true time left of a simulated search."""
import re

import pytest

from esam.search.tune.callbacks import Progress

OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTrial:
    """What Progress reads of a Ray trial."""

    def __init__(self, number: int, reuse: bool = False):
        self.trial_id, self.status, self.last_result = f"t{number}", "PENDING", None
        self.config = {"_number": number, "method": "esam", "rho": 0.1}
        if reuse:
            self.config["_reuse"] = {"number": 0}


def simulate(progress, clock, epochs_reached: list[int], epoch_s: float, concurrency: int, full: int):
    """Drive `progress` as Ray's controller does: a callback sees a trial's state before Ray changes it.

    Trial i trains epochs_reached[i] epochs of epoch_s seconds each (fewer than `full`: the scheduler
    stopped it there), `concurrency` at a time. Returns the end time."""
    trials, waiting, running = [], list(range(len(epochs_reached))), {}  # running: trial -> (next result's time, epoch)
    while waiting or running:
        while waiting and len(running) < concurrency:
            trial = FakeTrial(waiting.pop(0))
            trials.append(trial)
            progress.on_trial_start(0, trials, trial)
            trial.status = "RUNNING"
            running[trial] = (clock.now + epoch_s, 1)
        trial, (when, epoch) = min(running.items(), key=lambda kv: (kv[1][0], kv[0].trial_id))
        clock.now = when
        last = epoch == epochs_reached[trials.index(trial)]
        result = {"epoch": epoch, "test_acc": 10.0 + epoch, "speed_vs_sgd": 0.5}
        if last and epoch < full:
            result["done"] = True  # the scheduler's stop: Ray marks the result before the callbacks
        progress.on_trial_result(0, trials, trial, result)
        trial.last_result = result
        if last:
            progress.on_trial_complete(0, trials, trial)
            trial.status = "TERMINATED"
            del running[trial]
        else:
            running[trial] = (when + epoch_s, epoch + 1)
    return clock.now


def seconds(text: str) -> int:
    """duration()'s text back to seconds: 12s, 3m05s, 1h02m."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def recorder(clock):
    lines = []
    return lines, lambda line: lines.append((clock.now, line))


def estimates(lines):
    """(when, estimated seconds left) of each line that has an estimate."""
    return [(when, seconds(m.group(1))) for when, line in lines if (m := re.search(r", ~(\S+) left", line))]


def test_the_time_left_follows_the_epochs_where_a_mean_per_ended_trial_was_off():
    # 6 trials of 10 one-minute epochs, 2 at a time: three waves of 10 minutes
    clock = Clock()
    lines, echo = recorder(clock)
    progress = Progress("esam", 6, OBJECTIVES, echo, full_epochs=10, clock=clock)
    end = simulate(progress, clock, [10] * 6, 60.0, concurrency=2, full=10)
    assert end == 1800
    found = estimates(lines)
    assert len(found) > 20  # from the first epoch on, not only at ended trials
    for when, left in found:
        assert abs(left - (end - when)) <= 0.2 * (end - when) + 1, (when, left)
    first_end = next(when for when, line in lines if "1/6 ended" in line)
    old = first_end / 1 * 5  # the old estimate: elapsed / trials ended x trials left
    assert old / (end - first_end) >= 2  # 3000 s for 1200 s: this case tells the two apart
    assert lines[-1][1].split("|")[0].rstrip().endswith("done")


def test_trials_the_scheduler_stops_early_shorten_the_time_left():
    # each trial stopped at epoch 2 of 10: what is left is 2 epochs a trial, not 10
    clock = Clock()
    lines, echo = recorder(clock)
    progress = Progress("esam", 3, OBJECTIVES, echo, full_epochs=10, clock=clock)
    end = simulate(progress, clock, [2, 2, 2], 60.0, concurrency=1, full=10)
    first_end = next((when, line) for when, line in lines if "1/3 ended" in line)
    assert "stopped early at epoch 2" in first_end[1]
    assert seconds(re.search(r", ~(\S+) left", first_end[1]).group(1)) == end - first_end[0] == 240


def test_long_trials_show_their_epochs_quick_ones_do_not():
    def epoch_lines(epoch_s):
        clock = Clock()
        lines, echo = recorder(clock)
        simulate(Progress("esam", 1, OBJECTIVES, echo, full_epochs=10, clock=clock), clock, [10], epoch_s, 1, 10)
        return [line for _, line in lines if " epoch " in line]

    assert epoch_lines(1.0) == []  # a 10 s trial: its end line only
    assert [re.search(r"epoch (\d+)/", line).group(1) for line in epoch_lines(10.0)] == ["3", "6", "9"]  # every 30 s
    minutes = epoch_lines(60.0)
    assert len(minutes) == 9  # every epoch but the last, which its end line follows at once
    assert minutes[0] == ("[esam] #0 esam rho=0.1 epoch 1/10: test_acc 11, speed_vs_sgd 0.5 "
                          "| 0 of 1 ended, 1 running, 1m00s elapsed, ~9m00s left")


def test_elapsed_counts_from_the_command_start_across_both_phases():
    clock = Clock(1000.0)
    started = clock()
    lines, echo = recorder(clock)
    clock.now += 50  # the command's checks and Ray's start
    references = Progress("references", 1, OBJECTIVES, echo, full_epochs=1, started=started, clock=clock)
    references.setup()
    simulate(references, clock, [1], 100.0, 1, 1)  # ends at 150 s
    search = Progress("esam", 1, OBJECTIVES, echo, full_epochs=1, started=started, clock=clock)
    search.setup()  # a new Ray experiment: the clock goes on
    clock.now += 10
    simulate(search, clock, [1], 40.0, 1, 1)
    assert [re.search(r"(\S+) elapsed", line).group(1) for _, line in lines] == ["2m30s", "3m20s"]


def test_a_reuse_trains_no_epoch_and_times_nothing():
    clock = Clock()
    lines, echo = recorder(clock)
    progress = Progress("esam", 2, OBJECTIVES, echo, full_epochs=10, clock=clock)
    reuse = FakeTrial(1, reuse=True)
    progress.on_trial_start(0, [reuse], reuse)
    reuse.status = "RUNNING"
    clock.now = 45.0  # a slow start: were it timed as an epoch, 10 epochs of it would be left
    result = {"epoch": 10, "test_acc": 50.0, "speed_vs_sgd": 1.0, "reused": 1.0}
    progress.on_trial_result(0, [reuse], reuse, result)
    reuse.last_result = result
    progress.on_trial_complete(0, [reuse], reuse)
    assert len(lines) == 1 and "1/2 ended" in lines[0][1] and " left" not in lines[0][1]


@pytest.mark.parametrize("label", ["esam", "references"])
def test_the_end_line_keeps_its_format(label):
    clock = Clock()
    lines, echo = recorder(clock)
    simulate(Progress(label, 2, OBJECTIVES, echo, full_epochs=2, clock=clock), clock, [2, 2], 5.0, 1, 2)
    assert [line for _, line in lines] == [
        f"[{label}] 1/2 ended (0 failed), 0 running, 10s elapsed, ~10s left | #0 esam rho=0.1: test_acc 12, "
        f"speed_vs_sgd 0.5 | best test_acc 12, best speed_vs_sgd 0.5",
        f"[{label}] 2/2 ended (0 failed), 0 running, 20s elapsed, done | #1 esam rho=0.1: test_acc 12, "
        f"speed_vs_sgd 0.5 | best test_acc 12, best speed_vs_sgd 0.5"]


def test_a_retried_trial_says_where_it_goes_on():
    from types import SimpleNamespace

    from esam.search.tune.callbacks import resumes_from
    assert resumes_from(SimpleNamespace(checkpoint=None, last_result={"epoch": 3})) == "from the start"
    assert resumes_from(SimpleNamespace(checkpoint=object(), last_result={"epoch": 3})) == "from epoch 4"
