"""Tests of jaxrl.config and jaxrl.config_file: typed run configs, YAML,
overrides and their errors."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

from hypothesis import example, given, settings, strategies as st
import pytest
import yaml

from jaxrl import config as C
from jaxrl import config_file as F

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.yaml"))
TOP_KEYS = [f.name for f in dataclasses.fields(C.RunConfig)]


def _leaf_keys(prefix: str, cls: type) -> list[str]:
  """The dotted keys of the scalar fields of a config dataclass, nested ones included."""
  return [key for name, hint in C._hints(cls).items()
          for key in (_leaf_keys(f"{prefix}{name}.", hint) if dataclasses.is_dataclass(hint) else [prefix + name])]


LEAF_KEYS = [key for key in _leaf_keys("", C.RunConfig) if key not in ("seed", "run_dir")] + [
    "seed", "run_dir", "env.kwargs.max_episode_steps"]


def config_error(fn, *args) -> str:
  """The message of the ConfigError ``fn(*args)`` raises; checks it is one line."""
  with pytest.raises(C.ConfigError) as info:
    fn(*args)
  message = str(info.value)
  assert "\n" not in message and message.strip() == message, message
  return message


def test_defaults_are_valid():
  cfg = C.RunConfig()
  assert F.load_config(None) == cfg
  assert F.config_from_dict({}) == cfg
  assert F.config_from_dict({"agent": None}) == cfg  # empty YAML section
  assert issubclass(C.ConfigError, ValueError)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
  from jaxrl.envs import env_learner_spaces  # pylint: disable=import-outside-toplevel
  cfg = F.load_config(path)
  assert env_learner_spaces(cfg.env, cfg.agents)   # a gymnasium or PettingZoo env jaxrl serves
  assert cfg.agent.algo in path.stem.replace("drq", "dqn")   # DrQ is DQN with random shifts
  assert cfg.stop != C.StopConfig(), "a shipped config must stop by itself"


def test_the_shipped_configs_exist():
  assert {p.stem for p in CONFIGS} >= {
      "cartpole_dqn", "cartpole_iqn", "acrobot_dqn", "acrobot_iqn", "mpe_spread_dqn", "mpe_speaker_listener_dqn"}


@pytest.mark.parametrize("override, get, expected", [
    ("agent.learning_rate=1e-3", lambda c: c.agent.learning_rate, 1e-3),
    ("agent.learning_rate=2", lambda c: c.agent.learning_rate, 2.0),
    ("agent.hidden_sizes=[64,64]", lambda c: c.agent.hidden_sizes, (64, 64)),
    ("env.kwargs.max_episode_steps=200", lambda c: c.env.kwargs, {"max_episode_steps": 200}),
    ("seed=3", lambda c: c.seed, 3),
    ("stop.env_steps=1_000_000", lambda c: c.stop.env_steps, 1_000_000),
    ("stop.seconds=60", lambda c: c.stop.seconds, 60.0),
    ("agent.max_grad_norm=null", lambda c: c.agent.max_grad_norm, None),
    ("runtime.progress=false", lambda c: c.runtime.progress, False),
    ("runtime.learner_cpus=2", lambda c: c.runtime.learner_cpus, 2),
    ("env.id=Acrobot-v1", lambda c: c.env.id, "Acrobot-v1"),
    (" run_dir = runs/a=b ", lambda c: c.run_dir, "runs/a=b"),
    ("agent={algo: iqn}", lambda c: c.agent, C.AgentConfig(algo="iqn")),
    ("agents.share=type", lambda c: c.agents.share, "type"),
    ("agents.overrides.adversary.learning_rate=1e-3", lambda c: c.agents.overrides,
     {"adversary": {"learning_rate": 1e-3}}),
])
def test_override_sets_one_typed_value(override, get, expected):
  cfg = F.load_config(None, [override])
  value = get(cfg)
  assert value == expected and type(value) is type(expected)
  changed = {k for k, v in F.config_to_dict(cfg).items() if v != F.config_to_dict(C.RunConfig())[k]}
  assert len(changed) == 1


def test_overrides_apply_in_order_then_validate(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("agent: {algo: iqn, learning_rate: 0.1}\nreplay: {capacity: 5000}\n")
  # min_size 2_000 > capacity 500 alone, valid once both are applied.
  cfg = F.load_config(path, ["replay.capacity=500", "replay.min_size=200", "seed=1", "seed=2"])
  assert (cfg.replay.capacity, cfg.replay.min_size, cfg.seed) == (500, 200, 2)
  assert cfg.agent == C.AgentConfig(algo="iqn", learning_rate=0.1)
  resumed = F.apply_overrides(cfg, ["agent.learning_rate=1e-3", "env.kwargs.max_episode_steps=9"])
  assert resumed == dataclasses.replace(
      cfg, agent=dataclasses.replace(cfg.agent, learning_rate=1e-3),
      env=C.EnvConfig(kwargs={"max_episode_steps": 9}))
  assert F.apply_overrides(cfg, []) == cfg


@pytest.mark.parametrize("overrides, expected", [
    (["agent.learning_rate=-1"], "agent.learning_rate: must be a finite number > 0, got -1.0"),
    (["agent.lerning_rate=1e-3"], "agent.lerning_rate: unknown key (did you mean agent.learning_rate?)"),
    (["learner.batch_size=abc"], "learner.batch_size: expected int, got 'abc'"),
    (["learner.batch_size=1.5"], "learner.batch_size: expected int, got 1.5"),
    (["learner.batch_size=true"], "learner.batch_size: expected int, got True"),
    (["stop.env_steps=x"], "stop.env_steps: expected int or null, got 'x'"),
    (["agent.learning_rate=false"], "agent.learning_rate: expected float, got False"),
    (["agent.learning_rate=1" + "0" * 400], "agent.learning_rate: expected float, got 1000"),
    (["runtime.progress=yes"], "runtime.progress: expected bool, got 'yes'"),
    (["runtime.progress=1"], "runtime.progress: expected bool, got 1"),
    (["env.id=123"], "env.id: expected str, got 123"),
    (["env.kwargs=3"], "env.kwargs: expected a mapping, got 3"),
    (["env.kwargs={1: 2}"], "env.kwargs: must be a mapping with string keys"),
    (["agent.hidden_sizes=64"], "agent.hidden_sizes: expected a list of int, got 64"),
    (["agent.hidden_sizes=[64, x]"], "agent.hidden_sizes[1]: expected int, got 'x'"),
    (["agent.hidden_sizes=[]"], "agent.hidden_sizes: must be a non-empty list"),
    (["agent=3"], "agent: expected a mapping, got 3"),
    (["agent.target_tau=0"], "agent.target_tau: must be in (0, 1], got 0.0"),
    (["agent.algo=ppo"], "agent.algo: must be one of"),
    (["runtime.start_method=fork"], 'runtime.start_method: must be "spawn" or "forkserver" ("fork" is unsafe'),
    (["runtime.mode=parallel"], "runtime.mode: must be one of"),
    (["runtime.learner_cpus=0"], "runtime.learner_cpus: must be an integer >= 1, got 0"),
    (["replay.gamma=1.5"], "replay.gamma: must be in [0, 1], got 1.5"),
    (["replay.min_size=200000"],
     "replay.min_size: must be <= replay.capacity // actors.num (100000 // 2 = 50000), got 200000"),
    (["replay.min_size=64"], "replay.min_size: must be >= learner.batch_size (128), got 64"),
    (["replay.rate_tolerance=-1"], "replay.rate_tolerance: must be an integer >= 0, got -1"),
    (["stop.eval_return=100", "eval.interval=0"], "stop.eval_return: must be null while evaluation is off"),
    (["seed=-1"], "seed: must be an integer in [0, 2**32 - 1], got -1"),
    (["seed=4294967296"], "seed: must be an integer in [0, 2**32 - 1], got 4294967296"),
    (["seed=18446744073709551616"], "seed: must be an integer in [0, 2**32 - 1], got 18446744073709551616"),
    (["env.imports=minatar.gym"], "env.imports: expected a list of str, got 'minatar.gym'"),
    (["env.imports=[ale_py, '']"], "env.imports: must be a list of module names, e.g. [minatar.gym], got"),
    (["bogus.x=1"], "bogus: unknown key (expected one of: env, agent, agents, replay,"),
    (["seed.x=1"], "seed.x: unknown key (seed is not a section)"),
    (["agent.hidden_sizes.x=1"], "agent.hidden_sizes.x: unknown key (agent.hidden_sizes is not a section)"),
    (["foo"], "bad override 'foo' (expected key=value)"),
    (["=3"], "bad override '=3' (expected key=value)"),
    (["agent..algo=iqn"], "bad override 'agent..algo=iqn' (expected key=value)"),
    (["agent.hidden_sizes=[1"], "bad override 'agent.hidden_sizes=[1': invalid YAML value, line"),
    (["agents.share=some"], 'agents.share: must be one of "none", "type", "all", got \'some\''),
    (["agents.overrides=[1]"], "agents.overrides: expected a mapping, got [1]"),
    (["agents.overrides={1: {}}"], "agents.overrides: must be a mapping {learner_id: {agent field: value}}"),
    (["agents.overrides.adversary=3"],
     "agents.overrides.adversary: must be a mapping {agent field: value}, got 3"),
    (["agents.overrides.adversary.lerning_rate=1e-3"],
     "agents.overrides.adversary.lerning_rate: unknown key "
     "(did you mean agents.overrides.adversary.learning_rate?)"),
    (["agents.overrides.adversary.epsilon_decay_steps=x"],
     "agents.overrides.adversary.epsilon_decay_steps: expected int, got 'x'"),
    (["agents.overrides.adversary.learning_rate=-1"],
     "agents.overrides.adversary.learning_rate: must be a finite number > 0, got -1.0"),
    (["agent.epsilon_start=0.5", "agents.overrides.prey.epsilon_end=0.6"],
     "agents.overrides.prey.epsilon_end: must be <= epsilon_start (0.5), got 0.6"),
])
def test_mistake_is_one_line_naming_the_key(overrides, expected):
  message = config_error(F.load_config, None, overrides)
  assert message.startswith(expected), message
  message = config_error(F.apply_overrides, C.RunConfig(), overrides)
  assert message.startswith(expected), message


@pytest.mark.parametrize("text, expected", [
    ("agent:\n  learning_rate: [1\n", "invalid YAML, line"),
    ("agent: {algo: iqn}\nagent: {learning_rate: 1.0}\n", "invalid YAML, line 2, column 1: found duplicate key 'agent'"),
    ("- env\n- agent\n", "expected a mapping of config sections, got list"),
    (b"\xff\xfe\x00", "not a UTF-8 text file"),
])
def test_bad_file_is_one_line_naming_the_file(tmp_path, text, expected):
  path = tmp_path / "bad.yaml"
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  assert config_error(F.load_config, path).startswith(f"{path}: {expected}")
  missing = tmp_path / "missing.yaml"
  assert config_error(F.load_config, missing).startswith(f"{missing}: cannot read config")


def test_file_mistakes_name_the_dotted_key(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("learner:\n  batch_size: 1e-3\n")
  assert config_error(F.load_config, path) == "learner.batch_size: expected int, got 0.001"
  path.write_text("env:\n  idd: Foo\n")
  assert config_error(F.load_config, path) == "env.idd: unknown key (did you mean env.id?)"
  path.write_text('env:\n  "i\\nd": Foo\n')
  assert config_error(F.load_config, path).startswith("env.'i\\nd': unknown key")


@settings(max_examples=300)
@given(key=st.sampled_from(LEAF_KEYS) | st.text(max_size=20), value=st.text(max_size=30))
def test_any_override_is_applied_or_a_one_line_config_error(key, value):
  try:
    cfg = F.apply_overrides(C.RunConfig(), [f"{key}={value}"])
  except C.ConfigError as e:
    assert "\n" not in str(e)
  else:
    assert F.config_from_dict(F.config_to_dict(cfg)) == cfg


@st.composite
def run_configs(draw):
  """Valid RunConfigs varying fields of every kind (str, dict, tuple, optional, bool)."""
  finite = dict(allow_nan=False, allow_infinity=False)
  scalars = st.none() | st.booleans() | st.integers() | st.floats(**finite) | st.text()
  kwargs = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                           scalars | st.lists(scalars, max_size=3), max_size=4)
  batch_size = draw(st.integers(1, 256))
  num_actors = draw(st.integers(1, 8))
  capacity = draw(st.integers(batch_size * num_actors, 10**7))
  overrides = st.dictionaries(st.text(min_size=1), st.fixed_dictionaries({}, optional={
      "learning_rate": st.floats(1e-8, 1.0),
      "hidden_sizes": st.lists(st.integers(1, 1024), min_size=1, max_size=3).map(tuple),
      "double_q": st.booleans()}), max_size=3)
  return C.RunConfig(
      env=C.EnvConfig(id=draw(st.text(min_size=1)), kwargs=draw(kwargs),
                      imports=tuple(draw(st.lists(st.sampled_from(["ale_py", "minatar.gym", "my_envs"]))))),
      agent=C.AgentConfig(
          algo=draw(st.sampled_from(["dqn", "iqn"])),
          hidden_sizes=tuple(draw(st.lists(st.integers(1, 1024), min_size=1, max_size=4))),
          learning_rate=draw(st.floats(1e-8, 1.0)),
          max_grad_norm=draw(st.none() | st.floats(0.1, 100.0)),
          double_q=draw(st.booleans()),
          target_tau=draw(st.floats(0.0, 1.0, exclude_min=True))),
      agents=C.AgentsConfig(share=draw(st.sampled_from(C.SHARES)), overrides=draw(overrides)),
      replay=C.ReplayConfig(
          capacity=capacity, min_size=draw(st.integers(batch_size, capacity // num_actors)),
          gamma=draw(st.floats(0.0, 1.0)),
          samples_per_insert=draw(st.none() | st.floats(1e-3, 1e3))),
      actors=C.ActorsConfig(num=num_actors),
      learner=C.LearnerConfig(batch_size=batch_size),
      stop=C.StopConfig(env_steps=draw(st.none() | st.integers(1, 10**12)),
                        eval_return=draw(st.none() | st.floats(**finite))),
      runtime=C.RuntimeConfig(mode=draw(st.sampled_from(["async", "sync"])),
                              progress=draw(st.booleans())),
      seed=draw(st.integers(0, C.MAX_SEED)),
      run_dir=draw(st.none() | st.text(min_size=1)))


@settings(max_examples=60, deadline=None)
@given(cfg=run_configs())
@example(cfg=C.RunConfig(env=C.EnvConfig(id="1e3", kwargs={"a": "yes", "b": "1e-3", "c": "null"}),
                         run_dir="true"))
def test_round_trip_through_dict_and_yaml(tmp_path_factory, cfg):
  tree = F.config_to_dict(cfg)
  assert yaml.safe_load(yaml.safe_dump(tree)) == tree  # plain YAML types only
  assert F.config_from_dict(tree) == cfg
  path = tmp_path_factory.getbasetemp() / "round_trip.yaml"
  F.save_config(cfg, path)
  assert F.load_config(path) == cfg


@given(lr=st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]))
def test_agent_rejects_learning_rate_not_positive(lr):
  with pytest.raises(ValueError, match=r"^learning_rate must be"):
    C.AgentConfig(learning_rate=lr)


@given(tau=st.floats())
def test_agent_accepts_target_tau_in_half_open_unit_interval_only(tau):
  if 0.0 < tau <= 1.0:
    assert C.AgentConfig(target_tau=tau).target_tau == tau
  else:
    with pytest.raises(ValueError, match=r"^target_tau must be in \(0, 1\]"):
      C.AgentConfig(target_tau=tau)


@given(algo=st.text().filter(lambda a: a not in ("dqn", "iqn")))
def test_agent_rejects_unknown_algo(algo):
  with pytest.raises(ValueError, match=r"^algo must be"):
    C.AgentConfig(algo=algo)


@pytest.mark.parametrize("cls, field, value", [
    (C.EnvConfig, "id", ""),
    (C.EnvConfig, "kwargs", [1]),
    (C.EnvConfig, "imports", "ale_py"),
    (C.EnvConfig, "imports", ["minatar/gym"]),
    (C.ReplayConfig, "capacity", 0),
    (C.ReplayConfig, "n_step", 0),
    (C.ReplayConfig, "gamma", -0.1),
    (C.ReplayConfig, "samples_per_insert", 0.0),
    (C.ReplayConfig, "rate_tolerance", -5),
    (C.ActorsConfig, "num", 0),
    (C.ActorsConfig, "envs_per_actor", 2.0),
    (C.ActorsConfig, "max_restarts", -1),
    (C.LearnerConfig, "batch_size", 0),
    (C.LearnerConfig, "publish_interval", 0),
    (C.LearnerConfig, "updates_per_call", 0),
    (C.EvalConfig, "interval", -1),
    (C.EvalConfig, "episodes", 0),
    (C.EvalConfig, "epsilon", 1.5),
    (C.StopConfig, "env_steps", 0),
    (C.StopConfig, "seconds", 0.0),
    (C.StopConfig, "eval_return", math.nan),
    (C.RuntimeConfig, "start_method", "fork"),
    (C.RuntimeConfig, "log_interval_seconds", 0.0),
    (C.RuntimeConfig, "progress", 1),
    (C.CheckpointConfig, "interval_seconds", -1.0),
    (C.CheckpointConfig, "keep", 0),
    (C.CheckpointConfig, "replay", "no"),
    (C.AgentsConfig, "share", "some"),
    (C.AgentsConfig, "overrides", [1]),
    (C.RunConfig, "seed", -1),
    (C.RunConfig, "seed", 2**32),
    (C.RunConfig, "run_dir", ""),
    (C.RunConfig, "agent", {"algo": "dqn"}),
])
def test_section_rejects_invalid_value_naming_the_field(cls, field, value):
  with pytest.raises(ValueError, match=f"^{field} must be"):
    cls(**{field: value})


# --- Issue 10 ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 64), num=st.integers(1, 8), min_size=st.integers(1, 64),
       batch_size=st.integers(1, 8))
def test_replay_sizes_are_valid_iff_the_replay_accepts_them(capacity, num, min_size, batch_size):
  """Item 14: a config that validates builds its replay; one the replay
  would reject is a ConfigError naming replay.min_size, before any run dir."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxrl.replay import SharedReplay  # pylint: disable=import-outside-toplevel
  overrides = [f"replay.capacity={capacity}", f"actors.num={num}", f"replay.min_size={min_size}",
               f"learner.batch_size={batch_size}"]
  try:
    cfg = F.load_config(None, overrides)
  except C.ConfigError as e:
    assert str(e).startswith("replay.min_size: must be"), e
    assert min_size > capacity // num or min_size < batch_size
    return
  replay = SharedReplay.create((1,), np.float32, cfg.replay.capacity, cfg.actors.num, cfg.replay.min_size,
                               cfg.replay.samples_per_insert, cfg.replay.rate_tolerance)
  replay.close()
  replay.unlink()


