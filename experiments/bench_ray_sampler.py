"""The Ray sampler (issue 19, part 2): measured on this machine, checked on a simulated cluster, modelled beyond it.

    .venv/bin/python experiments/bench_ray_sampler.py --out experiments/figures/ray_sampler_scaling.png

Prints one JSON object:

* ``iterations``: env-steps/s of MAML-TRPO and PEARL meta-iterations on HalfCheetahVel (small settings, the first
  iteration of each left out) with the local sampler and with the Ray sampler on 1 and 2 workers, in the same run,
  and each figure's ratio to the local one; for MAML-TRPO also the local sampler with per-episode streams and
  ``sampler="ray-episodes"`` (whole episodes on the workers) on 1 and 2 workers. Collection on a 2-core machine
  that also runs the learner and the driver: 2 workers cannot be twice 1 here.
* ``vector_step``: seconds per vector step of HalfCheetahVel's sub-envs, local and over 1 and 2 workers, for several
  numbers of sub-envs N (random actions), the driver's CPU seconds per step, and the bytes one step moves per
  sub-env (pickled observation, reward, flags and info out, action in).
* ``cluster``: a Ray cluster of 1 + 3 nodes simulated on this machine (``ray.cluster_utils.Cluster``; the head has no
  CPU, each node 1): where 3 workers were placed (distinct nodes), and a node removed mid-episode (a fourth node
  added first, so the replacement has a CPU): the group replaces its worker and the episode's numbers equal the
  local vector env's.
* ``episode_level``: the driver's CPU and the wall time of ``ray-episodes`` calls on 1 and 2 workers
  (:func:`ray_episode_calls`), and per scenario (:data:`SCENARIOS`) a worker's seconds per vector step of a
  per-episode collection against its sub-envs and the bytes it moves (:func:`worker_costs`).
* ``model``, per scenario (the MAML paper's HalfCheetahVel batch, 200 sub-envs; the ML10 preset's batch, 100
  Meta-World sub-envs of 500-step episodes): the speed-up of collection and of a whole iteration (with the learner
  time per env step measured in ``iterations``) on M machines of one worker each, against the ideal line. The
  step-level sampler (HalfCheetahVel only): the per-step cost fitted to ``vector_step``,
  ``t(W) = t_fixed + W t_call + N t_x + ceil(N / W) t_env`` (``t_env`` one sub-env's step, on the slowest worker
  ``ceil(N / W)`` of them; ``t_x`` the per-sub-env transfer and merge; ``t_call`` the driver's cost per worker call;
  ``t_fixed`` the rest). The episode-level sampler: a block of tasks × episodes per machine
  (:func:`~metarl.core.ray_sampler.episode_blocks`), its slowest block's stepping at the fitted worker cost
  ``a + b n`` per vector step (:func:`fit_worker`), plus the driver's fitted per-call, per-worker and per-step costs
  and the latency (:func:`fit_driver`) and the bytes at ``bandwidth``; plotted to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from metarl.agents.pearl import PEARL, PEARLConfig
from metarl.core.policies import make_policy
from metarl.core.ray_sampler import WorkerGroup, episode_blocks, unbatch_infos
from metarl.core.sampling import collect_episodes
from metarl.envs.vector import TaskVectorEnv
from metarl.runs import head_commit

CHEETAH = "metarl/HalfCheetahVel-v0"
NAV = "metarl/Navigation2D-v0"
MAML = dict(meta_batch_size=4, episodes_per_task=4, envs_per_task=2, max_episode_steps=100, hidden_sizes=[32, 32])
PEARL_SMALL = dict(num_train_tasks=4, num_tasks_sample=4, num_initial_steps=100, num_steps_prior=100,
                   num_extra_rl_steps_posterior=100, gradient_steps=10, max_episode_steps=100, batch_size=64,
                   embedding_batch_size=32, meta_batch_size=4, hidden_sizes=[64, 64], encoder_hidden_sizes=[64],
                   replay_capacity=2000)
MACHINES = [1, 2, 4, 8, 16, 32, 64, 128]
CONFIGS = {MAMLTRPO: MAMLTRPOConfig, PEARL: PEARLConfig}


def iteration_rates(agent_type: Any, options: dict[str, Any], iterations: int, worker_counts: list[int],
                    episode_level: bool = False) -> dict[str, Any]:
    """Env-steps/s of whole iterations per sampler: local, ray on each worker count and, with ``episode_level``,
    the local sampler with per-episode streams and ray-episodes on each worker count."""
    out = {}
    variants = [("local", "local", 1, {}), *((f"ray_{w}_workers", "ray", w, {}) for w in worker_counts)]
    if episode_level:
        variants += [("local_per_episode", "local", 1, {"rollout_streams": "per-episode"}),
                     *((f"ray_episodes_{w}_workers", "ray-episodes", w, {}) for w in worker_counts)]
    for name, sampler, workers, extra in variants:
        agent = agent_type(CHEETAH, CONFIGS[agent_type](**options, sampler=sampler, num_workers=workers, **extra))
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
        out[name] = {"env_steps_per_s": steps / seconds, "seconds_per_iteration": seconds / len(kept),
                     "env_steps_per_iteration": steps / len(kept)}
        if kept[0][2] is not None:
            out[name]["learner_seconds_per_env_step"] = sum(r[2] for r in kept) / steps
    for name in out:
        if name != "local":
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


SCENARIOS: dict[str, dict[str, Any]] = {
    # the MAML paper's HalfCheetahVel batch per iteration: 40 tasks x 20 episodes on 5 sub-envs per task (4 rounds)
    # of 200 steps, support and query; its 100x100 policy
    "cheetah_vel": dict(env=CHEETAH, env_kwargs={}, hidden=(100, 100), tasks=40, per_task=5, rounds=4, horizon=200,
                        collections=2, worker_tasks=(1, 5, 20)),
    # ML10 with the preset experiments/presets/maml_trpo_ml10.yaml: 20 tasks x 10 episodes on 5 sub-envs per task
    # (2 rounds) of 500 steps, support and query, a 128x128 policy; the worker cost measured on ML1 reach-v3
    "metaworld_ml10": dict(env="metarl/MetaWorldML1-v0", env_kwargs={"task_name": "reach-v3", "max_cached_envs": 1},
                           hidden=(128, 128), tasks=20, per_task=5, rounds=2, horizon=500, collections=2,
                           worker_tasks=(1, 4, 10)),
}


def scenario_policy(scenario: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    probe = TaskVectorEnv(scenario["env"], 1, env_kwargs=scenario["env_kwargs"])
    policy = make_policy(probe.single_observation_space, probe.single_action_space, scenario["hidden"])
    probe.close()
    return policy, {k: v.detach() for k, v in policy.named_parameters()}


def worker_costs(scenario: dict[str, Any]) -> dict[str, Any]:
    """A worker's wall seconds per vector step of a per-episode collection (local ``collect_episodes``, the
    scenario's policy, 5 sub-envs per task, 100-step episodes) against its sub-envs n, medians of 3 calls after a
    warm-up; the payload's bytes (policy and weights) and the bytes back per env step (pickled episode arrays)."""
    policy, params = scenario_policy(scenario)
    out: dict[str, Any] = {"num_envs": [], "seconds_per_step": []}
    for tasks_n in scenario["worker_tasks"]:
        envs = TaskVectorEnv(scenario["env"], tasks_n * 5, env_kwargs=scenario["env_kwargs"], max_episode_steps=100,
                             physics_threads=1)
        tasks = envs.single_task_env.sample_tasks(tasks_n, seed=0)
        times = []
        for i in range(4):
            start = time.perf_counter()
            batch = collect_episodes(envs, policy, params, tasks, 5, seed=i, generator=torch.Generator(),
                                     streams="per-episode")
            times.append((time.perf_counter() - start) / batch.mask.shape[2])
        out["num_envs"].append(tasks_n * 5)
        out["seconds_per_step"].append(float(np.median(times[1:])))
        envs.close()
    out["payload_bytes"] = len(pickle.dumps((policy, params), protocol=5))
    out["bytes_back_per_env_step"] = len(pickle.dumps(batch, protocol=5)) / batch.num_steps
    return out


