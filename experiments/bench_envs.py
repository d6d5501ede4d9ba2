"""Environment benchmark: env step cost vs raw MuJoCo, TaskVectorEnv vs SyncVectorEnv, steps/s of every env (JSON).

Three measurements, each a ratio taken within one run (interleaved blocks, alternating order, median over
repeats), because on a shared 2-core machine absolute timings from different sittings are not comparable:

1. ``step_cost``: for every MuJoCo task env of the suite (a ``MujocoTaskEnv`` subclass registered in
   ``metarl.envs.registration`` that imports), the cost of the unwrapped env's ``step`` divided by the cost of the
   raw ``mujoco.mj_step(model, data, nstep=frame_skip)`` it wraps. Both replay the same actions from the same
   simulator state (the raw loop writes ``data.ctrl`` before each call, as it must to follow the same trajectory),
   so the physics work is identical. Target: at most 1.15.
2. ``vector``: environment steps per second of :class:`metarl.envs.vector.TaskVectorEnv` and of Gymnasium's
   ``SyncVectorEnv`` over the same 20 ``metarl/HalfCheetahVel-v0`` tasks (each built with ``gymnasium.make``),
   driven by a batched policy (a 17-64-64-6 tanh MLP in torch, one thread, on the batched observation). Ratio
   target: at least 1.5. TaskVectorEnv runs in its default (auto) mode; its two physics paths (loop and threads)
   are reported too, and which one auto picked, and the threads as Python threads (``native_worker=False``).
3. ``steps_per_second``: every registered environment as users get it (``gymnasium.make``), random actions from
   its seeded action space, resets included when episodes end.
4. ``python_overhead``: the Python a HalfCheetahVel step adds, with the physics taken out (``frame_skip`` 0): the
   env's ``step`` against the raw loop's control write + ``mj_step(model, data, 0)``; and its pieces, timed alone:
   ``np.concatenate`` of ``(qpos[1:], qvel)`` against the one-call gather (``data_gather``), and ``mj_step`` called
   with ``nstep`` as a keyword against positionally. Minimum over repeats of ``timeit`` loops.

Usage::

    .venv/bin/python experiments/bench_envs.py --quick        # ~1 minute
    .venv/bin/python experiments/bench_envs.py                 # ~3-4 minutes (builds Meta-World ML10 and ML45)
    .venv/bin/python experiments/bench_envs.py --only vector   # one section: step_cost, vector or steps_per_second
    .venv/bin/python experiments/bench_envs.py --only vector --wait-quiet 60   # on a shared machine

On a machine shared with other jobs, threads cannot help when the other cores are taken: ``cpu_idle_*`` in the
report says how idle the machine was, and ``--wait-quiet`` measures each vector repeat in a quiet moment.

The JSON goes to stdout (and to ``--out`` if given); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.envs.mujoco_base import MujocoTaskEnv
from metarl.envs.registration import ENVIRONMENTS
from metarl.envs.vector import TaskVectorEnv

VECTOR_ENV_ID = "metarl/HalfCheetahVel-v0"
VECTOR_NUM_ENVS = 20
STEP_COST_TARGET = 1.15
VECTOR_TARGET = 1.5


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_idle_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs' time spent idle over ``interval`` seconds (Linux ``/proc/stat``; None elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
        return sum(values), values[3] + values[4]

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return None
    return (idle1 - idle0) / max(1, total1 - total0)


def cpu_times() -> tuple[int, int] | None:
    """(all CPU time, steal time) so far, in clock ticks (Linux ``/proc/stat``; None elsewhere). Steal is time the
    hypervisor gave this VM's vCPUs to someone else: on a shared host it takes the second core from the threads."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
    except OSError:
        return None
    return sum(values), values[7]


def wait_until_quiet(limit_s: float, idle_needed: float = 0.9) -> float | None:
    """Wait (at most ``limit_s``) until the machine is at least ``idle_needed`` idle; return the last idle reading."""
    deadline = time.monotonic() + limit_s
    idle = cpu_idle_fraction()
    while idle is not None and idle < idle_needed and time.monotonic() < deadline:
        idle = cpu_idle_fraction()
    return idle


