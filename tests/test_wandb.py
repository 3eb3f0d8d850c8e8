"""Weights & Biases tracking (design section 10), offline: no network.

W&B 0.31 has no Python reader of its ``.wandb`` files any more (wandb-core
reads them); ``_wandb_records`` reads one: the LevelDB log format W&B writes,
each record a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import psutil
import pytest
from wandb.proto import wandb_internal_pb2

from jaxrl import logger as logger_lib
from jaxrl import wandb_log
from jaxrl.config import RunConfig, WandbConfig
from jaxrl.config_file import config_to_dict, load_config
from runs import CARTPOLE, ENV, ROOT, train_cli, wait_for
from test_logger import _events_of

TINY = ["runtime.mode=sync", "stop.env_steps=600", "replay.min_size=64", "learner.batch_size=32", "eval.interval=50",
        "eval.episodes=1", "runtime.progress=false"]
WANDB = ["wandb.project=test", "wandb.mode=offline", "wandb.entity=me", "wandb.group=sweep", "wandb.tags=[a,b]"]
_BLOCK, _HEADER = 32768, 7   # the LevelDB log's block and record header sizes
_FULL, _FIRST, _LAST = 1, 2, 4


def _wandb_env(tmp_path: Path) -> dict[str, str]:
  """W&B offline and quiet, its own files under tmp_path."""
  return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
          **{f"WANDB_{name}_DIR": str(tmp_path / f"wandb_{name.lower()}") for name in ("CONFIG", "CACHE", "DATA")}}


def _wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
  """The records of a ``.wandb`` file, each chunk's crc checked: a header
  (b":W&B", 0xBEE1, version 0), then blocks of 32 KiB holding chunks
  (crc32 of type and data, length, type, data) that never cross a block."""
  data = path.read_bytes()
  assert struct.unpack("<4sHB", data[:_HEADER]) == (b":W&B", 0xBEE1, 0)
  records, pos, pending = [], _HEADER, b""
  while pos + _HEADER <= len(data):
    if _BLOCK - pos % _BLOCK < _HEADER:   # the block's zero-filled tail
      pos += _BLOCK - pos % _BLOCK
      continue
    crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
    chunk = data[pos + _HEADER:pos + _HEADER + length]
    assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc
    pos += _HEADER + length
    pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
    if kind in (_FULL, _LAST):
      records.append(wandb_internal_pb2.Record.FromString(pending))
  return records


def _offline_runs(run_dir: Path) -> list[tuple[Path, list[wandb_internal_pb2.Record]]]:
  """Each offline W&B run directory of run_dir (one per attempt), in order, with its records."""
  dirs = sorted((run_dir / "wandb").glob("offline-run-*"))
  return [(d, _wandb_records(next(d.glob("run-*.wandb")))) for d in dirs]


def _of_kind(records, kind: str) -> list:
  return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _items(items) -> dict:
  """Summary or history items as a dict; an item of nested keys (an image's fields) in nested dicts."""
  out: dict = {}
  for item in items:
    *parents, key = list(item.nested_key) or [item.key]
    node = out
    for parent in parents:
      node = node.setdefault(parent, {})
    node[key] = json.loads(item.value_json)
  return out


def _rows(records) -> list[dict]:
  """The history rows of the records, in order."""
  return [_items(history.item) for history in _of_kind(records, "history")]


def _history(records) -> dict[str, list[tuple[int, object]]]:
  """tag -> [(env_steps, value)] of the records' history rows, in order."""
  curves: dict[str, list[tuple[int, object]]] = {}
  for row in _rows(records):
    for tag, value in row.items():
      if not tag.startswith("_") and tag != wandb_log.STEP_KEY:
        curves.setdefault(tag, []).append((row[wandb_log.STEP_KEY], value))
  return curves


def _tensorboard(event_file: Path) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of an event file's scalars, in order."""
  curves: dict[str, list[tuple[int, float]]] = {}
  for event in _events_of(event_file):
    for value in event.summary.value:
      if value.WhichOneof("value") == "simple_value":
        curves.setdefault(value.tag, []).append((event.step, value.simple_value))
  return curves


def _float32(value: float) -> float:
  return struct.unpack("f", struct.pack("f", value))[0]


def _assert_same_curves(records, event_file: Path) -> None:
  """The W&B history holds the event file's scalars: every value of every
  tag at its env steps, in order (float32 there); W&B's steps grow, never
  below the env steps; the learning curve image is in the last row."""
  rows = _rows(records)
  steps = [row["_step"] for row in rows]
  assert steps == sorted(set(steps)) and all(row["_step"] >= row[wandb_log.STEP_KEY] for row in rows)
  assert rows[-1][wandb_log.CURVE_KEY]["_type"] == "image-file"
  history = _history(records)
  del history[wandb_log.CURVE_KEY]
  expected = _tensorboard(event_file)
  assert "charts/episodic_return" in expected and "losses/td_loss" in expected
  assert {tag: [(step, _float32(value)) for step, value in points] for tag, points in history.items()} == expected


def _config(run) -> dict:
  return {key: value for key, value in _items(run.config.update).items() if key != "_wandb"}


def _summary(records) -> dict:
  return _items(item for summary in _of_kind(records, "summary") for item in summary.update)


def _event_files(run_dir: Path) -> list[Path]:
  return sorted(run_dir.glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
  """A tiny offline-tracked CartPole run, then resumed to 800 env steps: its run dir."""
  tmp_path = tmp_path_factory.mktemp("wandb")
  run_dir = tmp_path / "run"
  for args in ([CARTPOLE, f"run_dir={run_dir}", *TINY, *WANDB], ["--resume", str(run_dir), "stop.env_steps=800"]):
    proc = train_cli(*args, env=_wandb_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    # wandb's service process goes with the run's process.
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if f"--pid {proc.pid}" in " ".join(p.info["cmdline"] or [])],
             timeout=10, what="wandb's service process to end")
  return run_dir


def test_a_run_logs_its_tensorboard_scalars_config_curve_and_summary_to_wandb(resumed_run):
  (offline_dir, records), _ = _offline_runs(resumed_run)
  assert offline_dir.parent == resumed_run / "wandb"
  _assert_same_curves(records, _event_files(resumed_run)[0])
  (run,) = _of_kind(records, "run")
  assert (run.project, run.entity, run.run_group, list(run.tags)) == ("test", "me", "sweep", ["a", "b"])
  assert run.display_name == resumed_run.name
  resolved = config_to_dict(load_config(resumed_run / "config.yaml"))   # the resumed run's: only stop differs
  assert {**_config(run), "stop": None} == {**resolved, "stop": None} and _config(run)["stop"]["env_steps"] == 600
  summary = _summary(records)
  assert summary["stopped_because"] == "env_steps" and {"eval_return", "wall_seconds", "learner_steps"} <= set(summary)
  assert _rows(records)[-1][wandb_log.STEP_KEY] == summary["env_steps"]
  assert list(offline_dir.glob("files/media/images/learning_curve_*.png"))


def test_a_resumed_run_continues_the_same_wandb_run(resumed_run):
  (_, first), (_, second) = _offline_runs(resumed_run)
  (first_run,), (second_run,) = _of_kind(first, "run"), _of_kind(second, "run")
  assert first_run.run_id == second_run.run_id == (resumed_run / wandb_log.RUN_ID_FILE).read_text().strip()
  _assert_same_curves(second, _event_files(resumed_run)[1])
  assert _rows(first)[-1]["_step"] < _rows(second)[0]["_step"]   # the second attempt goes on after the first
  assert _config(second_run) == config_to_dict(load_config(resumed_run / "config.yaml"))
  saved = json.loads((resumed_run / logger_lib.SUMMARY_FILE).read_text())
  assert {key: _summary(second)[key] for key in saved} == saved and saved["env_steps"] >= 800


def test_without_a_project_a_run_never_imports_wandb(tmp_path):
  args = [CARTPOLE, f"run_dir={tmp_path / 'run'}", *TINY, "stop.env_steps=100"]
  code = f"import sys\nfrom jaxrl.cli import main\nstatus = main({args!r})\nprint(status, 'wandb' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
  assert out.stdout.split()[-2:] == ["0", "False"], out.stderr


def test_a_missing_wandb_package_is_a_one_line_error_before_the_run_starts(tmp_path):
  run_dir = tmp_path / "run"
  code = ("import sys\nsys.modules['wandb'] = None\nfrom jaxrl.cli import main\n"
          f"sys.exit(main({[CARTPOLE, f'run_dir={run_dir}', *TINY, *WANDB]!r}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
  assert out.returncode == 2
  assert out.stderr.count("\n") == 1 and "wandb.project" in out.stderr and "pip install -e '.[wandb]'" in out.stderr
  assert not run_dir.exists()


class _FakeRun:
  """What ``start`` uses of wandb's Run; ``log`` fails from call ``fail_at`` on."""

  def __init__(self, starting_step: int = 0, fail_at: int = math.inf):
    self.id, self.starting_step, self.fail_at = "abc123", starting_step, fail_at
    self.logged: list[tuple[int, dict]] = []
    self.summary: dict = {}
    self.finished = False

  def log(self, values, step):
    if len(self.logged) + 1 >= self.fail_at:
      raise ConnectionError("quota exceeded\nmore detail")
    self.logged.append((step, values))

  def define_metric(self, name, step_metric):
    pass

  def finish(self, exit_code):
    self.finished = True


def _fake_wandb(monkeypatch, run: _FakeRun) -> list[dict]:
  """wandb replaced by a module whose ``init`` returns ``run``; the list of its init calls' arguments."""
  calls: list[dict] = []

  def init(**kwargs):
    calls.append(kwargs)
    return run

  monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Settings=dict, Image=str))
  return calls