def ray_episode_calls(worker_counts: list[int]) -> list[dict[str, Any]]:
    """``sampler="ray-episodes"`` calls of 4 and 8 HalfCheetahVel tasks × 5 episodes (100 steps) over W workers:
    the driver's CPU seconds and the wall seconds per call (medians of 3 after a warm-up)."""
    policy, params = scenario_policy(SCENARIOS["cheetah_vel"])
    calls = []
    for w in worker_counts:
        group = WorkerGroup(CHEETAH, w, max_episode_steps=100)
        try:
            for tasks_n in (4, 8):
                envs = group.vector_env(tasks_n * 5, episode_level=True)
                tasks = envs.single_task_env.sample_tasks(tasks_n, seed=0)
                walls, cpus = [], []
                for i in range(4):
                    wall, cpu = time.perf_counter(), time.process_time()
                    batch = envs.collect_episodes(policy, params, tasks, 5, seed=i)
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                calls.append({"workers": w, "tasks": tasks_n, "env_steps": batch.num_steps,
                              "wall_seconds": float(np.median(walls[1:])),
                              "driver_cpu_seconds": float(np.median(cpus[1:]))})
                envs.close()
        finally:
            group.close()
    return calls


def fit_worker(costs: dict[str, Any]) -> dict[str, float]:
    """A worker's step ``a + b n`` (least squares over its points, each clipped at 0)."""
    b, a = np.polyfit(costs["num_envs"], costs["seconds_per_step"], 1)
    return {"a": max(float(a), 0.0), "b": max(float(b), 0.0)}


