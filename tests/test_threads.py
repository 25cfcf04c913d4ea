"""The decode loop's thread count adapts to a busy machine (minilm.generate.ThreadTuner)."""
import os

import numpy as np
import pytest

import minilm
from minilm import generate
from minilm.testing import tiny_checkpoint


class FakeBackend:
    """Two threads are fast on an idle machine and slow while another process holds a core."""

    def __init__(self):
        self.count, self.busy, self.clock, self.history = 2, False, 0.0, []
        self.others_at_start = 0                  # what other_runnable_tasks() sees when a call begins

    def threads(self, count=None):
        if count is not None:
            self.count = count
        return self.count

    def step(self):
        self.history.append(self.count)
        self.clock += {(False, 2): 1.0, (False, 1): 1.7, (True, 2): 8.0, (True, 1): 2.0}[(self.busy, self.count)]


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(generate.time, "perf_counter", lambda: backend.clock)
    monkeypatch.setattr(generate, "other_runnable_tasks", lambda: backend.others_at_start)
    return backend


def run(tuner, backend, steps):
    for _ in range(steps):
        with tuner:
            backend.step()


def test_idle_machine_keeps_all_threads_and_probes_rarely(fake):
    tuner = generate.ThreadTuner(fake)
    run(tuner, fake, 200)
    assert fake.history[-1] == 2 and fake.history.count(1) <= 10          # probes back off to every 64 steps
    assert sum(1.0 if n == 2 else 1.7 for n in fake.history) / 200 < 1.05  # < 5% slower than always-2


def test_busy_machine_switches_to_one_thread_and_back(fake):
    tuner = generate.ThreadTuner(fake)
    run(tuner, fake, 20)
    fake.busy = True
    run(tuner, fake, 200)
    busy_cost = sum(8.0 if n == 2 else 2.0 for n in fake.history[-180:]) / 180
    assert fake.history[-1] == 1 and busy_cost < 2.0 / 0.8                 # >= 0.8x the single-thread speed
    fake.busy = False
    run(tuner, fake, 200)
    assert fake.history[-1] == 2                                           # the machine is quiet again


def test_negative_control_without_the_tuner_a_busy_machine_collapses(fake):
    fake.busy = True
    tuner = generate.ThreadTuner(fake, threads=2)                          # fixed: no adapting
    run(tuner, fake, 50)
    assert set(fake.history) == {2} and 2.0 / 8.0 < 0.8


def test_what_one_call_learned_holds_at_the_start_of_the_next(fake):
    from types import SimpleNamespace
    model = SimpleNamespace(backend=fake)
    fake.busy = True
    run(generate.model_tuner(model, None), fake, 30)                    # one generate call's decode steps
    generate.model_tuner(model, None).restore()                         # its end: all threads for prefill
    assert fake.count == 2
    fake.history.clear()
    run(generate.model_tuner(model, None), fake, 10)                    # the next call
    assert fake.history[:2] == [1, 1] and fake.history.count(2) <= 1  # starts where the last one ended
    generate.model_tuner(model, None).restore()
    fake.history.clear()
    run(generate.ThreadTuner(fake), fake, 10)                            # negative control: a fresh tuner
    assert fake.history[0] == 2                                          # starts from all threads again


def test_a_busy_machine_at_the_start_gets_one_thread_from_the_first_step(fake):
    fake.busy, fake.others_at_start = True, 1
    run(generate.ThreadTuner(fake), fake, 32)                           # a 32-token reply
    assert fake.history[:8] == [1] * 8
    assert sum(8.0 if n == 2 else 2.0 for n in fake.history) / 32 < 2.0 / 0.8    # >= 0.8x one thread
    fake.history.clear()
    fake.threads(2)                                                     # restore(), as generate does
    fake.others_at_start = 0                                            # negative control: nothing seen
    run(generate.ThreadTuner(fake), fake, 1)
    assert fake.history == [2]


def test_the_first_slow_step_switches_at_once(fake):
    tuner = generate.ThreadTuner(fake)
    run(tuner, fake, 40)
    fake.busy = True                                                    # another process takes a core
    run(tuner, fake, 3)
    assert fake.history[-3:] == [2, 1, 1]                               # one slow step, then one thread


def test_short_steps_need_two_slow_steps_in_a_row(fake, monkeypatch):
    """A 20 ms step (SmolLM2) doubles now and then on an idle machine: one such step is not a probe."""
    monkeypatch.setattr(generate.ThreadTuner, "SLOW_STEP_S", 10.0)       # the fake's steps count as short
    tuner = generate.ThreadTuner(fake)
    run(tuner, fake, 40)
    fake.history.clear()
    for jitter in (False, True, False, False):                          # one slow step among normal ones
        fake.busy = jitter
        run(tuner, fake, 1)
    assert fake.history == [2, 2, 2, 2]
    fake.busy = True                                                    # negative control: it stays slow
    run(tuner, fake, 4)
    assert fake.history[-4:] == [2, 2, 1, 1]


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_other_runnable_tasks_sees_another_process_but_not_this_ones_threads():
    import subprocess
    import sys
    import time
    assert generate.own_running_threads() >= 1                         # the thread asking is running
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert generate.other_runnable_tasks() >= 1                      # always runnable: always seen
    finally:
        spinner.kill()
        spinner.wait()


def test_fixed_thread_count_and_restore():
    model = minilm.load(tiny_checkpoint("llama"), backend="numba", progress=False)
    full = model.backend.threads()
    model.generate(np.array([[3, 4, 5]]), max_new_tokens=12, threads=1, eos_token_id=[])
    assert model.backend.threads() == 1                                    # asked for: stays
    model.backend.threads(full)
    model.generate(np.array([[3, 4, 5]]), max_new_tokens=40, eos_token_id=[])
    assert model.backend.threads() == full                                 # adapted, then restored
    tuner = model.thread_tuner
    model.generate(np.array([[3, 4, 5]]), max_new_tokens=4, eos_token_id=[])
    assert model.thread_tuner is tuner                                     # one tuner per model