def entry_class(entry_point: str) -> type | None:
    module, name = entry_point.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


# --- 1. env step vs raw mj_step ------------------------------------------------------------------------------
def time_env_steps(env: MujocoTaskEnv, actions: np.ndarray) -> float:
    t0 = time.perf_counter()
    for action in actions:
        env.step(action)
    return time.perf_counter() - t0


def time_raw_steps(env: MujocoTaskEnv, raw: mujoco.MjData, start: tuple, controls: np.ndarray) -> float:
    """The same physics as ``time_env_steps``: the env's start state, its clipped actions, plain ``mj_step``."""
    model, nstep, full = env.model, env.frame_skip, int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    mujoco.mj_setState(model, raw, start[0], full)
    raw.qacc_warmstart[:] = start[1]
    ctrl, mj_step = raw.ctrl, mujoco.mj_step
    t0 = time.perf_counter()
    for control in controls:
        ctrl[:] = control
        mj_step(model, raw, nstep)  # positional: pybind's keyword path costs ~0.35 us more per call
    return time.perf_counter() - t0


def step_cost(env_id: str, steps: int, repeats: int) -> dict[str, Any]:
    """Median over ``repeats`` of (time of ``steps`` env steps) / (time of the same ``steps`` raw mj_step calls)."""
    env = gym.make(env_id).unwrapped
    env.set_task(env.sample_tasks(1, split="train", seed=0)[0])
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    ratios, env_us, raw_us = [], [], []
    for repeat in range(repeats):
        env.reset(seed=repeat)
        actions = rng.uniform(low, high, size=(steps, *low.shape)).astype(np.float32)
        controls = np.clip(actions.astype(np.float64), env._ctrl_low, env._ctrl_high)
        state = np.empty(mujoco.mj_stateSize(env.model, full))
        mujoco.mj_getState(env.model, env.data, state, full)
        start = (state, env.data.qacc_warmstart.copy())
        raw = mujoco.MjData(env.model)
        if repeat % 2:
            t_raw = time_raw_steps(env, raw, start, controls)
            t_env = time_env_steps(env, actions)
        else:
            t_env = time_env_steps(env, actions)
            t_raw = time_raw_steps(env, raw, start, controls)
        ratios.append(t_env / t_raw)
        env_us.append(1e6 * t_env / steps)
        raw_us.append(1e6 * t_raw / steps)
    env.close()
    ratio = statistics.median(ratios)
    return {
        "ratio_median": round(ratio, 3),
        "ratios": [round(r, 3) for r in ratios],
        "env_step_us_median": round(statistics.median(env_us), 2),
        "mj_step_us_median": round(statistics.median(raw_us), 2),
        "meets_target": ratio <= STEP_COST_TARGET,
    }


def python_overhead(env_id: str = VECTOR_ENV_ID, number: int = 50_000, repeats: int = 9) -> dict[str, Any]:
    """Microseconds per call of the pieces described in the module docstring (4.), best of ``repeats``."""
    import timeit

    from metarl.envs.mujoco_base import data_gather

    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    env.frame_skip = 0
    env._min_time_advance = -1.0  # with no physics time does not advance: not a blow-up here
    model, data = env.model, env.data
    action = env.action_space.sample()
    ctrl, step = data.ctrl, mujoco.mj_step
    parts = (data.qpos[1:], data.qvel)
    source, index = data_gather(parts)

    def raw() -> None:
        ctrl[:] = action
        step(model, data, 0)

    pieces = {
        "env_step": lambda: env.step(action), "raw_ctrl_write_and_mj_step": raw,
        "concatenate": lambda: np.concatenate(parts), "gather": lambda: source[index],
        "mj_step_keyword": lambda: step(model, data, nstep=0), "mj_step_positional": lambda: step(model, data, 0),
    }
    us = {name: round(1e6 * min(timeit.repeat(f, number=number, repeat=repeats)) / number, 3)
          for name, f in pieces.items()}
    env.close()
    us["env_python_over_raw"] = round(us["env_step"] - us["raw_ctrl_write_and_mj_step"], 3)
    return {"env_id": env_id, "us_per_call": us}


