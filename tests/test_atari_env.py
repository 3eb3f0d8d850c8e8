"""Tests of Atari in jaxrl.envs (ale-py's AtariVectorEnv behind ``ALE/...``
ids): the preprocessing settings that reach ale-py, [H, W, K] frame stacks,
lost lives, unclipped game scores, the frame cap, the one-line errors, and
the RGB screen of ``--video``."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import imageio
import jax
import numpy as np
import pytest

from jaxrl import cli, runtime
from jaxrl.checkpoint import save_checkpoint
from jaxrl.config import AgentsConfig, EnvConfig, EvalConfig, RunConfig
from jaxrl.config_file import config_to_dict, save_config
from jaxrl.envs import (AtariEnvSet, EnvError, LearnerSpace, env_learner_spaces, has_time_limit, make_env_set,
                        make_vec_env, make_video_env)
from runs import ENV, ROOT

ale_py = pytest.importorskip("ale_py")

U8 = np.dtype(np.uint8)


def atari(game, num_envs=2, **kwargs):
  return make_env_set(EnvConfig(f"ALE/{game}-v5", kwargs), AgentsConfig(), num_envs)


def ale_arguments(envs):
  """The arguments ale-py's AtariVectorEnv was built with: its defaults,
  under the id's and jaxrl's (what gymnasium passed, ``envs.spec.kwargs``)."""
  parameters = inspect.signature(ale_py.AtariVectorEnv).parameters.values()
  defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
  return {**defaults, **envs.spec.kwargs}


def test_the_standard_preprocessing_is_the_default():
  """Frame skip 4, max-pool, grayscale 84x84, a stack of 4, up to 30 no-ops,
  108,000 frames, sticky actions 0.25; no FIRE at reset; jaxrl's own keys
  off in ale-py; one worker thread."""
  envs = make_vec_env(EnvConfig("ALE/Pong-v5"), 2)
  args = ale_arguments(envs)
  envs.close()
  assert isinstance(envs, ale_py.AtariVectorEnv)
  expected = {"frameskip": 4, "maxpool": True, "grayscale": True, "img_height": 84, "img_width": 84,
              "stack_num": 4, "noop_max": 30, "max_num_frames_per_episode": 108_000,
              "repeat_action_probability": 0.25, "full_action_space": False, "use_fire_reset": False,
              "reward_clipping": False, "episodic_life": False, "life_loss_info": False, "num_threads": 1}
  assert {key: args[key] for key in expected} == expected


def test_frame_skip_stack_size_and_no_ops_reach_the_env():
  cfg = EnvConfig("ALE/Breakout-v5", {"frameskip": 3, "stack_num": 2, "img_height": 50, "img_width": 40,
                                       "noop_max": 0, "num_threads": 2})
  envs = make_vec_env(cfg, 3)
  assert ale_arguments(envs)["num_threads"] == 2
  _, info = envs.reset(seed=0)
  assert (info["episode_frame_number"] == 0).all()   # no no-op
  for t in range(1, 6):
    _, _, _, _, info = envs.step(np.ones(3, np.int64))
    assert (info["episode_frame_number"] == 3 * t).all()
  envs.close()
  with make_env_set(cfg, AgentsConfig(), 3) as env_set:
    assert env_set.learners["agent_0"].obs_shape == (50, 40, 2)
    assert env_set.reset(seed=0)["agent_0"].shape == (3, 50, 40, 2)
  # The default: 0 to 29 no-op frames, drawn per env from its seed.
  envs = make_vec_env(EnvConfig("ALE/Breakout-v5"), 4)
  frames = envs.reset(seed=0)[1]["episode_frame_number"]
  envs.close()
  assert ((0 <= frames) & (frames < 30)).all() and len(set(frames.tolist())) > 1, frames


def test_fire_at_reset_and_the_full_action_set_can_be_asked_for():
  envs = make_vec_env(EnvConfig("ALE/Breakout-v5", {"noop_max": 0, "use_fire_reset": True}), 2)
  assert (envs.reset(seed=0)[1]["episode_frame_number"] == 1).all()   # the FIRE frame
  envs.close()
  assert env_learner_spaces(EnvConfig("ALE/Pong-v5"), AgentsConfig())["agent_0"].num_actions == 6
  assert env_learner_spaces(EnvConfig("ALE/Pong-v5", {"full_action_space": True}),
                            AgentsConfig())["agent_0"].num_actions == 18


@pytest.mark.parametrize("sticky", [0.0, 0.25])
def test_sticky_actions_reach_the_env(sticky):
  """Without sticky actions (and no-ops) Pong is deterministic: envs of
  different seeds given the same actions play the same game; with them,
  their games part."""
  rng = np.random.default_rng(0)
  kwargs = {"noop_max": 0} if sticky else {"noop_max": 0, "repeat_action_probability": 0.0}
  with atari("Pong", 4, **kwargs) as envs:
    envs.reset(seed=0)
    for _ in range(100):
      obs = envs.step({"agent_0": np.full(4, rng.integers(0, 6))})[0]["agent_0"].obs
  assert all(np.array_equal(obs[0], o) for o in obs[1:]) == (sticky == 0.0)


def test_observations_are_hwc_stacks_of_the_newest_frames_oldest_first():
  """The env set's observations are ale-py's [K, H, W] stacks as [H, W, K]:
  each step shifts the stack by one frame, the newest last; a reset (the
  first and the autoreset step after the frame cap) pads it with zeros."""
  cfg = EnvConfig("ALE/Breakout-v5", {"max_num_frames_per_episode": 40})
  rng = np.random.default_rng(0)
  raw = make_vec_env(cfg, 2)
  with make_env_set(cfg, AgentsConfig(), 2) as envs:
    assert isinstance(envs, AtariEnvSet)
    assert envs.learners == {"agent_0": LearnerSpace(("agent_0",), (84, 84, 4), U8, 4, (0.0, 255.0), True)}
    obs = envs.reset(seed=1)["agent_0"]
    np.testing.assert_array_equal(obs, raw.reset(seed=1)[0].transpose(0, 2, 3, 1))
    assert obs.dtype == U8 and obs.flags.c_contiguous
    for t in range(1, 25):
      action = rng.integers(0, 4, 2)
      step = envs.step({"agent_0": action})[0]["agent_0"]
      np.testing.assert_array_equal(step.obs, raw.step(action)[0].transpose(0, 2, 3, 1))
      reset = t in (11, 22)   # 10 steps of 4 frames, then the autoreset step
      assert (step.active != reset).all()
      if reset:
        assert (step.obs[..., :-1] == 0).all() and step.obs[..., -1].any()
      else:
        np.testing.assert_array_equal(step.obs[..., :-1], obs[..., 1:])
      obs = step.obs
  raw.close()


@pytest.mark.parametrize("frameskip, cap_step", [(4, 10), (5, 8)])
def test_the_frame_cap_truncates(frameskip, cap_step):
  """max_num_frames_per_episode counts the frames of agent steps: 40 frames
  are 10 steps at frame skip 4, 8 at 5; the next step is the reset."""
  with atari("Pong", frameskip=frameskip, max_num_frames_per_episode=40) as envs:
    assert has_time_limit(envs)
    envs.reset(seed=0)
    steps = [envs.step({"agent_0": np.zeros(2, np.int64)}) for _ in range(2 * cap_step + 2)]
  truncated = [t for t, (step, _) in enumerate(steps, 1) if step["agent_0"].truncated.all()]
  assert truncated == [cap_step, 2 * cap_step + 1]
  assert not any(step["agent_0"].terminated.any() for step, _ in steps)
  resets = (cap_step + 1, 2 * cap_step + 2)
  assert [env_steps for _, env_steps in steps] == [0 if t in resets else 2 for t in range(1, len(steps) + 1)]


def test_life_lost_at_each_lost_life_but_the_last():
  """Breakout has 5 lives: a game played through (ale-py's life-loss ends
  off) has 4 steps with life_lost, then ends terminated on the fifth; no
  life is lost in a step that ends the episode, or in a reset step. Pong
  has no lives."""
  rng = np.random.default_rng(0)
  losses, games = np.zeros(2, int), []
  with atari("Breakout") as envs:
    envs.reset(seed=0)
    while len(games) < 4:
      step = envs.step({"agent_0": rng.integers(0, 4, 2)})[0]["agent_0"]
      assert step.life_lost.dtype == bool and not (step.life_lost & ~step.active).any()
      assert not (step.life_lost & (step.terminated | step.truncated)).any()
      losses += step.life_lost
      for e in step.terminated.nonzero()[0]:
        games.append(losses[e])
        losses[e] = 0
  assert games == [4] * 4
  with atari("Pong") as envs:
    envs.reset(seed=0)
    assert not any(envs.step({"agent_0": rng.integers(0, 6, 2)})[0]["agent_0"].life_lost.any()
                   for _ in range(100))


def test_rewards_are_the_games_unclipped_scores():
  """Space Invaders scores 5 to 30 an invader (and more for the mothership):
  the env set's rewards are those (ale-py's reward clipping off), as floats."""
  rng = np.random.default_rng(0)
  rewards = set()
  with atari("SpaceInvaders") as envs:
    envs.reset(seed=0)
    for _ in range(300):
      step = envs.step({"agent_0": rng.integers(0, 6, 2)})[0]["agent_0"]
      assert step.reward.dtype == np.float64
      rewards |= set(step.reward.tolist())
  scores = rewards - {0.0}
  assert len(scores) >= 3 and min(scores) >= 5 and all(r % 5 == 0 for r in scores), rewards


@pytest.mark.parametrize("kwargs, expected", [
    ({"reward_clipping": True}, "env.kwargs.reward_clipping: jaxrl keeps ale-py's reward_clipping off "
                                "(episodes are whole games, scored unclipped); set env.clip_rewards instead"),
    ({"episodic_life": True}, "env.kwargs.episodic_life: jaxrl keeps ale-py's episodic_life off "
                              "(episodes are whole games, scored unclipped); set env.terminal_on_life_loss "),
    ({"life_loss_info": False}, "env.kwargs.life_loss_info: jaxrl keeps ale-py's life_loss_info off "
                                "(episodes are whole games, scored unclipped); set env.terminal_on_life_"),
    ({"max_num_frames_per_episode": 0}, "env.kwargs.max_num_frames_per_episode: must be an integer >= 1 "
                                        "(ale-py truncates every step otherwise), got 0"),
    ({"obs_type": "rgb"}, "env.kwargs: 'ALE/Pong-v5' rejects them: "),   # AtariEnv's; no fallback to it
    ({"grayscale": False}, "env.id: 'ALE/Pong-v5' has Box(0, 255, (4, 84, 84, 3), uint8) observations; "
                           "jaxrl needs a Box of rank 1 or 3"),
    ({"continuous": True}, "env.id: 'ALE/Pong-v5' has Box actions; jaxrl's DQN and IQN need Discrete"),
])
def test_settings_jaxrl_cannot_serve_are_one_line_env_errors(kwargs, expected):
  with pytest.raises(EnvError) as info:
    atari("Pong", **kwargs)
  message = str(info.value)
  assert "\n" not in message and message.startswith(expected), message


def test_a_bad_atari_id_is_a_one_line_env_error():
  with pytest.raises(EnvError) as info:
    atari("NotAGame")
  assert str(info.value) == ("env.id: cannot make 'ALE/NotAGame-v5': Environment `NotAGame` doesn't exist "
                             "in namespace ALE.")


def test_an_ale_id_without_ale_py_names_the_extra(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "ale_py" else find_spec(name, *args))
  monkeypatch.delitem(gym.registry, "ALE/Pong-v5")   # as if ale_py was never imported
  with pytest.raises(EnvError) as info:
    atari("Pong")
  assert str(info.value) == "env.id: 'ALE/Pong-v5' needs the ale-py package: pip install -e '.[atari]'"


def test_ale_ids_need_no_env_imports_and_take_them():
  code = ("import sys\n"
          "from jaxrl.config import AgentsConfig, EnvConfig\n"
          "from jaxrl.envs import env_learner_spaces\n"
          "assert 'ale_py' not in sys.modules\n"
          "print(env_learner_spaces(EnvConfig('ALE/Breakout-v5'), AgentsConfig())['agent_0'].num_actions)")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV,
                        timeout=60, check=False)
  assert (proc.returncode, proc.stdout) == (0, "4\n"), proc.stderr
  spaces = env_learner_spaces(EnvConfig("ALE/Breakout-v5", imports=("ale_py",)), AgentsConfig())
  assert spaces["agent_0"].num_actions == 4


def test_the_video_env_renders_the_screen_of_the_game_the_agent_sees():
  """At full size, ungrayed and unpooled, the agent's newest frame is the
  grayscale (ITU-R 601 luma) of the RGB screen the video env renders, step
  by step: the twin that renders plays the same game."""
  rng = np.random.default_rng(0)
  env = make_video_env(EnvConfig("ALE/Breakout-v5", {"img_height": 210, "img_width": 160, "maxpool": False}))
  assert env.metadata["render_fps"] == 15
  obs, _ = env.reset(seed=3)
  for t in range(80):
    screen = env.render()
    assert screen.shape == (210, 160, 3) and screen.dtype == U8
    luma = np.round(screen @ np.array([0.299, 0.587, 0.114]))
    assert np.abs(luma - obs[..., -1]).max() <= 1, t
    obs, *_ = env.step(int(rng.integers(0, 4)))
  env.close()


def test_the_video_env_detects_a_twin_out_of_step():
  env = make_video_env(EnvConfig("ALE/Breakout-v5"))
  env.reset(seed=3)
  env._screen.reset(seed=4)   # pylint: disable=protected-access  # other no-ops, other sticky actions
  with pytest.raises(EnvError, match="^the twin env that shows the RGB screen fell out of step"):
    for _ in range(50):
      env.step(1)
  env.close()


def test_evaluate_video_of_an_atari_run_shows_the_rgb_screen(tmp_path, capsys, monkeypatch):
  """--video of an Atari run (a fresh policy's checkpoint) writes the game's
  210x160 RGB screens, the first and one a step (30 steps of 4 frames), not
  its 84x84 input: the first is the screen after a reset of seed 0."""
  written, mimsave = [], imageio.mimsave

  def recorded(path, frames, **kwargs):
    written.append(frames)
    mimsave(path, frames, **kwargs)

  monkeypatch.setattr(imageio, "mimsave", recorded)
  monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)   # a GIF, quicker to write than an MP4
  cfg = RunConfig(env=EnvConfig("ALE/Pong-v5", {"max_num_frames_per_episode": 120}),
                  eval=EvalConfig(episodes=1), run_dir=str(tmp_path / "run"))
  (tmp_path / "run").mkdir()
  save_config(cfg, tmp_path / "run" / "config.yaml")
  agent = runtime.make_agents(cfg)["agent_0"]
  save_checkpoint(tmp_path / "run" / "checkpoints", {"agent_0": jax.jit(agent.init)(jax.random.PRNGKey(0))},
                  {"env_steps": 0, "episodes": 0, "learner_steps": 0}, config_to_dict(cfg), keep=1)
  assert cli.evaluate_main([str(tmp_path / "run"), "--video", str(tmp_path / "video")]) == 0
  video = Path(json.loads(capsys.readouterr().out)["video"])
  assert video.parent == tmp_path / "video" and video.stat().st_size > 1000
  [frames] = written
  assert len(frames) == 31 and all(f.shape == (210, 160, 3) and f.dtype == U8 for f in frames)
  env = make_video_env(cfg.env)
  env.reset(seed=0)
  np.testing.assert_array_equal(frames[0], env.render())
  env.close()
