"""Tests for jaxrl.logger: metrics.jsonl, TensorBoard, plot, summary, progress."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from jaxrl import logger as logger_lib

_SETTINGS = settings(max_examples=25, deadline=None)
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-2**31, 2**31),
    st.floats(width=32).map(np.float32),
    st.integers(-100, 100).map(np.int64),
    st.booleans(),
    st.text(max_size=5),
)
_records = st.lists(
    st.fixed_dictionaries(
        {"env_steps": st.integers(0, 10**9), "learner_steps": st.integers(0, 10**6).map(np.int32)},
        optional={key: _values for key in ("loss", "epsilon", "sps", "note")}),
    min_size=1, max_size=6)


def _expected(value):
  value = value.item() if isinstance(value, np.generic) else value
  return None if isinstance(value, float) and not math.isfinite(value) else value


def _events_of(path: Path) -> list[event_pb2.Event]:
  """Every event of a TFRecord event file, each record's crcs checked."""
  events, data, pos = [], path.read_bytes(), 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    body = data[pos + 12:pos + 12 + length]
    assert struct.unpack_from("<II", data[pos + 8:pos + 12] + data[pos + 12 + length:pos + 16 + length]) == (
        masked_crc32c(header), masked_crc32c(body))
    events.append(event_pb2.Event.FromString(body))
    pos += 12 + length + 4  # length, its crc, the event, its crc.
  return events


def _tensorboard_events(run_dir: Path) -> list[event_pb2.Event]:
  """The events of the TFRecord event files in run_dir that hold a summary."""
  return [event for path in sorted(run_dir.glob("events.out.tfevents.*")) for event in _events_of(path)
          if event.summary.value]


def _tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in run_dir's event files: tag -> [(step, value)]."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for event in _tensorboard_events(run_dir):
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


@_SETTINGS
@given(records=_records)
def test_metrics_lines_are_json_with_counters_time_and_converted_values(records):
  with tempfile.TemporaryDirectory() as run_dir:
    launch = time.time() - 100.0
    with logger_lib.MetricsLogger(run_dir, launch) as log:
      for record in records:
        log.log(record)
      log.flush()
      read_before_close = logger_lib.read_metrics(run_dir)
    lines = (Path(run_dir) / logger_lib.METRICS_FILE).read_text().splitlines()
    read = [json.loads(line) for line in lines]  # Strict JSON: NaN/inf would be rejected below.
    assert all("NaN" not in line and "Infinity" not in line for line in lines)
    assert read == read_before_close == logger_lib.read_metrics(run_dir)
    assert len(read) == len(records)
    times = [line["time"] for line in read]
    assert times == sorted(times) and times[0] >= 100.0
    for line, record in zip(read, records):
      assert {key: value for key, value in line.items() if key != "time"} == {
          key: _expected(value) for key, value in record.items()}


def test_log_rejects_records_without_counters_or_with_arrays(tmp_path):
  with logger_lib.MetricsLogger(tmp_path, time.time()) as log:
    with pytest.raises(ValueError, match="learner_steps"):
      log.log({"env_steps": 1})
    with pytest.raises(TypeError, match="loss"):
      log.log({"env_steps": 1, "learner_steps": 0, "loss": np.zeros(3)})
    with pytest.raises(ValueError, match="env_steps"):
      log.log({"env_steps": 1.5, "learner_steps": 0})
  assert logger_lib.read_metrics(tmp_path) == []


def test_new_logger_refuses_to_overwrite_a_run(tmp_path):
  logger_lib.MetricsLogger(tmp_path, time.time()).close()
  with pytest.raises(FileExistsError):
    logger_lib.MetricsLogger(tmp_path, time.time())


