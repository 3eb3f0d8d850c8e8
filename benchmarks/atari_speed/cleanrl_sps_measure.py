"""Run CleanRL's dqn_atari_jax.py for a fixed wall time and report agent steps/s after learning starts.

Standard library only (run with any python3); the agent itself runs in the CleanRL venv.
Called by cleanrl_sps.sh, which documents the knobs. One JSON line goes to stdout; progress to stderr.

What the figure means
---------------------
dqn_atari_jax.py prints `SPS: <int>` every 100 agent steps once learning has started
(global_step > learning_starts, global_step % 100 == 0). That printed number is CleanRL's own
*cumulative* figure, global_step / (time since the first env reset), so it mixes in the fast
pre-learning phase and the JIT compile; it is recorded but is not the headline.
This harness timestamps each `SPS:` line as it arrives (unbuffered stdout), so consecutive
lines bracket exactly 100 agent steps (= 100 env.step calls of the single env = 400 ALE frames with
frame skip 4, 25 gradient updates of batch 32 at train_frequency 4, and the epsilon-greedy action
choice of each step). Window rate = 100 / (t_k - t_{k-1}). The headline
`agent_steps_per_s` is the median window rate over the last `--last-frac` of the windows
(default: the last half), which leaves out JIT compilation and start-up transients.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def pkg_versions(python: str) -> dict:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for p in ['jax','jaxlib','flax','optax','chex','numpy','gymnasium','ale-py','shimmy',"
        "'opencv-python','torch','tyro','tensorboard']:\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("seconds", type=float, help="wall seconds for the whole run, start-up included")
    ap.add_argument("--venv", default="/work/cleanrl_venv")
    ap.add_argument("--cleanrl-dir", default="/work/cleanrl_src")
    ap.add_argument("--env-id", default="PongNoFrameskip-v4")
    ap.add_argument("--learning-starts", type=int, default=1000)
    ap.add_argument("--buffer-size", type=int, default=100000)
    ap.add_argument("--total-timesteps", type=int, default=10_000_000)
    ap.add_argument("--train-frequency", type=int, default=4)
    ap.add_argument("--eps-mode", choices=["schedule", "final"], default="schedule")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--last-frac", type=float, default=0.5)
    ap.add_argument("--run-dir", default=None, help="where logs and runs/ (TensorBoard) go; default a new temp dir")
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:  # everything after "--" goes to dqn_atari_jax.py unchanged
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    a = ap.parse_args(argv)
    a.extra = extra

    python = os.path.join(a.venv, "bin", "python")
    script = os.path.join(a.cleanrl_dir, "cleanrl", "dqn_atari_jax.py")
    run_dir = a.run_dir or tempfile.mkdtemp(prefix="cleanrl_sps_")
    os.makedirs(run_dir, exist_ok=True)
    commit = None
    try:
        commit = open(os.path.join(a.cleanrl_dir, ".cleanrl_commit")).read().strip()
    except OSError:
        pass

    cmd = [
        python, "-u", script,
        "--env-id", a.env_id,
        "--seed", str(a.seed),
        "--total-timesteps", str(a.total_timesteps),
        "--learning-starts", str(a.learning_starts),
        "--train-frequency", str(a.train_frequency),
        "--buffer-size", str(a.buffer_size),
        "--no-track",           # tyro 0.5.10 spelling of --track False
        "--no-capture-video",   # tyro 0.5.10 spelling of --capture-video False
        "--no-save-model",
    ]
    if a.eps_mode == "final":
        # epsilon fixed at CleanRL's end_e (0.01): the state of a standard run after its first
        # exploration_fraction*total_timesteps = 1M steps, where the Q-network picks ~99% of actions.
        cmd += ["--start-e", "0.01", "--end-e", "0.01"]
    cmd += a.extra

    env = dict(os.environ)
    env["PYTHONPATH"] = a.cleanrl_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("JAX_PLATFORMS", "cpu")

    info = {
        "what": "CleanRL dqn_atari_jax.py agent steps/s after learning starts",
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "loadavg_start": loadavg(),
        "cleanrl_commit": commit,
        "packages": pkg_versions(python),
        "python": subprocess.run([python, "-c", "import sys;print(sys.version.split()[0])"],
                                 capture_output=True, text=True).stdout.strip(),
        "settings": {
            "env_id": a.env_id, "num_envs": 1, "seed": a.seed,
            "total_timesteps": a.total_timesteps, "learning_starts": a.learning_starts,
            "train_frequency": a.train_frequency, "batch_size": 32, "buffer_size": a.buffer_size,
            "target_network_frequency": 1000, "eps_mode": a.eps_mode,
            "wrappers": "NoopReset(30), MaxAndSkip(4), EpisodicLife, FireReset, ClipReward, "
                        "Resize 84x84, GrayScale, FrameStack(4)",
            "seconds": a.seconds, "last_frac": a.last_frac, "extra_args": a.extra,
        },
        "command": " ".join(cmd),
        "run_dir": run_dir,
    }
    print(f"[cleanrl_sps] run dir {run_dir}\n[cleanrl_sps] {info['command']}", file=sys.stderr)

    stdout_log = open(os.path.join(run_dir, "stdout.log"), "w")
    stderr_log = open(os.path.join(run_dir, "stderr.log"), "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=stderr_log,
                            text=True, bufsize=1, start_new_session=True)
    stamps: list[tuple[float, int]] = []  # (monotonic time, cleanrl cumulative SPS)
    episodes: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic()
            stdout_log.write(f"{now - t0:.4f} {line}")
            if line.startswith("SPS:"):
                stamps.append((now, int(line.split()[1])))
            elif line.startswith("global_step="):
                episodes.append(line.strip())

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    deadline = t0 + a.seconds
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    ended_early = proc.poll() is not None
    if not ended_early:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.monotonic() - t0
    th.join(timeout=5)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the pkg_versions probe (~0.5 s)
    stdout_log.close()
    stderr_log.close()

    first_print_step = (a.learning_starts // 100 + 1) * 100  # first global_step > learning_starts with %100 == 0
    rates = [100.0 / (t1 - t0_) for (t0_, _), (t1, _) in zip(stamps, stamps[1:]) if t1 > t0_]
    n_last = max(1, int(round(len(rates) * a.last_frac))) if rates else 0
    last = rates[-n_last:] if rates else []
    post_span = stamps[-1][0] - stamps[0][0] if len(stamps) >= 2 else 0.0
    last_step = first_print_step + 100 * (len(stamps) - 1) if stamps else None
    result = dict(info)
    result.update({
        "loadavg_end": loadavg(),
        "ended_early_rc": proc.returncode if ended_early else None,
        "post_learning_windows": len(rates),
        "windows_used": len(last),
        "agent_steps_per_s": round(statistics.median(last), 1) if last else None,
        "agent_steps_per_s_window_min_max": [round(min(last), 1), round(max(last), 1)] if last else None,
        "agent_steps_per_s_all_windows_mean": round(100 * len(rates) / post_span, 1) if post_span else None,
        "frames_per_s": round(4 * statistics.median(last), 1) if last else None,
        "updates_per_s": round(statistics.median(last) / a.train_frequency, 1) if last else None,
        "cleanrl_printed_sps_last": stamps[-1][1] if stamps else None,
        "global_step_reached": last_step,
        "first_sps_line_at_s": round(stamps[0][0] - t0, 2) if stamps else None,
        "episodes_finished": len(episodes),
        "run_wall_s": round(wall, 1),
        "run_cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
        "run_cores_used_avg": round((ru.ru_utime + ru.ru_stime) / wall, 2),
    })
    print(json.dumps(result))
    if not last:
        print(f"[cleanrl_sps] no post-learning windows measured; see {run_dir}/stderr.log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