# --- 2. TaskVectorEnv vs SyncVectorEnv -----------------------------------------------------------------------
def make_policy(obs_dim: int, act_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(obs_dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, act_dim), torch.nn.Tanh(),
    )

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    return policy


def vector_benchmark(steps: int, repeats: int, wait_quiet_s: float) -> dict[str, Any]:
    n = VECTOR_NUM_ENVS
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(VECTOR_ENV_ID)] * n)
    candidates = {
        "task_vector_auto": TaskVectorEnv(VECTOR_ENV_ID, n),
        "task_vector_loop": TaskVectorEnv(VECTOR_ENV_ID, n, physics_threads=1),
        "task_vector_threads": TaskVectorEnv(VECTOR_ENV_ID, n, physics_threads=2),
        # the same two threads as Python threads (what runs where the compiled worker was not built)
        "task_vector_python_threads": TaskVectorEnv(VECTOR_ENV_ID, n, physics_threads=2, native_worker=False),
    }
    tasks = candidates["task_vector_auto"].single_task_env.sample_tasks(n, split="train", seed=0)
    for env, task in zip(sync.envs, tasks):
        env.unwrapped.set_task(task)
    for vec in candidates.values():
        vec.set_tasks(tasks)
    envs: dict[str, gym.vector.VectorEnv] = {"sync": sync, **candidates}
    policy = make_policy(sync.single_observation_space.shape[0], sync.single_action_space.shape[0])
    observations = {name: vec.reset(seed=0)[0] for name, vec in envs.items()}

    cpu_us: dict[str, list[float]] = {name: [] for name in envs}

    def run(name: str, count: int) -> float:
        vec, obs = envs[name], observations[name]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            obs = vec.step(policy(obs))[0]
        observations[name] = obs
        cpu_us[name].append(1e6 * (time.process_time() - c0) / (n * count))
        return n * count / (time.perf_counter() - t0)

    for name in envs:  # warm up (and let auto mode take its first decision)
        run(name, 40)
    rates: dict[str, list[float]] = {name: [] for name in envs}
    ratios: dict[str, list[float]] = {name: [] for name in candidates}
    idle_before: list[float | None] = []
    steal: list[float] = []
    order = list(envs)
    for repeat in range(repeats):
        idle_before.append(wait_until_quiet(wait_quiet_s) if wait_quiet_s > 0 else None)
        current = order if repeat % 2 == 0 else order[::-1]
        before = cpu_times()
        measured = {name: run(name, steps) for name in current}
        after = cpu_times()
        if before and after:
            steal.append((after[1] - before[1]) / max(1, after[0] - before[0]))
        for name, rate in measured.items():
            rates[name].append(rate)
        for name in candidates:
            ratios[name].append(measured[name] / measured["sync"])
    result: dict[str, Any] = {
        "env_id": VECTOR_ENV_ID,
        "num_envs": n,
        "steps_per_block": steps,
        "repeats": repeats,
        "policy": "MLP 17-64-64-6 tanh, torch, 1 thread, batched observation",
        "env_steps_per_s_median": {name: round(statistics.median(r)) for name, r in rates.items()},
        "ratio_vs_sync_median": {name: round(statistics.median(r), 3) for name, r in ratios.items()},
        "ratio_vs_sync_all": {name: [round(x, 3) for x in r] for name, r in ratios.items()},
        "auto_uses_threads_at_end": candidates["task_vector_auto"].uses_physics_threads,
        "native_worker": candidates["task_vector_threads"].native_physics,
        "cpu_idle_before_each_repeat": [None if x is None else round(x, 2) for x in idle_before],
        # share of the VM's CPU time the host took during each repeat (threads lose the second core then)
        "cpu_steal_each_repeat": [round(x, 3) for x in steal],
        # CPU time of the whole process per env step: less disturbed by other jobs than wall time, comparable
        # between the single-threaded variants (sync, loop); the threaded ones add up both threads
        "process_cpu_us_per_env_step_median": {name: round(statistics.median(c), 2) for name, c in cpu_us.items()},
    }
    result["cpu_ratio_sync_over_loop"] = round(
        result["process_cpu_us_per_env_step_median"]["sync"]
        / result["process_cpu_us_per_env_step_median"]["task_vector_loop"],
        3,
    )
    result["meets_target"] = result["ratio_vs_sync_median"]["task_vector_auto"] >= VECTOR_TARGET
    for vec in envs.values():
        vec.close()
    return result


