#!/usr/bin/env bash
# Build the CleanRL venv used by cleanrl_sps.sh (outside the jaxrl repo).
#
#   CLEANRL_DIR  CleanRL source tree (no install; run from source). Default /work/cleanrl_src.
#                Make it from a mirror of github.com/vwxyzjn/cleanrl:
#                  git -C <mirror> archive fe8d8a03c41a7ef5b523e2e354bd01c363e786bb | tar -x -C "$CLEANRL_DIR"
#                  git -C <mirror> rev-parse fe8d8a03... > "$CLEANRL_DIR/.cleanrl_commit"
#   VENV         Default /work/cleanrl_venv.
#   PYTHON       Default python3 (3.11 here; CleanRL itself declares requires-python <3.11).
#
# Installs cleanrl_requirements.txt (CleanRL's atari+jax pins, departures marked there), then
# the Pong ROM: ale-py 0.8.1 (CleanRL's pin) ships no ROMs and its AutoROM route downloads them
# from the internet, so the ROM is taken from the ale-py 0.9.1 wheel on PyPI (which bundles ROMs),
# checked against ale-py 0.8.1's own md5 list, and installed with ale-py's `ale-import-roms`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLEANRL_DIR="${CLEANRL_DIR:-/work/cleanrl_src}"
VENV="${VENV:-/work/cleanrl_venv}"
PYTHON="${PYTHON:-python3}"

[ -f "$CLEANRL_DIR/cleanrl/dqn_atari_jax.py" ] || { echo "no CleanRL source at $CLEANRL_DIR" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -r "$HERE/cleanrl_requirements.txt"

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" download -q --no-deps -d "$tmp" ale-py==0.9.1
mkdir -p "$tmp/whl" "$tmp/roms"
"$VENV/bin/python" - "$tmp" <<'EOF'
import glob, sys, zipfile
tmp = sys.argv[1]
whl = glob.glob(f"{tmp}/ale_py-0.9.1-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    open(f"{tmp}/roms/pong.bin", "wb").write(z.read("ale_py/roms/pong.bin"))
EOF
want="$(grep ' pong.bin$' "$("$VENV/bin/python" -c 'import ale_py,os;print(os.path.dirname(ale_py.__file__))')/roms/md5.txt" | cut -d' ' -f1)"
have="$(md5sum "$tmp/roms/pong.bin" | cut -d' ' -f1)"
[ "$want" = "$have" ] || { echo "pong.bin md5 $have != ale-py 0.8.1's $want" >&2; exit 1; }
"$VENV/bin/ale-import-roms" "$tmp/roms"
"$VENV/bin/pip" check
echo "venv ready: $VENV"
