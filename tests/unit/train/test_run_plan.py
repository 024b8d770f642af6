"""Warmup as a fraction of the run, the warmup and time-budget warnings, the CPU thread default, and the
early-stopping bookkeeping (pure functions: no training)."""

from __future__ import annotations

import pytest

from routerforge.errors import CheckpointError, ConfigError
from routerforge.train.accelerator_setup import cpu_threads_for
from routerforge.train.early_stopping import EarlyStopping, resolve_metric
from routerforge.train.optimization import lr_multiplier, warmup_steps_for
from routerforge.train.run_config import OptimConfig, RunConfig
from routerforge.train.run_plan import EtaReporter, warmup_warning


def test_warmup_fraction_scales_with_the_run_and_reaches_the_target_lr():
    optim = OptimConfig(lr_schedule="linear", warmup_fraction=0.1)
    assert warmup_steps_for(optim, 73) == 7 and warmup_steps_for(optim, 7300) == 730
    assert lr_multiplier(6, optim, 73) == pytest.approx(1.0)  # end of the 7-step warmup: the full LR
    assert lr_multiplier(0, optim, 73) == pytest.approx(1 / 7)
    assert warmup_steps_for(OptimConfig(warmup_optimizer_steps=100), 73) == 100
    with pytest.raises(ValueError, match="set one of optim.warmup_fraction"):
        OptimConfig(warmup_fraction=0.1, warmup_optimizer_steps=100)
    with pytest.raises(ValueError, match=r"warmup_fraction must be in \[0, 1\)"):
        OptimConfig(warmup_fraction=1.0)


def test_a_warmup_as_long_as_the_run_is_a_warning_naming_the_fix():
    assert "never reaches optim.lr" in warmup_warning(100, 73) and "optim.warmup_fraction" in warmup_warning(100, 73)
    assert warmup_warning(7, 73) is None and warmup_warning(0, 5) is None


class _Printer:
    num_processes = 1

    def __init__(self):
        self.lines = []

    def print(self, text, flush=False):
        self.lines.append(text)


def test_eta_is_reported_once_with_a_budget_warning(monkeypatch):
    import routerforge.train.run_plan as run_plan

    clock = iter([0.0, 3.0, 4.0, 9.0, 10.0])
    monkeypatch.setattr(run_plan.time, "perf_counter", lambda: next(clock))
    printer = _Printer()
    eta = EtaReporter(printer, "mf", first_step=0, total_optimizer_steps=1000, budget_minutes=0.5)
    assert eta.observe(1) is None  # the first step (3 s of one-time costs) only starts the timer
    assert eta.observe(2) is None  # 1 s, 1 step: too early to extrapolate
    message = eta.observe(11)  # 6 s for 10 steps after the first -> 989 more take ~593 s
    assert "the remaining 989 would take ~9.9 min" in message
    assert "exceeds run.time_budget_minutes=0.5" in message and "The run continues" in message
    assert eta.observe(20) is None and printer.lines == [message]


def test_eta_over_length_grouped_batches_waits_for_a_whole_mega_batch(monkeypatch):
    import routerforge.train.run_plan as run_plan

    # Batches grouped by length: the first steps are the longest (10 s), the rest of the group shorter (2 s).
    clock = iter([0.0, 10.0, 20.0, 30.0, 38.0, 40.0])
    monkeypatch.setattr(run_plan.time, "perf_counter", lambda: next(clock))
    eta = EtaReporter(_Printer(), "difficulty", first_step=0, total_optimizer_steps=100, budget_minutes=None,
                      min_measured_steps=4)
    assert eta.observe(1) is None
    assert eta.observe(2) is None and eta.observe(3) is None  # 20 s for 2 steps: 10 s/step would mislead
    assert eta.observe(4) is None
    message = eta.observe(5)  # 4 steps in 30 s after the first: 7.5 s/step, 95 more take ~11.9 min
    assert "4 optimizer steps in 30.0 s; the remaining 95 would take ~11.9 min" in message
    monkeypatch.setattr(run_plan.time, "perf_counter", iter([0.0, 1.0, 2.0, 3.0]).__next__)
    short = EtaReporter(_Printer(), "difficulty", first_step=0, total_optimizer_steps=3, budget_minutes=None,
                        min_measured_steps=50)
    assert short.observe(1) is None and short.observe(2) is None
    assert "the remaining 0 would take" in short.observe(3)  # a run shorter than a group: measured to its end


def test_single_process_cpu_launch_left_at_one_thread_uses_every_core():
    import os

    cores = len(os.sched_getaffinity(0))
    launched = {"ACCELERATE_MIXED_PRECISION": "no", "OMP_NUM_THREADS": "1"}
    assert cpu_threads_for(None, 1, launched) == cores
    assert cpu_threads_for(None, 2, launched) is None  # 2 processes share the cores: keep 1 each
    assert cpu_threads_for(None, 1, {"OMP_NUM_THREADS": "1"}) is None  # plain python, the user's setting
    assert cpu_threads_for(None, 1, {**launched, "OMP_NUM_THREADS": "2"}) is None  # --num_cpu_threads_per_process 2
    assert cpu_threads_for(3, 1, launched) == 3  # run.cpu_threads_per_process wins


def test_early_stopping_counts_patience_and_resumes_its_state():
    stopper = EarlyStopping("loss", patience_evals=2, min_delta=0.0)
    assert stopper.update({"loss": 0.7}, 10) and stopper.update({"loss": 0.6}, 20)
    assert not stopper.update({"loss": 0.65}, 30) and not stopper.stopped_early
    assert not stopper.update({"loss": float("nan")}, 40) and stopper.stopped_early
    assert (stopper.best_value, stopper.best_optimizer_step) == (0.6, 20)
    again = EarlyStopping.resumed(stopper.to_dict(), "loss", 2, 0.0)
    assert again == stopper
    accuracy = EarlyStopping("accuracy", patience_evals=0, min_delta=0.0)  # higher is better; never stops
    assert accuracy.update({"accuracy": 0.6}, 1) and not accuracy.update({"accuracy": 0.5}, 2)
    assert accuracy.update({"accuracy": 0.7}, 3) and not accuracy.stopped_early
    with pytest.raises(CheckpointError, match="tracked early-stopping metric loss"):
        EarlyStopping.resumed(stopper.to_dict(), "accuracy", 2, 0.0)
    with pytest.raises(ConfigError, match="the mf recipe evaluates loss on this data; use one of them or auto"):
        resolve_metric("accuracy", "loss", ["loss"], "mf")
    with pytest.raises(ValueError, match="needs run.eval_every_optimizer_steps > 0"):
        RunConfig(early_stopping_patience_evals=3)
