"""How much faster can the physics of 20 HalfCheetahVel tasks run on two threads than on one, on this machine?

The ceiling under ``TaskVectorEnv``'s 1.5x target (issue 3): no env Python, no policy, only physics, timed three
ways on the same 20 sub-envs (their own ``MjModel``/``MjData``, random controls held for ``frame_skip`` steps):

* ``loop``: ``mj_step(model, data, nstep=frame_skip)`` for each env in turn, one thread;
* ``threads``: the same calls split between the calling thread and one worker thread (``mj_step`` releases the GIL),
  as ``TaskVectorEnv``'s threaded path does;
* ``native``: the same split with ``TaskVectorEnv``'s compiled worker (``envs/_physics_worker.c``) as the worker:
  one ctypes call hands it its block, it steps it in C without the GIL and spins between blocks;
* ``rollout``: MuJoCo's own multi-threaded ``mujoco.rollout`` over all 20 envs in one call (2 threads, persistent
  pool, no GIL at all while it runs), plus the ``mj_getState``/``mj_setState`` copies it needs in and out;
* ``two_streams``: the ``threads`` split, but each thread steps its half through the whole block of ``--steps``
  vector steps with one hand-off per block instead of one per vector step: what the two vCPUs give when nothing
  synchronises them (a vector env cannot do this: every step waits for the policy's actions);
* ``two_streams_held``: ``two_streams`` with the controls held through the block (no Python between the
  ``mj_step`` calls but the loop itself): how much of the two-thread gain the GIL hand-backs between calls take.

Also ``handoff_round_trip_us``: the median time of handing a no-op to the worker thread and waiting for it
(``ThreadPoolExecutor.submit(...).result()``), the synchronisation each threaded vector step pays once, and
``native_handoff_round_trip_us``, the same for the compiled worker (an empty block, submit + wait).

Interleaved repeats, medians, JSON on stdout. Run it with the machine otherwise idle:

    .venv/bin/python experiments/bench_parallel_physics.py --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.envs import physics_worker

ENV_ID = "metarl/HalfCheetahVel-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100, help="vector steps per timed block")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    n = args.num_envs
    envs = [gym.make(ENV_ID).unwrapped for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    models, datas = [e.model for e in envs], [e.data for e in envs]
    frame_skip = envs[0].frame_skip
    rng = np.random.default_rng(0)
    controls = rng.uniform(-1.0, 1.0, size=(args.steps, n, models[0].nu))
    full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    nstate = mujoco.mj_stateSize(models[0], full)
    start_states = np.empty((n, nstate))
    rollout_states = np.empty((n, frame_skip, nstate))
    scratch = [mujoco.MjData(models[0]) for _ in range(2)]
    pool = ThreadPoolExecutor(1)
    half = n // 2
    library = physics_worker.NativeLibrary.load()
    native_worker = physics_worker.NativeWorker(library, n) if library is not None else None
    if native_worker is not None:
        for k in range(half, n):
            native_worker.models[k - half], native_worker.datas[k - half] = models[k]._address, datas[k]._address
            native_worker.nsteps[k - half] = frame_skip

    def set_controls(step: int) -> None:
        for data, control in zip(datas, controls[step]):
            data.ctrl[:] = control

    def physics(ms: list, ds: list) -> None:
        for model, data in zip(ms, ds):
            mujoco.mj_step(model, data, frame_skip)

    def loop(step: int) -> None:
        set_controls(step)
        physics(models, datas)

    def threads(step: int) -> None:
        set_controls(step)
        worker = pool.submit(physics, models[half:], datas[half:])
        physics(models[:half], datas[:half])
        worker.result()

    def native(step: int) -> None:
        set_controls(step)
        native_worker.submit(n - half)
        physics(models[:half], datas[:half])
        native_worker.wait()

    def half_stream(lo: int, hi: int, write_controls: bool = True) -> None:
        for step in range(args.steps):
            for k in range(lo, hi):
                if write_controls:
                    datas[k].ctrl[:] = controls[step, k]
                mujoco.mj_step(models[k], datas[k], frame_skip)

    def two_streams(write_controls: bool = True) -> None:
        worker = pool.submit(half_stream, half, n, write_controls)
        half_stream(0, half, write_controls)
        worker.result()

    def two_streams_held() -> None:
        set_controls(0)
        two_streams(write_controls=False)

    def batched_rollout(step: int) -> None:
        for k in range(n):
            mujoco.mj_getState(models[k], datas[k], start_states[k], full)
        held = np.repeat(controls[step][:, None, :], frame_skip, axis=1)
        rollout.rollout(models, scratch, start_states, held, nstep=frame_skip, skip_checks=True,
                        state=rollout_states, persistent_pool=True)
        for k in range(n):
            mujoco.mj_setState(models[k], datas[k], rollout_states[k, -1], full)

    def per_step(function: Callable[[int], None]) -> Callable[[], None]:
        return lambda: [function(step) for step in range(args.steps)]

    variants: dict[str, Callable[[], None]] = {
        "loop": per_step(loop), "threads": per_step(threads), "rollout": per_step(batched_rollout),
        "two_streams": two_streams, "two_streams_held": two_streams_held,
    }
    if native_worker is not None:
        variants["native"] = per_step(native)
    snapshot = np.empty((n, nstate))
    for k in range(n):
        mujoco.mj_getState(models[k], datas[k], snapshot[k], full)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):
        order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
        for name in order:
            for k in range(n):  # every variant steps the same states with the same controls
                mujoco.mj_setState(models[k], datas[k], snapshot[k], full)
            t0 = time.perf_counter()
            variants[name]()
            if repeat:  # the first round warms up (thread pools, caches)
                times[name].append(1e6 * (time.perf_counter() - t0) / (args.steps * n))
    handoffs = []
    for _ in range(2000):
        t0 = time.perf_counter()
        pool.submit(int).result()
        handoffs.append(time.perf_counter() - t0)
    native_handoffs = []
    if native_worker is not None:
        for _ in range(2000):
            t0 = time.perf_counter()
            native_worker.submit(0)
            native_worker.wait()
            native_handoffs.append(time.perf_counter() - t0)
        native_worker.close()
    rollout.shutdown_persistent_pool()
    pool.shutdown()
    us = {name: round(statistics.median(t), 2) for name, t in times.items()}
    print(json.dumps({
        "env_id": ENV_ID, "num_envs": n, "steps_per_block": args.steps, "repeats": args.repeats,
        "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "physics_us_per_env_step_median": us,
        "speedup_over_loop": {name: round(us["loop"] / value, 3) for name, value in us.items()},
        "handoff_round_trip_us": round(1e6 * statistics.median(handoffs), 1),
        "native_handoff_round_trip_us": round(1e6 * statistics.median(native_handoffs), 1) if native_handoffs else None,
        "versions": {"mujoco": mujoco.__version__, "gymnasium": gym.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
