#!/usr/bin/env bash
# The GPU figures, on a machine with an NVIDIA GPU and a CUDA jaxlib installed, from the repository root:
#   OUT=results_dir benchmarks/gpu/run.sh
# jaxrl's own dependencies that the machine lacks are taken from wheels in .whl/ when that folder
# exists (a machine with no package index); else `pip install -e '.[atari,minatar,gpu]'` first.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-benchmarks/gpu}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
step() { local limit=$1; shift; echo "== $(date +%T) $*"; timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -n 40; }
nvidia-smi -L; lscpu | grep 'Model name'; nproc
python3 -c "import jax, flax, optax, chex; print(jax.devices(), jax.__version__, flax.__version__, optax.__version__, chex.__version__)"
# The Atari networks' train_step at batch 32 and 256 (DQN, IQN; Im2colConv against flax.linen.Conv).
step 240 python3 scripts/benchmark.py --sections nature --out "$OUT/nature.json"
# The whole system on Pong at the standard settings (one update of 32 per 4 agent steps), the learner
# on the GPU: one actor of 8 envs (as on the 2-core CPU), then 4 actors of 8.
step 100 python3 benchmarks/atari_speed/jaxrl_sps.py 50
step 100 python3 benchmarks/atari_speed/jaxrl_sps.py 50 actors.num=4
# Prioritized replay's cost to the learner at MinAtar's settings, 1M rows.
step 110 python3 scripts/benchmark.py --config configs/minatar_dqn.yaml --sections per --out "$OUT/per.json"
grep '"system": "jaxrl"' "$OUT/log.txt" > "$OUT/pong_sps.jsonl"; cat "$OUT/pong_sps.jsonl"
