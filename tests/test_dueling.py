"""The dueling head (Wang et al. 2016; ``agent.dueling``): Q = V + A - mean_a A,
for DQN and IQN (per quantile) on the MLP, MinAtar and Nature torsos, each
stream with its own hidden layer (IQN on the Nature torso: linear streams);
and the actor's numpy path for dueling MLP DQN."""

import chex
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxrl
from jaxrl import networks
from jaxrl.actor import Actor, mlp_params, numpy_q_values
from jaxrl.config import EnvConfig
from jaxrl.envs import AGENT_ID, GymVectorEnvSet, make_vec_env

NUM_ACTIONS, BATCH, N = 5, 3, 4
# (obs shape, obs range): the MLP, MinAtar conv and Nature torsos.
TORSOS = {"mlp": ((6,), None), "minatar": ((10, 10, 4), (0.0, 1.0)), "nature": ((84, 84, 4), (0.0, 255.0))}


def network(algo, torso, dueling=True):
  obs_shape, obs_range = TORSOS[torso]
  return networks.make_network(algo, obs_shape, NUM_ACTIONS, (16,), obs_range, embedding_dim=8, dueling=dueling)


def inputs(algo, torso, seed=0):
  obs_shape, obs_range = TORSOS[torso]
  rng = np.random.default_rng(seed)
  high = 1.0 if obs_range is None else obs_range[1]
  obs = (rng.random((BATCH, *obs_shape)) * high).astype(np.float32)
  return (obs,) if algo == "dqn" else (obs, rng.random((BATCH, N)).astype(np.float32))


def value_and_advantage(net, params, args):
  """The head's streams V [..., 1] and A [..., A], and its output."""
  out, captured = net.apply(params, *args, capture_intermediates=True)
  head = captured["intermediates"]["head"]
  return head["value"]["__call__"][0], head["advantage"]["__call__"][0], out


CASES = [(algo, torso) for algo in ("dqn", "iqn") for torso in TORSOS]


@pytest.mark.parametrize("algo, torso", CASES)
def test_the_dueling_head_is_value_plus_centred_advantage(algo, torso):
  net, args = network(algo, torso), inputs(algo, torso)
  params = net.init(jax.random.PRNGKey(1), *args)
  value, advantage, q = value_and_advantage(net, params, args)
  shape = (BATCH, NUM_ACTIONS) if algo == "dqn" else (BATCH, N, NUM_ACTIONS)
  assert q.shape == advantage.shape == shape and value.shape == (*shape[:-1], 1) and q.dtype == np.float32
  q, value, advantage = (np.asarray(x, np.float64) for x in (q, value, advantage))
  np.testing.assert_allclose(q, value + advantage - advantage.mean(-1, keepdims=True), rtol=1e-5, atol=1e-5)
  # mean_a (A - mean_a A) = 0: Q's deviations from its mean over actions are A's,
  np.testing.assert_allclose(q - q.mean(-1, keepdims=True), advantage - advantage.mean(-1, keepdims=True),
                             rtol=1e-5, atol=1e-5)
  # and Q's mean over actions is V.
  np.testing.assert_allclose(q.mean(-1, keepdims=True), value, rtol=1e-5, atol=1e-5)
  assert np.ptp(advantage, axis=-1).max() > 1e-4 and np.ptp(value) > 1e-4   # neither stream is trivial


@pytest.mark.parametrize("algo, torso", CASES)
def test_the_value_stream_shifts_every_action_alike(algo, torso):
  net, args = network(algo, torso), inputs(algo, torso)
  params = net.init(jax.random.PRNGKey(1), *args)
  shifted = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 2.5 if jax.tree_util.keystr(path).endswith("['head']['value']['bias']") else x, params)
  q, q_shifted = (np.asarray(net.apply(p, *args)) for p in (params, shifted))
  np.testing.assert_allclose(q_shifted - q, 2.5, rtol=1e-5, atol=1e-5)
  # The advantage's bias, added to one action alone, moves Q by it less the mean.
  bias = np.zeros(NUM_ACTIONS, np.float32)
  bias[1] = 1.0
  moved = jax.tree_util.tree_map_with_path(
      lambda path, x: x + bias if jax.tree_util.keystr(path).endswith("['head']['advantage']['bias']") else x, params)
  np.testing.assert_allclose(np.asarray(net.apply(moved, *args)) - q, np.broadcast_to(bias - bias.mean(), q.shape),
                             rtol=1e-5, atol=1e-5)


def shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("algo, torso", CASES)
def test_without_dueling_the_params_keep_their_layout(algo, torso):
  """The output layer stays the module's last Dense_<i> (saved runs load);
  dueling replaces it with head/value [W, 1] and head/advantage [W, A].
  The torso's last hidden layer [H, W] moves into each stream
  (head/value_hidden, head/advantage_hidden, as in Wang et al.), for IQN
  with the tau embedding's width unchanged; IQN's streams on the Nature
  torso are linear on its last hidden layer (W = H)."""
  args = inputs(algo, torso)
  plain = network(algo, torso, dueling=False).init(jax.random.PRNGKey(1), *args)["params"]
  dueling = network(algo, torso).init(jax.random.PRNGKey(1), *args)["params"]
  assert "head" not in plain and "head" in dueling
  last = f"Dense_{sum(name.startswith('Dense_') for name in plain) - 1}"
  width, actions = plain[last]["kernel"].shape
  assert actions == NUM_ACTIONS
  head = dueling["head"]
  assert shapes(head["value"]) == {"['kernel']": (width, 1), "['bias']": (1,)}
  assert shapes(head["advantage"]) == {"['kernel']": (width, NUM_ACTIONS), "['bias']": (NUM_ACTIONS,)}
  plain_rest = shapes({k: v for k, v in plain.items() if k != last})
  dueling_rest = shapes({k: v for k, v in dueling.items() if k != "head"})
  if algo == "iqn" and torso == "nature":
    assert set(head) == {"value", "advantage"} and dueling_rest == plain_rest
    return
  assert set(head) == {"value", "advantage", "value_hidden", "advantage_hidden"}
  moved = {path: shape for path, shape in plain_rest.items() if path not in dueling_rest}
  assert {k: v for k, v in plain_rest.items() if k in dueling_rest} == dueling_rest   # the rest is untouched
  assert sorted(moved.values()) == sorted(shapes(head["value_hidden"]).values()) \
      == sorted(shapes(head["advantage_hidden"]).values())
  assert shapes(head["value_hidden"])["['kernel']"][1] == width


def test_iqn_streams_multiply_their_own_hidden_layer_by_the_tau_embedding():
  """Against numpy: phi = relu(cos(pi i tau) W + b), i = 0..E-1; each stream
  s has h_s = relu(psi W_s_hidden + b) (psi: the MLP torso without its last
  layer, here the observation itself) and outputs (h_s * phi) W_s + b."""
  net, (obs, taus) = network("iqn", "mlp"), inputs("iqn", "mlp")
  params = net.init(jax.random.PRNGKey(3), obs, taus)["params"]
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  relu = lambda x: np.maximum(x, 0.0)
  dense = lambda x, layer: x @ layer["kernel"] + layer["bias"]
  cos = np.cos(np.pi * taus[..., None] * np.arange(8))                       # [B, N, E]
  phi = relu(dense(cos, p["Dense_0"]))                                      # [B, N, 16]
  head = p["head"]
  stream = lambda name: dense(relu(dense(obs, head[f"{name}_hidden"]))[:, None, :] * phi, head[name])
  value, advantage = stream("value"), stream("advantage")
  expected = value + advantage - advantage.mean(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(net.apply({"params": params}, obs, taus)), expected, rtol=1e-4, atol=1e-5)
  assert np.ptp(expected, axis=1).max() > 1e-4   # the quantiles differ across taus


def test_the_agent_builds_the_dueling_network_from_its_config():
  for algo in ("dqn", "iqn"):
    agent = jaxrl.make_agent(jaxrl.AgentConfig(algo=algo, dueling=True), (4,), 2)
    assert agent.network.dueling and "head" in agent.init(jax.random.PRNGKey(0)).params["params"]
    assert not jaxrl.make_agent(jaxrl.AgentConfig(algo=algo), (4,), 2).network.dueling


def batch(obs_shape, size=8, seed=0):
  rng = np.random.default_rng(seed)
  obs = lambda: (rng.random((size, *obs_shape)) > 0.5).astype(np.uint8) if len(obs_shape) == 3 else \
      rng.normal(size=(size, *obs_shape)).astype(np.float32)
  return jaxrl.Transition(obs(), rng.integers(0, NUM_ACTIONS, size).astype(np.int32),
                          rng.normal(size=size).astype(np.float32), np.full(size, 0.9, np.float32), obs(),
                          np.ones(size, np.float32), rng.uniform(0.5, 1.5, size).astype(np.float32))


