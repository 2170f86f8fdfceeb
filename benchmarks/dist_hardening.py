"""tm-dist hardening (issue 14): relay memory under a flood, and a trainer fed 1 % poisoned chunks.

Two measurements, each run twice, in child processes: once with the code of this checkout
("after") and once with the code given by ``--before-path`` ("before", e.g. a worktree of the
commit before the hardening: its ``packages/*/src`` folders go first on ``PYTHONPATH``).

* **flood**: a relay (plain TCP on loopback) and one worker link sending 256 KiB messages to
  the ``trainers`` group as fast as it can, with no trainer connected, for ``--flood-seconds``
  (60 by default). The relay child's resident memory (``VmRSS`` of its PID) is sampled every
  0.25 s; the peak and the final value are printed. A run stops early, for the machine's sake,
  once the relay holds more than ``--rss-limit-mb`` (3 GiB by default): "before" is reported
  then as "at least that much, after N s". The "after" relay runs with its default caps
  (``connection.queue_max_messages`` / ``queue_max_bytes``).
* **poison**: ``tm-dist local``'s layout as separate processes (``tm-dist server``, ``tm-dist
  trainer --until-finish``, one honest ``tm-dist worker``) plus one worker process that sends
  every 100th chunk poisoned (``tm_dist.testing.poison_chunk``, cycling through NaN / +inf /
  1e308 rewards, NaN / inf / 1e30 actions, observations outside their bounds, and a fake
  finished test lap of -5 s or 0.018 s). Reported: whether the trainer survived, its exit code,
  the time to its first finished test lap (or how long it ran before dying), and its counters.

Figures (this project's 2-core VM, shared with other jobs; "before" = ``/tmp/wt-new``, the
commit before the hardening):

* flood, 256 KiB messages, no trainer: **before** the relay grew linearly (~83 MB/s) to
  3,098 MiB in 37.4 s (3,047 MB sent) and was stopped there at the safety limit; **after**,
  60 s and 4,573 MB sent, it peaked at **308 MiB** (started at 43 MiB; cap 256 MiB of queued
  messages): 1,023 messages / 268 MB queued, 17,269 oldest dropped and counted.
* poison, 1 % of one worker's chunks poisoned: **before** the trainer died after 92.6 s,
  with the second poisoned chunk (``ValueError: Expected parameter loc ... Normal ... found
  invalid values``: a NaN reward had reached the replay buffer); **after**, the trainer
  refused all 26 poisoned chunks the worker sent (26 invalid, 26 episodes dropped, no
  disconnection at 1 %, no update undone), kept training and reached its first finished test
  lap after **946.9 s** (15.8 min; 363,683 env steps, 19,750 gradient steps), in 43.683 s
  (1.094x the expert's 39.934 s); exit code 0. (The README's clean run, 2 honest workers and
  a quieter machine, needed 9.6 min: the two figures are not comparable for speed.)

Run from the repository root::

    python benchmarks/dist_hardening.py flood --before-path /tmp/wt-new
    python benchmarks/dist_hardening.py poison --before-path /tmp/wt-new --minutes 30
    python benchmarks/dist_hardening.py all --before-path /tmp/wt-new
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tm-gym", "tm-algos", "tm-dist")
MESSAGE_BYTES = 256 * 1024


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (Linux ``/proc``)."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+)\s+kB", text)
    return int(m.group(1)) / 1024 if m else 0.0


def _env_for(before_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if before_path:
        src = [str(Path(before_path) / "packages" / p / "src") for p in PACKAGES]
        env["PYTHONPATH"] = os.pathsep.join(src)
    else:
        env.pop("PYTHONPATH", None)
    return env


# -- flood -----------------------------------------------------------------------------------


def flood_child(seconds: float, rss_limit_mb: float) -> dict[str, Any]:
    """Run in a child process: one relay, one flooding link, no trainer; the relay's RSS."""
    import tm_dist
    from tm_dist.transport import Link, RelayServer

    password = "flood-benchmark-password"
    relay = RelayServer(password, port=0, use_tls=False)
    relay.start()
    pid = relay.pid
    assert pid is not None
    link = Link(password, port=relay.port, groups="workers", use_tls=False)
    sent = 0
    peak = start_rss = _rss_mb(pid)
    stopped_early = False
    payload = os.urandom(MESSAGE_BYTES)
    try:
        link.connect()
        t0 = time.monotonic()
        next_sample = t0
        while (now := time.monotonic()) - t0 < seconds:
            link.send("trainers", payload)
            sent += 1
            if now >= next_sample:
                next_sample = now + 0.25
                peak = max(peak, _rss_mb(pid))
                if peak > rss_limit_mb:
                    stopped_early = True
                    break
        elapsed = time.monotonic() - t0
        time.sleep(1.0)  # let the relay read what is in flight
        final = _rss_mb(pid)
        peak = max(peak, final)
        stats = relay.stats()
    finally:
        link.stop()
        relay.stop()
    return {
        "tm_dist": str(Path(tm_dist.__file__).parent),
        "seconds": round(elapsed, 1),
        "sent_messages": sent,
        "sent_mb": round(sent * MESSAGE_BYTES / 2**20, 1),
        "relay_rss_start_mb": round(start_rss, 1),
        "relay_rss_peak_mb": round(peak, 1),
        "relay_rss_final_mb": round(final, 1),
        "stopped_at_rss_limit": stopped_early,
        "relay_stats": _relay_stats_dict(stats),
    }