def test_min_size_is_checked_against_each_actors_share():
  """Item 14: each actor writes capacity // actors.num slots of the replay."""
  message = config_error(F.load_config, None, ["replay.min_size=60000", "actors.num=2"])
  assert message == ("replay.min_size: must be <= replay.capacity // actors.num (100000 // 2 = 50000), "
                     "got 60000")
  assert F.load_config(None, ["replay.min_size=50000", "actors.num=2"]).replay.min_size == 50_000
  assert F.load_config(None, ["replay.min_size=60000", "actors.num=1"]).replay.min_size == 60_000


def test_seed_is_a_32_bit_unsigned_integer():
  """Item 15: PRNGKey keeps only the low 32 bits of a seed, so larger ones are refused."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  assert C.MAX_SEED == 2**32 - 1
  assert F.load_config(None, [f"seed={C.MAX_SEED}"]).seed == C.MAX_SEED
  for seed in (2**32, 2**32 + 5, 2**64):
    message = config_error(F.load_config, None, [f"seed={seed}"])
    assert message == f"seed: must be an integer in [0, 2**32 - 1], got {seed}"
  # Every use of the seed in jaxrl.runtime works at the largest one.
  assert not np.array_equal(jax.random.PRNGKey(C.MAX_SEED), jax.random.PRNGKey(0))
  assert np.random.SeedSequence([C.MAX_SEED, 1, 0, 0]).generate_state(1).dtype == np.uint32


@pytest.mark.parametrize("text, get, expected", [
    ("stop.env_steps=1e5", lambda c: c.stop.env_steps, 100_000),
    ("stop.env_steps=1.5e5", lambda c: c.stop.env_steps, 150_000),
    ("stop.env_steps=100_000", lambda c: c.stop.env_steps, 100_000),
    ("replay.capacity=2E+5", lambda c: c.replay.capacity, 200_000),
    ("agent.hidden_sizes=[1e2, 64]", lambda c: c.agent.hidden_sizes, (100, 64)),
    ("agent.learning_rate=1e-3", lambda c: c.agent.learning_rate, 1e-3),
])
def test_integers_may_be_written_with_an_exponent_or_underscores(tmp_path, text, get, expected):
  """Item 16: 1e5 and 100_000 are integers where an int is expected, in
  overrides and in YAML files; the value keeps its field's type."""
  value = get(F.load_config(None, [text]))
  assert value == expected and type(value) is type(expected)
  key, _, raw = text.partition("=")
  section, _, name = key.partition(".")
  path = tmp_path / "c.yaml"
  path.write_text(f"{section}:\n  {name}: {raw}\n")
  value = get(F.load_config(path))
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, expected", [
    ("stop.env_steps=1.5", "stop.env_steps: expected int or null, got 1.5"),
    ("learner.batch_size=1e-3", "learner.batch_size: expected int, got 0.001"),
    ("learner.batch_size=1e999", "learner.batch_size: expected int, got inf"),
    ("agent.hidden_sizes=[64.5]", "agent.hidden_sizes[0]: expected int, got 64.5"),
])
def test_a_fractional_integer_is_still_a_one_line_error(text, expected):
  assert config_error(F.load_config, None, [text]) == expected