@pytest.mark.parametrize("algo, torso", [(algo, torso) for algo in ("dqn", "iqn") for torso in ("mlp", "minatar")])
def test_train_step_with_dueling_trains_every_stream(algo, torso):
  obs_shape, obs_range = TORSOS[torso]
  cfg = jaxrl.AgentConfig(algo=algo, dueling=True, hidden_sizes=(16,), learning_rate=1e-2, num_tau_samples=4,
                          num_tau_prime_samples=4, num_quantile_samples=4, quantile_embedding_dim=8)
  agent = jaxrl.make_agent(cfg, obs_shape, NUM_ACTIONS, obs_range=obs_range)
  state, b = agent.init(jax.random.PRNGKey(0)), batch(obs_shape)
  step = jax.jit(agent.train_step)
  trained, first = step(state, b)
  chex.assert_tree_all_finite((trained, first))
  assert first["td_error"].shape == (8,)
  for name in state.params["params"]["head"]:   # both streams move, and their hidden layers
    for leaf_before, leaf_after in zip(jax.tree.leaves(state.params["params"]["head"][name]),
                                       jax.tree.leaves(trained.params["params"]["head"][name])):
      assert not np.allclose(leaf_before, leaf_after)
  losses = []
  for _ in range(200):   # the mean of the last 50: a target update makes one step's loss jump
    trained, metrics = step(trained, b)
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-50:]) < 0.5 * float(first["loss"])
  assert agent.act(trained.params, b.obs, 0.0, jax.random.PRNGKey(1)).shape == (8,)


@settings(max_examples=15, deadline=None)
@given(hidden_sizes=st.lists(st.sampled_from([1, 3, 8]), min_size=1, max_size=4),
       obs_dim=st.sampled_from([1, 4]), num_actions=st.sampled_from([1, 2, 5]), seed=st.integers(0, 2**16))
def test_numpy_q_values_match_the_dueling_flax_network(hidden_sizes, obs_dim, num_actions, seed):
  agent = jaxrl.make_agent(jaxrl.AgentConfig(hidden_sizes=tuple(hidden_sizes), dueling=True), (obs_dim,),
                           num_actions)
  obs = np.random.default_rng(seed).normal(size=(7, obs_dim)).astype(np.float32) * 3
  params = agent.network.init(jax.random.PRNGKey(seed), obs)
  params = jax.tree.map(lambda x: x + 0.1 * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32),
                        params)   # biases not zero
  expected = np.asarray(agent.q_values(params, obs))
  got = numpy_q_values(mlp_params(params), obs)
  assert got.dtype == np.float32 and got.shape == (7, num_actions)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # Linear streams on the torso (a network without hidden layers, built directly).
  linear = networks.make_network("dqn", (obs_dim,), num_actions, (), dueling=True)
  params = jax.tree.map(lambda x: x + 0.1, linear.init(jax.random.PRNGKey(seed), obs))
  np.testing.assert_allclose(numpy_q_values(mlp_params(params), obs), np.asarray(linear.apply(params, obs)),
                             rtol=1e-5, atol=1e-5)


def test_a_dueling_mlp_dqn_actor_acts_in_numpy_with_the_greedy_actions_of_q_values():
  agent = jaxrl.make_agent(jaxrl.AgentConfig(hidden_sizes=(16, 16), dueling=True), (4,), 2)
  params = jax.tree.map(np.array, jax.device_get(agent.init(jax.random.PRNGKey(3)).params))
  actor = Actor({AGENT_ID: agent}, GymVectorEnvSet(make_vec_env(EnvConfig("CartPole-v1", {}), 8)), seed=0)
  actor.set_policy(AGENT_ID, params, 0.0, step=0)
  slots = actor._learners[AGENT_ID]   # pylint: disable=protected-access
  assert slots._jax_q_values is None   # pylint: disable=protected-access
  for _ in range(20):
    obs = actor.obs[AGENT_ID]
    q = np.asarray(agent.q_values(params, obs))
    action = slots.choose_actions()
    clear = np.abs(q[:, 0] - q[:, 1]) > 1e-4
    np.testing.assert_array_equal(action[clear], q.argmax(1)[clear])
    actor.step({AGENT_ID: 0})
