"""The Ray sampler (issue 19, part 2): measured on this machine, checked on a simulated cluster, modelled beyond it.

    .venv/bin/python experiments/bench_ray_sampler.py --out experiments/figures/ray_sampler_scaling.png

Prints one JSON object:

* ``iterations``: env-steps/s of MAML-TRPO and PEARL meta-iterations on HalfCheetahVel (small settings, the first
  iteration of each left out) with the local sampler and with the Ray sampler on 1 and 2 workers, in the same run,
  and each Ray figure's ratio to the local one. Collection on a 2-core machine that also runs the learner and the
  driver: 2 workers cannot be twice 1 here.
* ``vector_step``: seconds per vector step of HalfCheetahVel's sub-envs, local and over 1 and 2 workers, for several
  numbers of sub-envs N (random actions), the driver's CPU seconds per step, and the bytes one step moves per
  sub-env (pickled observation, reward, flags and info out, action in).
* ``cluster``: a Ray cluster of 1 + 3 nodes simulated on this machine (``ray.cluster_utils.Cluster``; the head has no
  CPU, each node 1): where 3 workers were placed (distinct nodes), and a node removed mid-episode (a fourth node
  added first, so the replacement has a CPU): the group replaces its worker and the episode's numbers equal the
  local vector env's.
* ``model``: the per-step cost fitted to ``vector_step``, ``t(W) = t_fixed + W t_call + N t_x + ceil(N / W) t_env``
  (``t_env`` one sub-env's step, on the slowest worker ``ceil(N / W)`` of them; ``t_x`` the per-sub-env transfer
  and merge; ``t_call`` the driver's cost per worker call; ``t_fixed`` the rest), extrapolated to M machines of one
  worker each at the MAML paper's HalfCheetahVel batch
  (40 tasks x 5 sub-envs, 200-step episodes, 20 episodes per task: 200 sub-envs, 4 rounds); the speed-up of
  collection and of a whole iteration (with the learner time per env step measured in ``iterations``), against the
  ideal line, for this step-level sampler and for an episode-level one (whole rollouts on the workers, weights out
  once per iteration; a model only, not built); plotted to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from metarl.agents.pearl import PEARL, PEARLConfig
from metarl.core.ray_sampler import WorkerGroup, unbatch_infos
from metarl.envs.vector import TaskVectorEnv

CHEETAH = "metarl/HalfCheetahVel-v0"
NAV = "metarl/Navigation2D-v0"
MAML = dict(meta_batch_size=4, episodes_per_task=4, envs_per_task=2, max_episode_steps=100, hidden_sizes=[32, 32])
PEARL_SMALL = dict(num_train_tasks=4, num_tasks_sample=4, num_initial_steps=100, num_steps_prior=100,
                   num_extra_rl_steps_posterior=100, gradient_steps=10, max_episode_steps=100, batch_size=64,
                   embedding_batch_size=32, meta_batch_size=4, hidden_sizes=[64, 64], encoder_hidden_sizes=[64],
                   replay_capacity=2000)
PAPER_BATCH = dict(num_envs=200, rounds=4, horizon=200, collections=2)  # MAML paper HalfCheetahVel, per iteration
MACHINES = [1, 2, 4, 8, 16, 32, 64, 128]
CONFIGS = {MAMLTRPO: MAMLTRPOConfig, PEARL: PEARLConfig}


def iteration_rates(agent_type: Any, options: dict[str, Any], iterations: int, worker_counts: list[int]
                    ) -> dict[str, Any]:
    out = {}
    for sampler, workers in (("local", 1), *(("ray", w) for w in worker_counts)):
        agent = agent_type(CHEETAH, CONFIGS[agent_type](**options, sampler=sampler, num_workers=workers))
        try:
            rows = []
            for i in range(iterations):
                start = time.perf_counter()
                metrics = agent.train_iteration(i)
                rows.append((metrics["env_steps"], time.perf_counter() - start, metrics.get("time/learner_seconds")))
        finally:
            agent.close()
        kept = rows[1:]
        steps, seconds = sum(r[0] for r in kept), sum(r[1] for r in kept)
        name = sampler if sampler == "local" else f"ray_{workers}_workers"
        out[name] = {"env_steps_per_s": steps / seconds, "seconds_per_iteration": seconds / len(kept),
                     "env_steps_per_iteration": steps / len(kept)}
        if kept[0][2] is not None:
            out[name]["learner_seconds_per_env_step"] = sum(r[2] for r in kept) / steps
    for name in (f"ray_{w}_workers" for w in worker_counts):
        out[name]["ratio_to_local"] = out[name]["env_steps_per_s"] / out["local"]["env_steps_per_s"]
    return out


REPEATS = 5


def step_seconds(envs: Any, steps: int, rng: np.random.Generator) -> tuple[float, float]:
    """Wall and driver-CPU seconds per vector step (episodes of 100 steps, autoreset in between): the medians of
    :data:`REPEATS` blocks of ``steps`` steps (the machine is shared)."""
    envs.set_tasks(envs.single_task_env.sample_tasks(envs.num_envs, seed=0))
    envs.reset(seed=0)
    shape = (envs.num_envs, *envs.single_action_space.shape)
    actions = [rng.uniform(-1, 1, size=shape) for _ in range(steps)]
    envs.step(actions[0])
    walls, cpus = [], []
    for _ in range(REPEATS):
        wall, cpu = time.perf_counter(), time.process_time()
        for a in actions:
            envs.step(a)
        walls.append((time.perf_counter() - wall) / steps)
        cpus.append((time.process_time() - cpu) / steps)
    return float(np.median(walls)), float(np.median(cpus))


def vector_steps(sizes: list[int], steps: int, worker_counts: list[int]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"num_envs": sizes, "workers": worker_counts, "local": [],
                           **{f"ray_{w}_workers": [] for w in worker_counts},
                           **{f"driver_cpu_ray_{w}_workers": [] for w in worker_counts}}
    for n in sizes:
        local = TaskVectorEnv(CHEETAH, n, max_episode_steps=100, physics_threads=1)
        out["local"].append(step_seconds(local, steps, rng)[0])
        # bytes one step moves per sub-env: what a worker returns and the action it gets
        local.reset(seed=0)
        obs, rew, term, trunc, infos = local.step(np.zeros((n, *local.single_action_space.shape)))
        back = len(pickle.dumps((obs, rew, term, trunc, unbatch_infos(infos, n)), protocol=5))
        out.setdefault("bytes_per_sub_env_step", []).append(
            (back + len(pickle.dumps(np.zeros((n, 6)), protocol=5))) / n)
        local.close()
    for w in worker_counts:  # one group at a time: the instance has as many CPUs as the largest group
        group = WorkerGroup(CHEETAH, w, max_episode_steps=100)
        try:
            for n in sizes:
                envs = group.vector_env(n)
                wall, cpu = step_seconds(envs, steps, rng)
                out[f"ray_{w}_workers"].append(wall)
                out[f"driver_cpu_ray_{w}_workers"].append(cpu)
                envs.close()
        finally:
            group.close()
    return out


def fit(vs: dict[str, Any]) -> dict[str, float]:
    """The model's constants from ``vector_step``: ``t_env`` the slope of the local seconds per step against N; the
    driver's CPU per step ``d0 + W t_call + N t_x`` by least squares over every Ray point ``(N, W)`` (CPU time is
    steadier than wall time on a shared machine); ``t_fixed = d0 +`` the latency, the median over the points of
    what the wall time leaves after the driver's CPU and ``ceil(N / W) t_env`` (each clipped at 0)."""
    n = np.asarray(vs["num_envs"], dtype=float)
    t_env = max(float(np.polyfit(n, vs["local"], 1)[0]), 0.0)
    rows, cpu, rest = [], [], []
    for w in vs["workers"]:
        for size, wall, driver in zip(n, vs[f"ray_{w}_workers"], vs[f"driver_cpu_ray_{w}_workers"]):
            rows.append([1.0, w, size])
            cpu.append(driver)
            rest.append(wall - driver - math.ceil(size / w) * t_env)
    (d0, t_call, t_x), *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(cpu), rcond=None)
    latency = max(float(np.median(rest)), 0.0)
    return {"t_env": t_env, "t_fixed": max(float(d0), 0.0) + latency, "t_call": max(float(t_call), 0.0),
            "t_x": max(float(t_x), 0.0), "driver_cpu_fixed": float(d0), "latency": latency}