def _relay_stats_dict(stats: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(stats)


def run_flood(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for label, path in (("before", args.before_path), ("after", None)):
        if label == "before" and not path:
            continue
        cmd = [
            sys.executable,
            __file__,
            "_flood-child",
            "--flood-seconds",
            str(args.flood_seconds),
            "--rss-limit-mb",
            str(args.rss_limit_mb),
        ]
        out = subprocess.run(
            cmd,
            env=_env_for(path),
            capture_output=True,
            text=True,
            timeout=args.flood_seconds + 120,
        )
        if out.returncode != 0:
            results[label] = {"error": out.stderr[-2000:]}
        else:
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"flood {label}: {json.dumps(results[label])}", flush=True)
    return results


# -- poison ----------------------------------------------------------------------------------


def poison_worker_child(every: int) -> None:
    """Run in a child process: ``tm-dist worker`` whose every ``every``-th chunk is poisoned."""
    import threading

    import tm_dist.roles as roles
    from tm_dist.settings import load_settings
    from tm_dist.testing import POISON_KINDS, poison_chunk
    from tm_dist.wire import EpisodeChunk, encode_message

    settings = load_settings(None, env=os.environ, overrides={"worker.name": "poisoner"})
    counter = {"n": 0, "poisoned": 0}
    spaces: dict[str, Any] = {}
    honest_send = roles._send_chunk

    def send(link: Any, chunk: EpisodeChunk, report: Any) -> None:
        counter["n"] += 1
        if counter["n"] % every == 0:
            if not spaces:
                from tm_algos.presets import load_preset
                from tm_dist.learner import spaces_of

                obs_space, act_space, _ = spaces_of(load_preset("lidar-sac"))
                spaces.update(obs=obs_space, act=act_space)
            kind = POISON_KINDS[counter["poisoned"] % len(POISON_KINDS)]
            counter["poisoned"] += 1
            bad = poison_chunk(chunk, kind, spaces["obs"], spaces["act"])
            link.send(roles.TRAINERS, encode_message(bad))
            print(f"poisoned chunk {counter['n']} ({kind})", flush=True)
            return
        honest_send(link, chunk, report)

    roles._send_chunk = send
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        roles.run_worker(settings, stop=stop)
    except Exception as e:  # reported: e.g. the trainer disconnecting us
        print(f"poisoning worker stopped: {type(e).__name__}: {e}", flush=True)


def _read_port(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.1)
    raise TimeoutError(f"the server wrote no port to {path}")


def _stop(proc: subprocess.Popen[Any]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_poison_once(label: str, path: str | None, args: argparse.Namespace) -> dict[str, Any]:
    env = _env_for(path)
    workdir = Path(tempfile.mkdtemp(prefix=f"tm-dist-poison-{label}-"))
    env["TM_DIST_PASSWORD"] = "poison-benchmark-password-123"
    env["TM_DIST_CONNECTION_HOST"] = "127.0.0.1"
    port = args.port_base + (0 if label == "before" else 1)
    env["TM_DIST_CONNECTION_PORT"] = str(port)
    tm = [sys.executable, "-m", "tm_dist.cli"]
    logs = {n: open(workdir / f"{n}.log", "w") for n in ("server", "trainer", "worker", "poisoner")}  # noqa: SIM115
    procs: dict[str, subprocess.Popen[Any]] = {}
    t0 = time.monotonic()
    try:
        procs["server"] = subprocess.Popen(
            [*tm, "server", "--bind", "127.0.0.1"],
            env=env,
            stdout=logs["server"],
            stderr=subprocess.STDOUT,
        )
        time.sleep(3.0)
        procs["trainer"] = subprocess.Popen(
            [
                *tm,
                "trainer",
                "--preset",
                "lidar-sac",
                "--run-dir",
                str(workdir / "run"),
                "--until-finish",
                "--minutes",
                str(args.minutes),
                "--fresh",
            ],
            env=env,
            stdout=logs["trainer"],
            stderr=subprocess.STDOUT,
        )
        procs["worker"] = subprocess.Popen(
            [*tm, "worker", "--name", "honest-0", "--max-steps-per-s", str(args.worker_rate)],
            env=env,
            stdout=logs["worker"],
            stderr=subprocess.STDOUT,
        )
        # the attacker always runs this checkout's code (it needs tm_dist.testing); what is
        # measured is the trainer, which runs the code under test
        penv = {**_env_for(None), **{k: v for k, v in env.items() if k.startswith("TM_DIST_")}}
        penv["TM_DIST_WORKER_MAX_STEPS_PER_S"] = str(args.worker_rate)
        procs["poisoner"] = subprocess.Popen(
            [sys.executable, __file__, "_poison-worker", "--every", str(args.every)],
            env=penv,
            stdout=logs["poisoner"],
            stderr=subprocess.STDOUT,
        )
        trainer_rc = procs["trainer"].wait(timeout=args.minutes * 60 + 300)
    finally:
        for name in ("poisoner", "worker", "trainer", "server"):
            if name in procs:
                _stop(procs[name])
        for f in logs.values():
            f.close()
    wall = time.monotonic() - t0
    trainer_log = (workdir / "trainer.log").read_text(errors="replace")
    poisoner_log = (workdir / "poisoner.log").read_text(errors="replace")
    first = re.search(r"first finish s\s*│?\s*([0-9.]+)", trainer_log)
    lap = re.search(r"best test lap\s*│?\s*([0-9.]+)", trainer_log)
    return {
        "label": label,
        "trainer_exit_code": trainer_rc,
        "wall_s": round(wall, 1),
        "first_finish_s": float(first.group(1)) if first else None,
        "best_test_lap": float(lap.group(1)) if lap else None,
        "poisoned_chunks_sent": poisoner_log.count("poisoned chunk"),
        "trainer_died_with": _last_error(trainer_log),
        "trainer_log_tail": trainer_log[-1500:],
        "logs": str(workdir),
    }


def _last_error(log: str) -> str | None:
    lines = [ln for ln in log.splitlines() if "Error" in ln or "error" in ln]
    return lines[-1][:300] if lines else None


def run_poison(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for label, path in (("before", args.before_path), ("after", None)):
        if label == "before" and not path:
            continue
        results[label] = run_poison_once(label, path, args)
        shown = {k: v for k, v in results[label].items() if k != "trainer_log_tail"}
        print(f"poison {label}: {json.dumps(shown)}", flush=True)
    return results


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["flood", "poison", "all", "_flood-child", "_poison-worker"])
    p.add_argument("--before-path", help="a checkout of the code before the hardening")
    p.add_argument("--flood-seconds", type=float, default=60.0)
    p.add_argument("--rss-limit-mb", type=float, default=3072.0)
    p.add_argument("--minutes", type=float, default=30.0, help="poison: trainer time limit")
    p.add_argument("--every", type=int, default=100, help="poison: one chunk in this many")
    p.add_argument("--worker-rate", type=float, default=250.0)
    p.add_argument("--port-base", type=int, default=17714)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.what in ("flood", "poison", "all"):
        signal.signal(signal.SIGTERM, _interrupt)  # stop the roles started, then exit
    if args.what == "_flood-child":
        print(json.dumps(flood_child(args.flood_seconds, args.rss_limit_mb)), flush=True)
        return 0
    if args.what == "_poison-worker":
        poison_worker_child(args.every)
        return 0
    results: dict[str, Any] = {}
    if args.what in ("flood", "all"):
        results["flood"] = run_flood(args)
    if args.what in ("poison", "all"):
        results["poison"] = run_poison(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
