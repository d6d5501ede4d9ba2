"""Reference baselines for meta-RL through stable-baselines3: a multi-task policy and learning from scratch.

Both bracket what a meta-learner buys (Rakelly et al. 2019 and Finn et al. 2017 report the same two):

* :class:`MultiTaskBaseline` — one SB3 policy (SAC for ``Box`` actions, PPO otherwise, or as configured) trained
  on train-split tasks through :class:`TaskSamplingWrapper`, which switches to a new train task at every reset.
  The policy never sees which task it is in (the goal of 2D navigation is not observed), so it learns the best
  task-agnostic behaviour: the lower bound. ``meta_test`` runs the same policy on each held-out task for
  ``num_episodes`` episodes with no adaptation (deterministic actions by default), so its columns are flat.
* :class:`FromScratchBaseline` — for each held-out task, a fresh SB3 agent trained only on that task for the
  ``num_episodes`` episodes a meta-learner gets to adapt; column k of ``meta_test`` is the return of episode k
  while it learns. ``train_iteration`` does nothing (0 env steps): run it with ``iterations=0``.

SB3 is used through its public API only (constructors, ``learn``, ``predict``, ``get_parameters`` /
``set_parameters``, the replay buffer's arrays, callbacks). SB3 draws random numbers from the *global* Python,
NumPy and torch generators; here every SB3 call runs inside :class:`PrivateGlobalRNG`, which installs the
baseline's own generator states for the call and restores the caller's afterwards, so the caller's global state is
untouched and the baseline's streams are part of its checkpoint.

Resume (multi-task): ``state_dict`` holds the policy and optimiser states, the entropy coefficient (SAC), the
off-policy replay buffer's filled part, SB3's counters (``num_timesteps``, ``_n_updates``, ``_episode_num``), the
private generator states, the action space's sampler and the task sampler. Every iteration starts with a seeded
reset (an episode running at the end of an iteration is cut there), so nothing else carries over: a resumed run
reproduces an uninterrupted one exactly on CPU (tested). Not kept: SB3's episode-statistics window (logging only).

Defaults are SB3's own (SAC: lr 3e-4, buffer 1e6, batch 256, learning_starts 100, τ 0.005, γ 0.99, automatic
entropy; PPO: n_steps 2048, batch 64, 10 epochs); ``algorithm_kwargs`` passes anything else to the SB3 constructor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

import metarl.envs  # noqa: F401  (registers the metarl/* environments)
from metarl.core.agent import AgentConfig
from metarl.core.agent_env import EnvPool, check_checkpoint, check_test_request, make_env, make_task_env
from metarl.core.config import ConfigError, check_choice, check_int, check_mapping
from metarl.core.seeding import derive_seed

ALGORITHMS = {"sac": SAC, "ppo": PPO}


class PrivateGlobalRNG:
    """The Python, NumPy and torch (CPU) global generator states of one SB3 user, swapped in only while it runs."""

    def __init__(self, seed: int) -> None:
        self.python = random.Random(seed).getstate()
        self.numpy = np.random.RandomState(seed % 2**32).get_state()
        self.torch = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        try:
            yield
        finally:
            self.python, self.numpy, self.torch = random.getstate(), np.random.get_state(), torch.get_rng_state()
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])

    def state_dict(self) -> dict[str, Any]:
        version, words, gauss = self.python
        kind, keys, pos, has_gauss, cached = self.numpy
        return {"python": [version, list(words), gauss], "torch": self.torch.clone(),
                "numpy": [kind, torch.as_tensor(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, words, gauss = state["python"]
        self.python = (int(version), tuple(int(w) for w in words), gauss)
        kind, keys, pos, has_gauss, cached = state["numpy"]
        self.numpy = (kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        self.torch = state["torch"].clone()


class TaskSamplingWrapper(gym.Wrapper):
    """At every reset, switch the env to a train-split task: one of ``tasks`` if given, else a fresh sample.

    The choice comes from the wrapper's own ``np.random.Generator`` (``rng``, seeded by the caller), never from the
    env's or a global generator. The observation is not changed: the task stays hidden from the policy.
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, tasks: list[Any] | None = None) -> None:
        super().__init__(env)
        self.rng, self.tasks = rng, tasks

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        task_env = self.env.unwrapped
        if self.tasks:
            task = self.tasks[int(self.rng.integers(len(self.tasks)))]
        else:
            task = task_env.sample_tasks(1, split="train", seed=int(self.rng.integers(2**63 - 1)))[0]
        task_env.set_task(task)
        return self.env.reset(seed=seed, options=options)