def test_every_key_is_documented_in_the_help_with_its_type_and_default():
  """Item 16: the text of jaxrl-train --help lists every dotted key, grouped by section."""
  text = F.config_keys_help()
  defaults = F.config_to_dict(C.RunConfig())
  for section, hint in C._hints(C.RunConfig).items():
    if dataclasses.is_dataclass(hint):
      assert f"\n{section}: " in text
      assert set(F._field_docs(hint)) == set(C._hints(hint)), f"{section}: undocumented fields"
  for key in LEAF_KEYS[:-1]:   # all but env.kwargs.max_episode_steps
    default = defaults
    for name in key.split("."):
      default = default[name]
    line = f"  {key}: "
    assert line in text, key
    entry = text[text.index(line):].splitlines()
    assert entry[0].endswith(f" = {json.dumps(default)}"), entry[0]
    assert entry[1].startswith("      ") and entry[1].strip(), key   # its description
  assert "  stop.env_steps: int or null = null\n" in text
  assert "  agent.hidden_sizes: list of int = [120, 84]\n" in text
  assert "  env.kwargs: mapping = {}\n" in text


def test_env_imports_is_a_list_of_module_names(tmp_path):
  """Item 17: env.imports, documented, a tuple of dotted module names, () by default."""
  assert C.EnvConfig().imports == ()
  cfg = F.load_config(None, ["env.imports=[minatar.gym, ale_py]"])
  assert cfg.env.imports == ("minatar.gym", "ale_py")
  path = tmp_path / "c.yaml"
  F.save_config(cfg, path)
  assert F.load_config(path) == cfg
  assert "env:\n  id: CartPole-v1\n  kwargs: {}\n  imports:\n  - minatar.gym\n  - ale_py\n" in path.read_text()
  for bad in ("[1]", "['']", "[a.]", "[a b]", "{a: 1}"):
    assert config_error(F.load_config, None, [f"env.imports={bad}"]).startswith("env.imports")