def model(constants: dict[str, float], learner_per_step: float, bytes_per_step: float,
          bandwidth: float = 1.25e9) -> dict[str, Any]:
    """Speed-ups of one iteration's collection and of the whole iteration on M one-worker machines."""
    n, rounds, horizon, collections = (PAPER_BATCH[k] for k in ("num_envs", "rounds", "horizon", "collections"))
    vector_steps_per_iteration = rounds * horizon * collections
    env_steps = vector_steps_per_iteration * n
    learner = learner_per_step * env_steps
    c = constants

    def step_level(m: int) -> float:
        w = min(m, n)
        per_step = c["t_fixed"] + w * c["t_call"] + n * c["t_x"] + math.ceil(n / w) * c["t_env"]
        return vector_steps_per_iteration * per_step

    weights_bytes = 4 * (20 * 100 + 100 * 100 + 100 * 12)  # the 100x100 policy of the preset, float32

    def episode_level(m: int) -> float:
        w = min(m, n)
        moved = (env_steps * bytes_per_step + w * weights_bytes) / bandwidth
        stepping = math.ceil(n / w) * rounds * horizon * collections * c["t_env"]
        return stepping + collections * w * c["t_call"] + moved

    out: dict[str, Any] = {"machines": MACHINES, "env_steps_per_iteration": env_steps,
                           "learner_seconds_per_iteration": learner, "bandwidth_bytes_per_s": bandwidth,
                           "bytes_per_iteration_step_level": env_steps * bytes_per_step}
    for name, collect in (("step_level", step_level), ("episode_level", episode_level)):
        base = collect(1)
        out[name] = {
            "collection_seconds": [collect(m) for m in MACHINES],
            "collection_speed_up": [base / collect(m) for m in MACHINES],
            "iteration_speed_up": [(base + learner) / (collect(m) + learner) for m in MACHINES],
        }
        out[name]["collection_efficiency_at_32"] = out[name]["collection_speed_up"][MACHINES.index(32)] / 32
        out[name]["learner_bound_from_machines"] = next(
            (m for m, t in zip(MACHINES, out[name]["collection_seconds"]) if t < learner), None)
    return out


