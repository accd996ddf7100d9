"""Logged img/s and ETA: what a short real run achieves between its log lines, compile and
evaluation left out; and the timer's bookkeeping on a fake clock."""

import logging
import time

from sparse_vit_jax.train import evaluation, loop
from sparse_vit_jax.train.metrics import read_metrics
from sparse_vit_jax.train.throughput import StepTimer

# The logged rate and the rate measured between log lines (outside the loop) cover the same
# steps; they differ only by the logging work itself, a few ms per line on an idle machine but up
# to ~1.7x the steps' time on a heavily shared one. The bug this guards against (timing the
# dispatch instead of the steps) was off by ~20x.
FACTOR = 2.0
ETA_FACTOR = 3.0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_timer_leaves_out_the_first_step_and_pauses():
    clock = FakeClock()
    timer = StepTimer(clock)
    timer.step()  # before start (the compiling first step): not counted
    clock.now = 30.0
    timer.start()
    for _ in range(4):
        clock.now += 0.5
        timer.step()
    with timer.paused():  # an evaluation
        clock.now += 100.0
    clock.now += 1.0  # waiting for the device at the log line's fetch
    interval = timer.lap()
    assert (interval.steps, interval.seconds) == (4, 3.0)
    assert interval.images_per_sec(batch_size=6) == 8.0
    assert interval.eta_seconds(remaining_steps=10) == 7.5
    clock.now += 2.0
    timer.step()
    assert (timer.lap().steps, timer.lap().steps) == (1, 0)  # each lap starts a new interval
    assert StepTimer(clock).lap().images_per_sec(6) is None  # nothing timed yet


class _LineTimes(logging.Handler):
    """When each 'step …' and 'eval …' log line is emitted (just after its sync point)."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append((time.perf_counter(), record.getMessage()))


def test_logged_throughput_and_eta_match_the_wall_clock(tiny_config, tmp_path, monkeypatch):
    # Steps heavy enough that dispatching one takes far less than running it, as on a real
    # model: timing dispatch instead of the steps was off by ~20x here.
    c = tiny_config(
        **{
            'model.embed_dim': 256,
            'model.mlp_dim': 1024,
            'batch_size': 8,  # 4 steps per epoch of the 37 examples
            'num_epochs': 6.0,
            'log_every_steps': 6,
            'eval_every_epochs': 3.0,  # one evaluation, after the line of step 12
            'checkpoint_every_steps': 1000,
        }
    )
    handler = _LineTimes()
    monkeypatch.setattr(evaluation, 'PROGRESS_SECONDS', 0.0)  # a progress line per eval batch
    package_logger = logging.getLogger('sparse_vit_jax')
    level = package_logger.level
    package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        loop.train_and_evaluate(c, str(tmp_path))
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)

    messages = [m for _, m in handler.lines]
    # What a user reads before the first step line: the resolved config, the compile and its
    # duration; the step lines carry the epoch and the elapsed time; evaluations say how far.
    config = [m for m in messages if m.startswith('config, as resolved:\n')]
    assert len(config) == 1 and 'num_epochs: 6.0' in config[0]
    compiling = messages.index('compiling the train step (the first step waits for it)')
    assert messages.index(config[0]) < compiling
    assert messages[compiling + 1].startswith('train step compiled: the first step took ')
    first = messages[compiling + 2]
    assert first.startswith('step 6/24 | epoch 1.50 | ') and ' | elapsed 0m' in first
    assert 'evaluating: 1 of ' in '\n'.join(messages)
    lines = [(t, m) for t, m in handler.lines if m.startswith(('step ', 'eval at'))]
    heads = [' '.join(m.split()[:3]) for _, m in lines]
    assert heads == [
        'step 6/24 |',
        'step 12/24 |',
        'eval at step',
        'step 18/24 |',
        'step 24/24 |',
        'eval at step',
    ]
    times = [t for t, _ in lines]
    records = read_metrics(str(tmp_path), 'train')
    assert [r['step'] for r in records] == [6, 12, 18, 24]
    # Between consecutive lines: 6 steps each; the interval after step 12 starts when the
    # evaluation's line is written, because evaluation time is not training time.
    walls = [times[1] - times[0], times[3] - times[2], times[4] - times[3]]
    for wall, record in zip(walls, records[1:]):
        measured = 6 * c.batch_size / wall
        logged = record['images_per_sec']
        assert measured / FACTOR < logged < measured * FACTOR, (record['step'], logged, measured)
    # The ETA at step 12 (training left, evaluations excluded) against the 12 steps that
    # followed: a prediction from 6 steps on a shared machine, so a looser factor.
    remaining = times[4] - times[2]
    eta = records[1]['eta_seconds']
    assert remaining / ETA_FACTOR < eta < remaining * ETA_FACTOR, (eta, remaining)