@_SETTINGS
@given(first=_records, second=_records, partial=st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b))
def test_resume_appends_after_cutting_a_partial_line_and_keeps_time_monotonic(first, second, partial):
  with tempfile.TemporaryDirectory() as run_dir:
    with logger_lib.MetricsLogger(run_dir, time.time() - 50.0) as log:
      for record in first:
        log.log(record)
    with open(Path(run_dir) / logger_lib.METRICS_FILE, "ab") as f:
      f.write(partial)  # A crashed run's half-written line.
    assert len(logger_lib.read_metrics(run_dir)) == len(first)
    with logger_lib.MetricsLogger(run_dir, time.time(), resume=True) as log:
      for record in second:
        log.log(record)
    read = logger_lib.read_metrics(run_dir)
    lines = (Path(run_dir) / logger_lib.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == read  # The partial line is gone, not glued.
    assert [line["env_steps"] for line in read] == [r["env_steps"] for r in first + second]
    times = [line["time"] for line in read]
    assert times == sorted(times) and times[len(first)] >= 50.0


def _record(step: int) -> dict:
  return {"env_steps": step, "learner_steps": step, "loss": float(step)}


def test_records_wait_and_go_out_together_once_flush_seconds_old(tmp_path, monkeypatch):
  """One write call a file for all the records waiting, when the oldest is
  flush_seconds old at a log, on flush and at close; never one per record."""
  clock, writes, write = [100.0], [], os.write
  monkeypatch.setattr(time, "monotonic", lambda: clock[0])
  monkeypatch.setattr(os, "write", lambda fd, data: writes.append(fd) or write(fd, data))
  with logger_lib.MetricsLogger(tmp_path, time.time(), flush_seconds=1.0) as log:
    for step in range(5):   # logged at 100.0 .. 100.8: none is a second old
      log.log(_record(step))
      clock[0] += 0.2
    assert writes == [] and logger_lib.read_metrics(tmp_path) == []
    log.log(_record(5))   # at 101.0: the first one is
    assert len(writes) == len(set(writes)) == 2   # metrics.jsonl and the event file, once each
    assert [r["env_steps"] for r in logger_lib.read_metrics(tmp_path)] == list(range(6))
    log.log(_record(6))
    log.flush_if_due()
    assert len(writes) == 2
    clock[0] += 1.0
    log.flush_if_due()
    assert len(writes) == 4 and len(logger_lib.read_metrics(tmp_path)) == 7
    log.log(_record(7))
  assert len(writes) == 6 and len(logger_lib.read_metrics(tmp_path)) == 8
  assert [step for step, _ in _tensorboard_scalars(tmp_path)["losses/td_loss"]] == list(range(8))


@pytest.mark.parametrize("failing", ["log", "flush", "close"])
def test_a_failed_write_raises_once_then_the_logger_drops_records_and_closes(tmp_path, monkeypatch, failing):
  """A full disk midway through a write: the OSError comes out of the call
  that wrote, once; nothing is appended after the half line it left (resume
  cuts it); closing does not raise again, and the summary is still written."""
  log = logger_lib.MetricsLogger(tmp_path, time.time(), flush_seconds=0.0 if failing == "log" else 3600.0)
  log.log(_record(1))
  log.flush()
  write, calls = os.write, []

  def half_then_no_space(fd, data):
    calls.append(fd)
    if len(calls) == 1:
      return write(fd, data[:len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "write", half_then_no_space)
  with pytest.raises(OSError) as info:
    log.log(_record(2))
    getattr(log, failing)()
  assert info.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert log.log(_record(3))["env_steps"] == 3   # still returned, for the display
  log.flush()
  log.close()
  log.close()
  data = (tmp_path / logger_lib.METRICS_FILE).read_bytes()
  first, _, rest = data.partition(b"\n")
  assert json.loads(first)["env_steps"] == 1 and rest and b"\n" not in rest   # then half of record 2
  logger_lib.write_summary(tmp_path, {"eval_return": None, "env_steps": 3, "learner_steps": 3,
                                      "wall_seconds": 1.0, "stopped_because": "error"})
  logger_lib.MetricsLogger(tmp_path, time.time(), resume=True).close()
  assert [r["env_steps"] for r in logger_lib.read_metrics(tmp_path)] == [1]


def test_resume_drops_the_records_written_after_the_checkpoint(tmp_path):
  """metrics.jsonl keeps its records up to the first with more env steps
  than the checkpoint's, and TensorBoard is told to purge the later steps."""
  with logger_lib.MetricsLogger(tmp_path, time.time() - 50.0) as log:
    for step in range(101):
      log.log(_record(step))
  with open(tmp_path / logger_lib.METRICS_FILE, "ab") as f:
    f.write(b'{"time":')   # and a crash midway through a line
  old_files = set(tmp_path.glob("events.out.tfevents.*"))
  with logger_lib.MetricsLogger(tmp_path, time.time(), resume=True, resume_env_steps=50) as log:
    log.log(_record(51))
  read = logger_lib.read_metrics(tmp_path)
  assert [r["env_steps"] for r in read] == [*range(51), 51]
  times = [r["time"] for r in read]
  assert times == sorted(times)
  (new_file,) = set(tmp_path.glob("events.out.tfevents.*")) - old_files
  assert new_file > max(old_files)   # read after them
  version, purge, record = _events_of(new_file)
  assert version.file_version == "brain.Event:2"
  assert purge.session_log.status == event_pb2.SessionLog.START and purge.step == 51
  assert record.step == 51 and record.summary.value[0].simple_value == 51.0


def test_resume_keeps_the_records_before_the_first_past_the_checkpoint(tmp_path):
  """Records are in time order: a record after one past the checkpoint was
  written after the checkpoint too, whatever its env steps."""
  with logger_lib.MetricsLogger(tmp_path, time.time()) as log:
    for step in (0, 10, 60, 20):
      log.log(_record(step))
  logger_lib.MetricsLogger(tmp_path, time.time(), resume=True, resume_env_steps=50).close()
  assert [r["env_steps"] for r in logger_lib.read_metrics(tmp_path)] == [0, 10]


def test_tensorboard_tags_group_measurements_and_leave_out_ids_and_counters(tmp_path):
  with logger_lib.MetricsLogger(tmp_path, time.time(), config={"seed": 3}) as log:
    log.log({"env_steps": 10, "learner_steps": 2, "loss": np.float32(0.5), "q_mean": 2.0, "sps": 900.0,
             "learner_id": "agent_0", "note": "x", "done": True, "custom": 1.0})
    log.log({"env_steps": 20, "learner_steps": 3, "loss": float("nan")})
    for ret in (1.5, 7.0, 2.0):
      log.log({"env_steps": 30, "learner_steps": 4, "episode_return": ret, "episode_length": 9,
               "agent_id": "agent_0", "actor_id": 1})
    log.log({"env_steps": 40, "learner_steps": 5, "eval_return": 4.0, "eval_return/agent_0": 4.0})
  scalars = _tensorboard_scalars(tmp_path)
  assert scalars["losses/td_loss"] == [(10, 0.5)]  # NaN is null in JSON and left out of TensorBoard.
  assert scalars["losses/q_values"] == [(10, 2.0)]
  assert scalars["charts/SPS"] == [(10, 900.0)]
  assert scalars["misc/custom"] == [(10, 1.0)]
  assert scalars["charts/episodic_return"] == [(30, 1.5), (30, 7.0), (30, 2.0)]
  assert scalars["charts/episodic_length"] == [(30, 9.0)] * 3
  assert scalars[logger_lib.RECENT_RETURN_TAG] == [(30, 1.5), (30, 4.25), (30, 3.5)]
  assert scalars["charts/eval_return"] == [(40, 4.0)]
  tags = {tag.split("/")[0] for tag in scalars}
  assert tags == {"charts", "losses", "misc", "config"}, scalars.keys()   # no ids, counters or note/done
  assert len(_tensorboard_events(tmp_path)) == 6   # the config, and one event per record with a curve
  texts = [v for e in _tensorboard_events(tmp_path) for v in e.summary.value if v.tag.startswith("config")]
  assert len(texts) == 1 and b"seed: 3" in texts[0].tensor.string_val[0]


def test_tensorboard_tags_of_several_agents_end_in_the_agent(tmp_path):
  with logger_lib.MetricsLogger(tmp_path, time.time(), agent_ids=("a_0", "b_0")) as log:
    for agent, ret in (("a_0", 1.5), ("b_0", 7.0)):
      log.log({"env_steps": 30, "learner_steps": 4, "episode_return": ret, "agent_id": agent})
    log.log({"env_steps": 40, "learner_steps": 5, "loss": 1.0, "learner_id": "b_0"})
    log.log({"env_steps": 50, "learner_steps": 6, "eval_return": 3.0, "eval_return/a_0": 1.0})
  scalars = _tensorboard_scalars(tmp_path)
  assert scalars["charts/episodic_return/a_0"] == [(30, 1.5)]
  assert scalars["charts/episodic_return/b_0"] == [(30, 7.0)]
  assert scalars[logger_lib.RECENT_RETURN_TAG + "/b_0"] == [(30, 7.0)]
  assert scalars["losses/td_loss/b_0"] == [(40, 1.0)]
  assert scalars["charts/eval_return"] == [(50, 3.0)] and scalars["charts/eval_return/a_0"] == [(50, 1.0)]


@_SETTINGS
@given(values=st.lists(st.floats(-1e6, 1e6), max_size=60), window=st.integers(1, 25))
def test_trailing_mean_is_the_mean_of_the_last_window_values(values, window):
  got = logger_lib.trailing_mean(np.array(values), window)
  want = [np.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)


def _assert_png(path: Path) -> None:
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  assert width >= 600 and height >= 300


@pytest.mark.parametrize("with_eval", [True, False])
def test_plot_writes_a_png_for_runs_with_and_without_eval(tmp_path, with_eval):
  rng = np.random.default_rng(0)
  with logger_lib.MetricsLogger(tmp_path, time.time()) as log:
    for step in range(1, 60):
      log.log({"env_steps": step * 100, "learner_steps": step, "episode_return": float(rng.normal(step)),
               "agent_id": step % 2})
      if with_eval and step % 20 == 0:
        log.log({"env_steps": step * 100, "learner_steps": step, "eval_return": float(step), "agent_id": 0})
  path = logger_lib.plot_learning_curve(tmp_path)
  assert path == tmp_path / logger_lib.CURVE_FILE
  _assert_png(path)
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_learning_curve_keeps_training_and_evaluation_returns_apart(tmp_path):
  """Training returns per agent over the team's greedy evaluation return,
  on axes of their own, each labelled, with a legend."""
  agents = ("agent_0", "agent_1", "agent_2")
  with logger_lib.MetricsLogger(tmp_path, time.time(), agent_ids=agents) as log:
    for step in range(1, 61):
      for agent in agents:
        log.log({"env_steps": step * 100, "learner_steps": step, "episode_return": -30.0 + step / 10,
                 "agent_id": agent})
      if step % 20 == 0:
        log.log({"env_steps": step * 100, "learner_steps": step, "eval_return": -70.0 + step,
                 **{f"eval_return/{agent}": -70.0 / 3 for agent in agents}})
  fig = logger_lib.learning_curve_figure(tmp_path)
  (train_steps, train_time), (eval_steps, eval_time) = np.reshape(fig.axes, (2, 2))
  for train, evaluation, x_label in ((train_steps, eval_steps, "environment steps"),
                                     (train_time, eval_time, "wall time (s)")):
    assert train.get_ylabel() == "training return" and evaluation.get_ylabel() == "greedy evaluation return"
    assert evaluation.get_xlabel() == x_label
    assert [t.get_text() for t in train.get_legend().get_texts()] == [f"{a}: mean of last 20" for a in agents]
    assert [t.get_text() for t in evaluation.get_legend().get_texts()] == ["team (sum over agents)"]
    (team,) = evaluation.get_lines()
    assert list(team.get_ydata()) == [-50.0, -30.0, -10.0]
    assert all(min(line.get_ydata()) > -30.0 for line in train.get_lines())   # no evaluation among them
  _assert_png(logger_lib.plot_learning_curve(tmp_path))


def test_plot_of_a_run_with_no_episode_yet_is_still_a_png(tmp_path):
  with logger_lib.MetricsLogger(tmp_path, time.time()) as log:
    log.log({"env_steps": 0, "learner_steps": 0, "loss": 1.0})
  _assert_png(logger_lib.plot_learning_curve(tmp_path, tmp_path / "other.png"))


def test_summary_is_written_atomically_with_the_given_fields(tmp_path):
  (tmp_path / logger_lib.SUMMARY_FILE).write_text("old")
  summary = {"eval_return": np.float32(195.5), "env_steps": np.int64(50_000), "learner_steps": 12_000,
             "wall_seconds": 61.25, "stopped_because": "eval_return", "extra": float("inf")}
  logger_lib.write_summary(tmp_path, summary)
  assert json.loads((tmp_path / logger_lib.SUMMARY_FILE).read_text()) == {
      "eval_return": 195.5, "env_steps": 50_000, "learner_steps": 12_000, "wall_seconds": 61.25,
      "stopped_because": "eval_return", "extra": None}
  assert [p.name for p in tmp_path.iterdir()] == [logger_lib.SUMMARY_FILE]  # No temp file left.
  with pytest.raises(ValueError, match="stopped_because"):
    logger_lib.write_summary(tmp_path, {"eval_return": None, "env_steps": 0, "learner_steps": 0, "wall_seconds": 1.0})


def test_progress_display_without_a_tty_prints_plain_lines_with_every_field(capsys):
  display = logger_lib.ProgressDisplay(True, stop_env_steps=2000, plain_interval_s=3600.0)
  for ret in range(30):  # Recent return is the mean of the last 20: 10..29 -> 19.5.
    display.update({"env_steps": 1000, "learner_steps": 5, "episode_return": float(ret), "agent_id": 0})
  display.update({"env_steps": 1000, "learner_steps": 5, "sps": 1234.4, "updates_per_s": 56.78,
                  "eval_return": np.float32(150.0), "epsilon": 0.05, "policy_lag": 1.25, "time": 12.0})
  first = capsys.readouterr().out.splitlines()
  assert len(first) == 1  # Printed at the first update, then held back by the interval.
  display.close()
  display.close()
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["[12s 50%] steps 1,000/2,000  sps 1,234  upd/s 56.78  return 19.5  eval 150  eps 0.05  lag 1.25"]


def test_progress_display_takes_every_record_of_a_batch(capsys):
  """Run.log hands over a batch of episodes at once: each counts in the recent return."""
  display = logger_lib.ProgressDisplay(True, plain_interval_s=3600.0)
  display.update(*({"env_steps": 10, "learner_steps": 0, "episode_return": float(r), "agent_id": 0} for r in (1, 2, 6)))
  display.close()
  assert "  return 3  " in capsys.readouterr().out.splitlines()[-1]


def test_progress_display_shows_the_team_return_of_several_agents(capsys):
  display = logger_lib.ProgressDisplay(True, stop_seconds=100.0, plain_interval_s=3600.0)
  display.update({"env_steps": 5, "learner_steps": 0, "episode_return": 3.0, "agent_id": "a", "time": 25.0})
  display.update({"env_steps": 6, "learner_steps": 0, "episode_return": 8.0, "agent_id": "b", "time": 25.0})
  display.close()
  last = capsys.readouterr().out.splitlines()[-1]
  assert last.startswith("[25s/1m40s 25%] steps 6  ") and "  return 11  " in last


def test_progress_percentage_is_of_the_condition_whose_counter_is_shown(capsys):
  """Of stop.env_steps and stop.seconds, the nearer to being met gives both
  the percentage and the counter beside it."""
  display = logger_lib.ProgressDisplay(True, stop_env_steps=200_000, stop_seconds=1200.0, plain_interval_s=0.0)
  display.update({"env_steps": 7839, "learner_steps": 0, "time": 450.0})
  display.update({"env_steps": 150_000, "learner_steps": 0, "time": 500.0})
  seconds_first, steps_first = capsys.readouterr().out.splitlines()
  assert seconds_first.startswith("[7m30s/20m00s 38%] steps 7,839  ")
  assert steps_first.startswith("[8m20s 75%] steps 150k/200k  ")


def test_a_plain_display_prints_its_last_line_once(capsys):
  display = logger_lib.ProgressDisplay(True, stop_env_steps=100, plain_interval_s=0.0)
  display.update({"env_steps": 100, "learner_steps": 3, "eval_return": -62.89295633957305, "time": 3.0})
  display.close()
  assert capsys.readouterr().out.splitlines() == [
      "[3s 100%] steps 100/100  sps -  upd/s -  return -  eval -62.89  eps -  lag -"]


def test_several_agents_progress_fits_in_100_columns(capsys):
  """MPE simple_spread's records (3 learners, 3 agents) once made a 268-column line."""
  display = logger_lib.ProgressDisplay(True, stop_env_steps=1_000_000, plain_interval_s=3600.0)
  for i, agent in enumerate(("agent_0", "agent_1", "agent_2")):
    display.update({"env_steps": 987_654, "learner_steps": 2808, "learner_id": agent, "sps": 1914.36 - 100 * i,
                    "updates_per_s": 480.61 - i, "epsilon": 0.98221600055, "time": 12_345.6})
    display.update({"env_steps": 987_654, "learner_steps": 2808, "agent_id": agent, "episode_return": -25.77 - i,
                    "policy_lag": 21.12, "time": 12_345.6})
  display.update({"env_steps": 987_654, "learner_steps": 2808, "eval_return": -62.89295633957305,
                  **{f"eval_return/agent_{i}": -20.96431877985769 for i in range(3)}, "time": 12_345.6})
  display.close()
  line = capsys.readouterr().out.splitlines()[-1]
  assert line == "[3h25m 99%] steps 988k/1M  sps 1,814  upd/s 1,439  return -80.31  eval -62.89  eps 0.982  lag 21.1"
  assert len(line) <= 100


def test_a_note_says_what_happens_before_the_first_record(capsys, monkeypatch):
  display = logger_lib.ProgressDisplay(True, stop_env_steps=100)
  display.note("jaxrl: compiling the learner...")
  assert capsys.readouterr().out == "jaxrl: compiling the learner...\n"   # at once, not at the first record
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stdout", terminal)
  display = logger_lib.ProgressDisplay(True, stop_env_steps=100)
  display.note("jaxrl: compiling the learner...")
  assert display.status_line() == "jaxrl: compiling the learner..."
  display.update({"env_steps": 50, "learner_steps": 0, "sps": 3.0})
  assert "compiling" not in display.status_line() and "steps 50/100" in display.status_line()
  display.close()
  assert "compiling the learner" in terminal.getvalue()


def test_disabled_progress_display_prints_nothing(capsys):
  display = logger_lib.ProgressDisplay(False, stop_env_steps=10)
  display.update({"env_steps": 5, "learner_steps": 0, "sps": 3.0})
  display.close()
  assert capsys.readouterr().out == ""


class _Terminal(io.StringIO):

  def isatty(self) -> bool:
    return True


@pytest.mark.parametrize("stop_env_steps", [2000, None])
def test_progress_display_on_a_terminal_renders_the_status_with_rich(monkeypatch, stop_env_steps):
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stdout", terminal)
  display = logger_lib.ProgressDisplay(True, stop_env_steps=stop_env_steps)
  display.update({"env_steps": 1000, "learner_steps": 5, "sps": 321.0, "episode_return": 4.0})
  display.close()
  out = terminal.getvalue()
  assert "\x1b[" in out  # Live rendering (cursor control), not plain lines.
  assert "steps 1,000" in out and "sps 321" in out and "return 4" in out
  assert ("50%" in out) == (stop_env_steps is not None)