@dataclass
class MultiTaskConfig(AgentConfig):
    """Settings of the multi-task baseline (defaults: stable-baselines3's)."""

    algorithm: str = "auto"
    """"sac", "ppo", or "auto" (SAC for Box actions, PPO otherwise)"""
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the SB3 constructor (learning_rate, batch_size, policy_kwargs, ...)"""
    steps_per_iteration: int = 1000
    """env steps of SB3 learning per train_iteration"""
    num_train_tasks: int | None = None
    """None: a fresh train-split task at every reset; N: a fixed set of N train tasks (as PEARL's)"""
    deterministic_test: bool = True
    """meta-test with SB3's deterministic actions"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)
        check_int(self.steps_per_iteration, "steps_per_iteration", minimum=1)
        check_int(self.num_train_tasks, "num_train_tasks", minimum=1, optional=True)


@dataclass
class FromScratchConfig(AgentConfig):
    """Settings of the learning-from-scratch baseline (defaults: stable-baselines3's)."""

    algorithm: str = "auto"
    """"sac", "ppo", or "auto" (SAC for Box actions, PPO otherwise)"""
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the SB3 constructor (e.g. learning_starts, n_steps)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)


def _check_common(config: Any) -> None:
    check_choice(config.algorithm, "algorithm", (*ALGORITHMS, "auto"))
    check_mapping(config.algorithm_kwargs, "algorithm_kwargs")
    reserved = {"env", "seed", "device", "verbose", "policy"} & set(config.algorithm_kwargs)
    if reserved:
        raise ConfigError(f"algorithm_kwargs may not set {sorted(reserved)}: use the config fields instead")


def _make_env(env_id: str, config: Any) -> gym.Env:
    return make_env(env_id, config.env_kwargs, config.max_episode_steps)


def _algorithm_for(env_id: str, config: Any) -> tuple[type[BaseAlgorithm], Any]:
    """The SB3 class for the env (checked here: a task env, an action space the algorithm supports)."""
    probe = make_task_env(env_id, config)
    try:
        box = isinstance(probe.action_space, spaces.Box)
        name = config.algorithm if config.algorithm != "auto" else ("sac" if box else "ppo")
        if name == "sac" and not box:
            raise ValueError(f"SAC needs a Box action space, {env_id} has {probe.action_space}; use algorithm=ppo")
        return ALGORITHMS[name], probe.unwrapped
    finally:
        probe.close()


def _new_model(algorithm: type[BaseAlgorithm], env: gym.Env, config: Any, seed: int) -> BaseAlgorithm:
    try:
        return algorithm("MlpPolicy", env, seed=seed, device=config.device, verbose=0, **config.algorithm_kwargs)
    except TypeError as err:
        raise ValueError(f"bad algorithm_kwargs for {algorithm.__name__}: {err}") from None


class MultiTaskBaseline:
    """One SB3 policy trained across train tasks without task information (the lower bound)."""

    name = "multitask"

    def __init__(self, env_id: str, config: MultiTaskConfig | None = None) -> None:
        self.config = cfg = config or MultiTaskConfig()
        self.env_id = env_id
        algorithm, self.task_env = _algorithm_for(env_id, cfg)
        tasks = (self.task_env.sample_tasks(cfg.num_train_tasks, split="train",
                                            seed=derive_seed(cfg.seed, "train_tasks"))
                 if cfg.num_train_tasks else None)
        self.task_rng = np.random.default_rng(derive_seed(cfg.seed, "task_sampler"))
        self.env = TaskSamplingWrapper(_make_env(env_id, cfg), self.task_rng, tasks)
        self.rng = PrivateGlobalRNG(derive_seed(cfg.seed, "sb3"))
        with self.rng.active():
            self.model = _new_model(algorithm, self.env, cfg, derive_seed(cfg.seed, "sb3") % 2**31)
        self.env_pool = EnvPool(env_id, cfg)
        self.iteration = 0

    @property
    def episodes_per_stage(self) -> int:
        """1: each meta-test column is one more episode (of the same, unadapted policy)."""
        return 1

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """``steps_per_iteration`` env steps of SB3 learning, starting from a reset seeded by (seed, iteration)."""
        model = self.model
        before = model.num_timesteps
        with self.rng.active():
            model.env.seed(derive_seed(self.config.seed, "reset", iteration) % 2**31)
            model._last_obs = None  # SB3 then resets at the start of learn(): each iteration starts fresh episodes
            model.learn(self.config.steps_per_iteration, reset_num_timesteps=False, progress_bar=False)
        self.iteration = iteration + 1
        episodes = [info["r"] for info in model.ep_info_buffer or []]
        return {"env_steps": float(model.num_timesteps - before),
                "charts/episodic_return": float(np.mean(episodes)) if episodes else float("nan"),
                "charts/sb3_updates": float(model._n_updates)}

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """``[len(tasks), num_episodes]`` returns of the same policy on each task (no adaptation)."""
        check_test_request(tasks, num_episodes)
        n = len(tasks)
        envs = self.env_pool.test(n)
        resets = np.random.default_rng(derive_seed(seed, "meta_test", "resets"))
        returns = np.zeros((n, num_episodes))
        with PrivateGlobalRNG(derive_seed(seed, "meta_test", "actions")).active():  # the agent's own stream is kept
            for episode in range(num_episodes):
                envs.set_tasks(list(tasks))
                obs, _ = envs.reset(seed=[int(s) for s in resets.integers(0, 2**31 - 1, size=n)])
                active = np.ones(n, dtype=np.bool_)
                while active.any():
                    action, _ = self.model.predict(obs, deterministic=self.config.deterministic_test)
                    obs, reward, term, trunc, _ = envs.step(action)
                    returns[:, episode] += reward * active
                    active &= ~(term | trunc)
        return returns

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """SB3 parameters and optimisers, entropy coefficient, replay buffer, counters, generator states."""
        model = self.model
        state: dict[str, Any] = {
            "name": self.name, "iteration": self.iteration, "config": dataclasses.asdict(self.config),
            "sb3_parameters": model.get_parameters(),
            "counters": {"num_timesteps": model.num_timesteps, "n_updates": model._n_updates,
                         "episode_num": model._episode_num},
            "private_rng": self.rng.state_dict(),
            "action_space_rng": model.action_space.np_random.bit_generator.state,
            "task_rng": self.task_rng.bit_generator.state,
        }
        if getattr(model, "log_ent_coef", None) is not None:
            state["log_ent_coef"] = model.log_ent_coef.detach().cpu().clone()
        buffer = getattr(model, "replay_buffer", None)
        if buffer is not None:
            filled = buffer.buffer_size if buffer.full else buffer.pos
            state["replay"] = {"pos": buffer.pos, "full": buffer.full, "arrays": {
                name: torch.as_tensor(getattr(buffer, name)[:filled].copy())
                for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")}}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_checkpoint(state, self.name)
        model = self.model
        model.set_parameters(state["sb3_parameters"], exact_match=True, device=model.device)
        counters = state["counters"]
        model.num_timesteps, model._n_updates = int(counters["num_timesteps"]), int(counters["n_updates"])
        model._episode_num = int(counters["episode_num"])
        self.rng.load_state_dict(state["private_rng"])
        model.action_space.np_random.bit_generator.state = state["action_space_rng"]
        self.task_rng.bit_generator.state = state["task_rng"]
        if "log_ent_coef" in state:
            with torch.no_grad():
                model.log_ent_coef.copy_(state["log_ent_coef"])
        if "replay" in state:
            buffer, replay = model.replay_buffer, state["replay"]
            for name, value in replay["arrays"].items():
                getattr(buffer, name)[:value.shape[0]] = value.numpy()
            buffer.pos, buffer.full = int(replay["pos"]), bool(replay["full"])
        self.iteration = int(state["iteration"])

    def close(self) -> None:
        self.model.env.close()
        self.env_pool.close()


class _EpisodeReturns(BaseCallback):
    """Records the return of every finished episode (SB3's Monitor ``info["episode"]``); stops after ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.returns = limit, []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.returns.append(float(info["episode"]["r"]))
        return len(self.returns) < self.limit


class FromScratchBaseline:
    """A fresh SB3 agent per held-out task, learning for the episodes a meta-learner adapts with."""

    name = "scratch"

    def __init__(self, env_id: str, config: FromScratchConfig | None = None) -> None:
        self.config = config or FromScratchConfig()
        self.env_id = env_id
        self.algorithm, self.task_env = _algorithm_for(env_id, self.config)

    @property
    def episodes_per_stage(self) -> int:
        """1: column k is episode k of the learner trained from scratch on the task."""
        return 1

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """Nothing to meta-train."""
        return {"env_steps": 0.0}

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """Column k: the return of episode k of a fresh SB3 agent learning task i alone (``[tasks, episodes]``)."""
        check_test_request(tasks, num_episodes)
        returns = np.zeros((len(tasks), num_episodes))
        for i, task in enumerate(tasks):  # one independent learner per task: nothing to batch
            env = _make_env(self.env_id, self.config)
            env.unwrapped.set_task(task)
            agent_seed = derive_seed(self.config.seed, seed, "scratch", i)  # the run's seed varies the learners
            with PrivateGlobalRNG(agent_seed).active():
                model = _new_model(self.algorithm, env, self.config, agent_seed % 2**31)
                recorder = _EpisodeReturns(num_episodes)
                model.learn(10**9, callback=recorder, progress_bar=False)
            model.env.close()
            returns[i] = recorder.returns[:num_episodes]
        return returns

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dataclasses.asdict(self.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_checkpoint(state, self.name)

    def close(self) -> None:
        pass