def fit_driver(calls: list[dict[str, Any]], worker: dict[str, float]) -> dict[str, float]:
    """The driver's CPU per episode-level call ``e0 + W e_call + S e_x`` (S env steps back; least squares over the
    calls); the latency, the median of what a call's wall time leaves after the driver's CPU and its slowest block's
    stepping (100 steps of HalfCheetahVel's ``a + b n``), clipped at 0."""
    rows = [[1.0, c["workers"], c["env_steps"]] for c in calls]
    (e0, e_call, e_x), *_ = np.linalg.lstsq(np.asarray(rows), np.asarray([c["driver_cpu_seconds"] for c in calls]),
                                            rcond=None)
    rest = []
    for c in calls:
        slowest = max((tb - ta) * min(5, ed - ec) for (ta, tb), (ec, ed) in episode_blocks(c["tasks"], 5, c["workers"]))
        rest.append(c["wall_seconds"] - c["driver_cpu_seconds"] - 100 * (worker["a"] + worker["b"] * slowest))
    return {"e0": max(float(e0), 0.0), "e_call": max(float(e_call), 0.0), "e_x": max(float(e_x), 0.0),
            "latency": max(float(np.median(rest)), 0.0)}


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


def model(scenario: dict[str, Any], worker: dict[str, float], driver: dict[str, float], learner_per_step: float,
          payload_bytes: float, bytes_back_per_step: float, step_level: dict[str, float] | None = None,
          bytes_per_step: float = 0.0, bandwidth: float = 1.25e9) -> dict[str, Any]:
    """Speed-ups of one iteration's collection and of the whole iteration on M one-worker machines at the
    scenario's batch: the episode-level sampler (its slowest block's stepping, the driver's costs, the latency and
    the bytes at ``bandwidth``) and, given its constants, the step-level one."""
    tasks, per_task, rounds, horizon, collections = (scenario[k] for k in ("tasks", "per_task", "rounds", "horizon",
                                                                           "collections"))
    n, episodes = tasks * per_task, rounds * per_task
    vector_steps_per_iteration = rounds * horizon * collections
    env_steps = vector_steps_per_iteration * n
    learner = learner_per_step * env_steps

    def step_level_seconds(m: int) -> float:
        c, w = step_level, min(m, n)
        per_step = c["t_fixed"] + w * c["t_call"] + n * c["t_x"] + math.ceil(n / w) * c["t_env"]
        return vector_steps_per_iteration * per_step

    def episode_level_seconds(m: int) -> float:
        blocks = episode_blocks(tasks, episodes, m)
        slowest = 0.0
        for (ta, tb), (ec, ed) in blocks:
            envs = (tb - ta) * min(per_task, ed - ec)
            block_rounds = math.ceil((ed - ec) / min(per_task, ed - ec))
            slowest = max(slowest, block_rounds * horizon * (worker["a"] + worker["b"] * envs))
        steps = env_steps / collections
        moved = (steps * bytes_back_per_step + len(blocks) * payload_bytes) / bandwidth
        overhead = driver["e0"] + len(blocks) * driver["e_call"] + steps * driver["e_x"] + driver["latency"]
        return collections * (slowest + overhead + moved)

    out: dict[str, Any] = {"machines": MACHINES, "env_steps_per_iteration": env_steps,
                           "learner_seconds_per_iteration": learner, "bandwidth_bytes_per_s": bandwidth}
    samplers = [("episode_level", episode_level_seconds)]
    if step_level is not None:
        samplers.insert(0, ("step_level", step_level_seconds))
        out["bytes_per_iteration_step_level"] = env_steps * bytes_per_step
    for name, collect in samplers:
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
    """Two panels: HalfCheetahVel (both samplers) and Meta-World ML10 (episode-level), speed-up against machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    m = MACHINES
    styles = {"step_level": ("tab:blue", "step-level (ray)"), "episode_level": ("tab:orange", "episode-level "
                                                                                 "(ray-episodes)")}
    titles = {"cheetah_vel": "MAML-TRPO, HalfCheetahVel paper batch (200 sub-envs)",
              "metaworld_ml10": "MAML-TRPO, Meta-World ML10 preset batch (100 sub-envs)"}
    for ax, (scenario, title) in zip(axes, titles.items()):
        ax.plot(m, m, "k--", label="ideal (linear)")
        for name, (color, label) in styles.items():
            if name not in result[scenario]:
                continue
            ax.plot(m, result[scenario][name]["collection_speed_up"], "-o", color=color, label=f"{label}: collection")
            ax.plot(m, result[scenario][name]["iteration_speed_up"], ":s", color=color,
                    label=f"{label}: whole iteration")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("machines (one rollout worker each)")
        ax.set_ylabel("speed-up over one machine")
        ax.set_title(f"{title}: model fitted on 2 cores", fontsize=8)
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
    result: dict[str, Any] = {"commit": head_commit(), "machine": platform.processor() or platform.machine(),
                              "ray": ray.__version__}
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    try:
        result["iterations"] = {"maml_trpo": iteration_rates(MAMLTRPO, MAML, args.iterations, args.workers,
                                                             episode_level=True),
                                "pearl": iteration_rates(PEARL, PEARL_SMALL, args.iterations, args.workers)}
        result["vector_step"] = vector_steps(args.sizes, args.steps, args.workers)
        result["episode_level"] = {"calls": ray_episode_calls(args.workers)}
    finally:
        ray.shutdown()
    result["cluster"] = cluster_check()
    constants = fit(result["vector_step"])
    learner = result["iterations"]["maml_trpo"]["local"]["learner_seconds_per_env_step"]
    bytes_per_step = float(np.mean(result["vector_step"]["bytes_per_sub_env_step"]))
    result["episode_level"]["workers"] = {name: worker_costs(sc) for name, sc in SCENARIOS.items()}
    workers = {name: fit_worker(costs) for name, costs in result["episode_level"]["workers"].items()}
    driver = fit_driver(result["episode_level"]["calls"], workers["cheetah_vel"])
    result["model"] = {"step_level_constants": constants, "worker_constants": workers, "driver_constants": driver}
    for name, sc in SCENARIOS.items():
        costs = result["episode_level"]["workers"][name]
        result["model"][name] = model(sc, workers[name], driver, learner, costs["payload_bytes"],
                                      costs["bytes_back_per_env_step"],
                                      constants if name == "cheetah_vel" else None, bytes_per_step)
    plot(result["model"], args.out)
    result["figure"] = str(args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