def _tracked_logger(tmp_path: Path, tracker, **kwargs) -> logger_lib.MetricsLogger:
  return logger_lib.MetricsLogger(tmp_path, 0.0, scalars_to=tracker.log, **kwargs)


def test_a_wandb_error_is_one_line_and_turns_tracking_off_while_the_run_goes_on(tmp_path, monkeypatch, capsys):
  run = _FakeRun(fail_at=2)
  _fake_wandb(monkeypatch, run)
  tracker = wandb_log.start(RunConfig(wandb=WandbConfig(project="p")), tmp_path)
  with _tracked_logger(tmp_path, tracker) as logger:
    for step in range(4):
      logger.log({"env_steps": step, "learner_steps": step, "loss": 1.0})
  tracker.finish()
  assert [step for step, _ in run.logged] == [0] and not run.finished
  assert capsys.readouterr().err == ("jaxrl: wandb: log failed, tracking turned off: "
                                     "ConnectionError: quota exceeded\n")
  assert len(logger_lib.read_metrics(tmp_path)) == 4


def test_a_run_resumed_online_sends_only_the_steps_wandb_takes_and_keeps_its_id(tmp_path, monkeypatch):
  """Online, W&B resumes at the step after the last it holds and drops
  lower ones (with a warning each): they are not sent."""
  (tmp_path / wandb_log.RUN_ID_FILE).write_text("abc123\n")
  run = _FakeRun(starting_step=5)
  calls = _fake_wandb(monkeypatch, run)
  tracker = wandb_log.start(RunConfig(wandb=WandbConfig(project="p")), tmp_path)
  with _tracked_logger(tmp_path, tracker) as logger:
    for step in range(3, 8):
      logger.log({"env_steps": step, "learner_steps": step, "loss": float(step)})
  tracker.finish()
  assert (calls[0]["id"], calls[0]["resume"]) == ("abc123", "allow")
  assert run.logged == [(step, {"losses/td_loss": float(step), "env_steps": step}) for step in (5, 6, 7)]


def test_records_of_the_same_env_steps_share_a_row_unless_a_tag_repeats(tmp_path, monkeypatch):
  run = _FakeRun()
  _fake_wandb(monkeypatch, run)
  tracker = wandb_log.start(RunConfig(wandb=WandbConfig(project="p")), tmp_path)
  with _tracked_logger(tmp_path, tracker) as logger:
    for env_steps, record in [(10, {"episode_return": 1.0}), (10, {"episode_return": 3.0}),
                              (10, {"loss": 0.5}), (11, {"episode_return": 5.0}), (30, {"loss": 0.25})]:
      logger.log({"env_steps": env_steps, "learner_steps": 0, **record})
  tracker.finish()
  ret, mean = "charts/episodic_return", logger_lib.RECENT_RETURN_TAG
  assert run.logged == [(10, {ret: 1.0, mean: 1.0, "env_steps": 10}),
                        (11, {ret: 3.0, mean: 2.0, "losses/td_loss": 0.5, "env_steps": 10}),
                        (12, {ret: 5.0, mean: 3.0, "env_steps": 11}),
                        (30, {"losses/td_loss": 0.25, "env_steps": 30})]