# --- 3. steps/s of every registered env ----------------------------------------------------------------------
def steps_per_second(env_id: str, steps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    env = gym.make(env_id)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    ready = time.perf_counter() - t0
    actions = [env.action_space.sample() for _ in range(steps)]
    resets = 0
    t0 = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
            resets += 1
    elapsed = time.perf_counter() - t0
    env.close()
    return {"steps_per_s": round(steps / elapsed), "resets": resets, "make_and_first_reset_s": round(ready, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps; skips Meta-World ML10/ML45")
    parser.add_argument("--only", choices=["step_cost", "vector", "steps_per_second", "python_overhead"],
                        action="append")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--envs", nargs="+", metavar="ID", help="only these env ids (step_cost and steps_per_second)")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
        help="before each vector repeat, wait up to this long for the machine to be 90%% idle (shared machines)",
    )
    args = parser.parse_args()
    sections = set(args.only or ["step_cost", "vector", "steps_per_second", "python_overhead"])
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # Gymnasium's checker on Meta-World's zero goal box
    quick = args.quick
    report: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "cpu_idle_at_start": cpu_idle_fraction(1.0),
        },
        "versions": {"mujoco": mujoco.__version__, "gymnasium": gym.__version__, "torch": torch.__version__},
        "targets": {"step_cost_ratio_at_most": STEP_COST_TARGET, "vector_ratio_at_least": VECTOR_TARGET},
    }
    available = [(env_id, entry_class(entry)) for env_id, entry, _, _ in ENVIRONMENTS]
    if args.envs:
        unknown = sorted(set(args.envs) - {env_id for env_id, _ in available})
        if unknown:
            parser.error(f"unknown env ids {unknown}")
        available = [(env_id, cls) for env_id, cls in available if env_id in args.envs]

    if "step_cost" in sections:
        report["step_cost"] = {}
        for env_id, cls in available:
            if cls is not None and issubclass(cls, MujocoTaskEnv):
                log(f"step cost: {env_id}")
                report["step_cost"][env_id] = step_cost(
                    env_id, steps=400 if quick else 2000, repeats=5 if quick else 15
                )
    if "vector" in sections:
        if entry_class(dict((e[0], e[1]) for e in ENVIRONMENTS)[VECTOR_ENV_ID]) is None:
            report["vector"] = {"skipped": f"{VECTOR_ENV_ID} does not import"}
        else:
            log("vector: TaskVectorEnv vs SyncVectorEnv")
            report["vector"] = vector_benchmark(
                steps=60 if quick else 100, repeats=9 if quick else 21, wait_quiet_s=args.wait_quiet
            )
    if "steps_per_second" in sections:
        report["steps_per_second"] = {}
        for env_id, cls in available:
            if cls is None:
                report["steps_per_second"][env_id] = {"skipped": "does not import"}
                continue
            if quick and env_id in ("metarl/MetaWorldML10-v0", "metarl/MetaWorldML45-v0"):
                report["steps_per_second"][env_id] = {"skipped": "--quick (Meta-World builds the benchmark: 9-30 s)"}
                continue
            log(f"steps/s: {env_id}")
            report["steps_per_second"][env_id] = steps_per_second(env_id, steps=1000 if quick else 3000)
    if "python_overhead" in sections:
        log("python overhead: HalfCheetahVel step without physics")
        report["python_overhead"] = python_overhead()
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
