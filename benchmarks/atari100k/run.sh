#!/usr/bin/env bash
# One Atari 100k run of configs/atari100k_drq.yaml, then its score: 100 games at epsilon 0.001.
#
#   benchmarks/atari100k/run.sh GAME [SEED]      e.g. benchmarks/atari100k/run.sh Breakout 0
#
# Trains into runs/atari100k/GAME_sSEED (resuming it, with its saved replay, if it is there
# and unfinished), then writes benchmarks/atari100k/GAME_sSEED.json: the evaluation's JSON line
# and the run's summary, and keeps the run's config, metrics and summary in benchmarks/atari100k/curves/GAME_sSEED
# (what jaxrl-plot draws from, should runs/ be lost).
set -euo pipefail
cd "$(dirname "$0")/../.."
GAME="$1"; SEED="${2:-0}"
RUN="runs/atari100k/${GAME}_s${SEED}"
if [ -f "$RUN/summary.json" ] && grep -q '"stopped_because": "env_steps"' "$RUN/summary.json"; then
  :  # trained: evaluate only
elif [ -d "$RUN/checkpoints" ]; then
  python scripts/train.py --resume "$RUN" runtime.progress=false
else
  python scripts/train.py configs/atari100k_drq.yaml "env.id=ALE/${GAME}-v5" "seed=${SEED}" "run_dir=${RUN}" \
    runtime.progress=false
fi
if ! grep -q '"stopped_because": "env_steps"' "$RUN/summary.json"; then
  echo "$RUN stopped before its 100k steps; run this again to resume it" >&2
  exit 1
fi
KEPT="benchmarks/atari100k/curves/${GAME}_s${SEED}"
mkdir -p "$KEPT" && cp "$RUN/config.yaml" "$RUN/metrics.jsonl" "$RUN/summary.json" "$KEPT/"
EVAL=$(python scripts/evaluate.py "$RUN" --episodes 100 --epsilon 0.001)
python - "$RUN" "$EVAL" "benchmarks/atari100k/${GAME}_s${SEED}.json" <<'PY'
import json, sys
run, evaluation, out = sys.argv[1:]
summary = json.load(open(f"{run}/summary.json"))
json.dump({"game": run.rsplit("/", 1)[1], "evaluation": json.loads(evaluation), "summary": summary},
          open(out, "w"), indent=1)
PY
cat "benchmarks/atari100k/${GAME}_s${SEED}.json"
