#!/usr/bin/env bash
# Agent steps/s of CleanRL's dqn_atari_jax.py on Pong, after learning starts.
#
#   benchmarks/atari_speed/cleanrl_sps.sh SECONDS [-- extra dqn_atari_jax.py args]
#
# Environment knobs (defaults in brackets):
#   VENV [/work/cleanrl_venv]        made by setup_cleanrl_venv.sh
#   CLEANRL_DIR [/work/cleanrl_src]  CleanRL source tree (git archive of the pinned commit)
#   ENV_ID [PongNoFrameskip-v4]      LEARNING_STARTS [1000]   BUFFER_SIZE [100000]
#   TOTAL_TIMESTEPS [10000000]       SEED [1]
#   EPS_MODE [schedule]              schedule: CleanRL's own linear 1.0 -> 0.01 over 10% of
#                                    TOTAL_TIMESTEPS, i.e. epsilon ~1 during a short measurement
#                                    (almost no Q-network forward pass to act);
#                                    final: --start-e 0.01 --end-e 0.01, the state of a standard
#                                    run after its first 1M steps (network picks ~99% of actions)
#   LAST_FRAC [0.5]                  fraction of the 100-step windows (the last ones) in the median
#   RUN_DIR [new mktemp dir]         stdout.log (timestamped), stderr.log, runs/ (TensorBoard)
#
# Prints one JSON line on stdout (CPU model, nproc, settings, package versions,
# agent_steps_per_s = median over the last windows); progress goes to stderr.
# SECONDS is the wall time of the whole run, start-up (~10 s) and pre-learning phase included.
# Uses whatever cores the process may use (2 on the project's machines: see "nproc" in the JSON);
# no pinning. JAX_PLATFORMS=cpu unless set.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 1 ] || { sed -n '2,25p' "$0" >&2; exit 2; }
SECS="$1"; shift
[ "${1:-}" = "--" ] && shift
args=(
  "$SECS"
  --venv "${VENV:-/work/cleanrl_venv}"
  --cleanrl-dir "${CLEANRL_DIR:-/work/cleanrl_src}"
  --env-id "${ENV_ID:-PongNoFrameskip-v4}"
  --learning-starts "${LEARNING_STARTS:-1000}"
  --buffer-size "${BUFFER_SIZE:-100000}"
  --total-timesteps "${TOTAL_TIMESTEPS:-10000000}"
  --seed "${SEED:-1}"
  --eps-mode "${EPS_MODE:-schedule}"
  --last-frac "${LAST_FRAC:-0.5}"
)
[ -n "${RUN_DIR:-}" ] && args+=(--run-dir "$RUN_DIR")
exec python3 "$HERE/cleanrl_sps_measure.py" "${args[@]}" -- "$@"