# --- Issue 11 ------------------------------------------------------------------


def test_each_learner_has_the_agent_config_updated_by_its_overrides(tmp_path):
  """agents.overrides[learner_id] updates agent for that learner only; an
  integer field may be written 1e5 there too; overrides come from YAML, the
  CLI and after --resume (apply_overrides), and survive a save."""
  path = tmp_path / "c.yaml"
  path.write_text("agent: {learning_rate: 0.01}\n"
                  "agents:\n  share: type\n  overrides:\n    adversary: {hidden_sizes: [64, 64]}\n")
  cfg = F.load_config(path, ["agents.overrides.adversary.epsilon_decay_steps=1e5",
                             "agents.overrides.agent.double_q=false"])
  assert cfg.agents == C.AgentsConfig("type", {
      "adversary": {"hidden_sizes": (64, 64), "epsilon_decay_steps": 100_000}, "agent": {"double_q": False}})
  assert type(cfg.agents.overrides["adversary"]["epsilon_decay_steps"]) is int
  assert cfg.agent_config("adversary") == C.AgentConfig(learning_rate=0.01, hidden_sizes=(64, 64),
                                                        epsilon_decay_steps=100_000)
  assert cfg.agent_config("agent") == C.AgentConfig(learning_rate=0.01, double_q=False)
  assert cfg.agent_config("other") == cfg.agent == C.AgentConfig(learning_rate=0.01)
  resumed = F.apply_overrides(cfg, ["agents.overrides.adversary.learning_rate=1e-3"])
  assert resumed.agent_config("adversary") == C.AgentConfig(learning_rate=1e-3, hidden_sizes=(64, 64),
                                                            epsilon_decay_steps=100_000)
  F.save_config(resumed, path)
  assert F.load_config(path) == resumed
  assert C.RunConfig().agents == C.AgentsConfig("none", {})
  text = F.config_keys_help()
  assert '\n  agents.share: str = "none"\n' in text and "\n  agents.overrides: mapping = {}\n" in text


# --- Issue 20 ------------------------------------------------------------------


def test_a_failing_save_leaves_the_old_config_and_no_temporary_file(tmp_path, monkeypatch):
  path = tmp_path / "config.yaml"
  cfg = C.RunConfig(seed=7)
  F.save_config(cfg, path)
  old = path.read_text()
  # The dump fails midway, after it has written part of the new file.
  monkeypatch.setattr(F, "config_to_dict", lambda cfg: {"seed": 8, "run_dir": object()})
  with pytest.raises(yaml.representer.RepresenterError):
    F.save_config(C.RunConfig(seed=8), path)
  assert path.read_text() == old and F.load_config(path) == cfg
  assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