def cluster_check() -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        group = WorkerGroup(NAV, 3, max_episode_steps=30)
        placed = [node for _, node in group.placement]
        n = 6
        remote, local = group.vector_env(n), TaskVectorEnv(NAV, n, max_episode_steps=30)
        tasks = local.single_task_env.sample_tasks(n, seed=0)
        for envs in (local, remote):
            envs.set_tasks(tasks)
        same = bool(np.array_equal(local.reset(seed=1)[0], remote.reset(seed=1)[0]))
        spare = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        rng = np.random.default_rng(0)
        for step in range(40):
            if step == 12:  # the node of worker 1 goes away mid-episode
                victim = next(node for node in nodes if node.node_id == placed[1])
                cluster.remove_node(victim)
            actions = rng.uniform(-0.1, 0.1, size=(n, 2))
            a, b = local.step(actions), remote.step(actions)
            same &= all(bool(np.array_equal(x, y)) for x, y in zip(a[:4], b[:4]))
        result = {"nodes_with_cpus": 3, "workers": 3, "distinct_nodes_used": len(set(placed)),
                  "replacements_after_node_removal": group.replacements,
                  "replacement_on_new_node": group.placement[1][1] == spare.node_id,
                  "episodes_equal_local": same}
        remote.close()
        local.close()
        group.close()
        return result
    finally:
        ray.shutdown()
        cluster.shutdown()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    m = MACHINES
    ax.plot(m, m, "k--", label="ideal (linear)")
    styles = {"step_level": ("tab:blue", "step-level sampler (built)"),
              "episode_level": ("tab:orange", "episode-level sampler (model only)")}
    for name, (color, label) in styles.items():
        ax.plot(m, result[name]["collection_speed_up"], "-o", color=color, label=f"{label}: collection")
        ax.plot(m, result[name]["iteration_speed_up"], ":s", color=color, label=f"{label}: whole iteration")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("machines (one rollout worker each)")
    ax.set_ylabel("speed-up over one machine")
    ax.set_title("MAML-TRPO, HalfCheetahVel paper batch (200 sub-envs): model fitted on 2 cores", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="vector steps per size in vector_step")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to measure")
    parser.add_argument("--out", type=Path, default=Path("experiments/figures/ray_sampler_scaling.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result: dict[str, Any] = {"commit": commit, "machine": platform.processor() or platform.machine(),
                              "ray": ray.__version__}
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    try:
        result["iterations"] = {"maml_trpo": iteration_rates(MAMLTRPO, MAML, args.iterations, args.workers),
                                "pearl": iteration_rates(PEARL, PEARL_SMALL, args.iterations, args.workers)}
        result["vector_step"] = vector_steps(args.sizes, args.steps, args.workers)
    finally:
        ray.shutdown()
    result["cluster"] = cluster_check()
    constants = fit(result["vector_step"])
    learner = result["iterations"]["maml_trpo"]["local"]["learner_seconds_per_env_step"]
    bytes_per_step = float(np.mean(result["vector_step"]["bytes_per_sub_env_step"]))
    result["model"] = {"constants": constants, **model(constants, learner, bytes_per_step)}
    plot(result["model"], args.out)
    result["figure"] = str(args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
