"""Meta-World's ML1, ML10, ML25 and ML45 benchmarks behind the metarl task-environment protocol, with Meta-World's
own evaluation protocol.

Meta-World (Yu et al., 2019, "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning"; package ``metaworld`` 3.1.1, optional extra ``metarl[metaworld]``) ships each benchmark as an object
(``metaworld.ML10(seed=...)``) listing train and test *classes* (manipulation skills such as ``reach-v3``) and, for
each class, 50 *tasks* (parametric variations: object and goal positions). This module exposes one benchmark as a
single Gymnasium environment whose task can be switched between episodes:

============================  ========================  ===========================================================
id                            class                     tasks
============================  ========================  ===========================================================
``metarl/MetaWorldML1-v0``    :class:`MetaWorldML1Env`  one class (``task_name``, default ``reach-v3``); train and
                                                        test are two disjoint sets of 50 goal variations each
``metarl/MetaWorldML10-v0``   :class:`MetaWorldML10Env` 10 train classes, 5 held-out test classes, 50 each
``metarl/MetaWorldML25-v0``   :class:`MetaWorldML25Env` 25 train classes, 5 held-out test classes, 50 each
``metarl/MetaWorldML45-v0``   :class:`MetaWorldML45Env` 45 train classes, 5 held-out test classes, 50 each
============================  ========================  ===========================================================

Only Meta-World's public API is used: the benchmark objects (``train_classes``, ``test_classes``, ``train_tasks``,
``test_tasks``), the environment classes and their ``set_task``/``reset``/``step``, and the class lists in
``metaworld.env_dict`` (so that constructing an environment does not build the benchmark).

Action space
    ``Box(-1, 1, (4,), float32)``: end-effector displacement (x, y, z; scaled by 1/100 m per step by Meta-World)
    and gripper effort. Identical for every class.

Observation space
    ``Box(..., (39,), float64)``, identical for every class: hand position (3), gripper opening (1), up to two
    object positions and quaternions (14, zero-padded), the same 18 numbers from the previous step (frame stack),
    and the goal position (3), which the ML benchmarks hide (always zero): the agent must infer the task.

Rewards
    Meta-World's own shaped reward (``reward_function_version``: ``"v2"`` by default, between 0 and 10, the reward of
    Meta-World+ and of metaworld 3.x; ``"v1"`` the original paper's), named in every evaluation result
    (``env_info``, :meth:`MetaWorldTaskEnv.evaluation_metadata`), passed through as the single
    term ``info["reward_metaworld"]`` (so ``reward == info["reward_metaworld"]``). Meta-World's diagnostic entries
    (``success``, ``near_object``, ``grasp_success``, ``grasp_reward``, ``in_place_reward``, ``obj_to_target``,
    ``unscaled_reward``) are passed through unchanged; ``info["success"]`` is 1.0 when the task is solved.

Starting state
    Meta-World's deterministic reset for the task in force (the robot hand is driven to its start pose; objects
    and goal placed as the task says). No randomness at reset: the task fixes everything.

Episode end
    Never terminates (Meta-World never terminates on success). Truncated after 500 steps (``max_episode_steps`` of
    the registration, also Meta-World's ``max_path_length``; stepping the unwrapped environment past 500 steps
    without a reset raises Meta-World's ``ValueError``), or at once with ``info["physics_unstable"] = True`` when
    the simulation goes unstable (a non-finite observation or reward, or MuJoCo's automatic reset after a bad
    position/velocity/acceleration): the last finite observation is returned with zero reward.

Task law
    A task is a :class:`MetaWorldTask` naming the benchmark, the Meta-World class, the split, the index of one of
    that class's 50 tasks within the split, and the benchmark seed. ``sample_tasks(n, split=...)`` draws
    class-balanced: the split's classes are visited in a random order and cycled, so every class gets ``n // K`` or
    ``n // K + 1`` of the ``n`` tasks (``K`` classes), and each class's tasks are distinct indices drawn uniformly
    (without replacement up to 50, with replacement beyond). ``train`` and ``test`` are disjoint by construction:
    for ML10/ML45 the test classes are held-out skills; for ML1 the two 50-task sets are built by Meta-World from
    the benchmark seed and seed + 1 respectively. No ``ood`` split. The goals themselves are Meta-World's, fixed by
    ``benchmark_seed`` (Meta-World seeds NumPy's global generator while it builds them and restores it after).

Task descriptor
    ``one_hot(class over the benchmark's train then test classes) ++ rand_vec`` where ``rand_vec`` is Meta-World's
    random vector of the task (initial object and/or goal position, 3 or 6 numbers by class), zero-padded to 6.
    Length ``K_all + 6``: 7 for ML1, 21 for ML10, 56 for ML45. Together the class and ``rand_vec`` fix the task.

Arguments
    ===================  ===========================================================================================
    ``task_name``        (ML1 only) the Meta-World class, e.g. ``"reach-v3"``, ``"push-v3"``, ``"pick-place-v3"``
    ``benchmark_seed``   seed Meta-World builds the benchmark's goals from (default 0); tasks carry it
    ``reward_function_version``  ``"v2"`` (default) or ``"v1"``: which of Meta-World's reward functions
    ``render_mode``      ``None`` or ``"rgb_array"``
    ``camera_name``      Meta-World camera for rendering (e.g. ``"corner"``); ``None`` for its default
    ``width, height``    render size in pixels (480)
    ``max_cached_envs``  how many Meta-World class environments to keep constructed (each ~30 MB, ~0.1 s to build;
                         default 4, least recently used dropped first; ``None`` keeps all)
    ===================  ===========================================================================================

Costs
    Meta-World builds a benchmark's goals by constructing and resetting every class: about 1.5 s for ML1, 9 s for
    ML10 and 30 s for ML45 on a 2-core machine. It happens once per process and benchmark seed (cached), on the
    first ``reset``, ``task_descriptor`` or check that needs the goals, never in the constructor.

Seeding
    Everything is fixed by ``benchmark_seed`` (the goals) and the task: Meta-World's ``reset(seed=...)`` ignores its
    seed (Farama-Foundation/Metaworld#555) and its class environments draw a new goal from NumPy's *global*
    generator at reset unless a task froze it (``_get_state_rand_vec``; #364, #350), and older versions kept the
    previous episode's frame-stacked observation across resets (#385). This adapter therefore resets to the task's
    frozen goal only (a reset that finds the goal unfrozen raises ``RuntimeError`` rather than drawing from the
    global generator), never touches NumPy's global state (Meta-World's benchmark build restores it), and tests that
    the same seeds give the same goals and first observations, other seeds other ones, and that a reset after any
    number of steps reproduces the first one (tests/test_envs_metaworld.py). One pitfall stays Meta-World's: ML1's
    test goals of ``benchmark_seed=s`` are built from seed ``s + 1``, so they are the *train* goals of
    ``benchmark_seed=s + 1`` — compare runs of one ML1 benchmark seed only.

Meta-World's evaluation protocol
    :meth:`MetaWorldTaskEnv.benchmark_protocol`, what ``metarl evaluate`` runs for these ids (``protocol: auto``, the
    default; ``protocol: generic`` for the plain held-out evaluation). It follows
    ``metaworld.evaluation.metalearning_evaluation`` of metaworld 3.1.1 and the Meta-World+ paper (McLean et al.,
    2025): the benchmark's **test classes** (ML1: its one class's test goals); ``rounds`` (Meta-World's
    ``num_evals``, 10) rounds of a meta-batch of **20** test tasks, the classes equally represented (``20 / K``
    tasks of each of the ``K`` test classes per round: **40 goals per class** for ML10/ML25/ML45, 200 for ML1, whose
    50 test goals are then each visited 4 times); per task, **10 adaptation episodes** (one adaptation step) then
    **3 evaluation episodes**; the metric is the **success rate** of the evaluation episodes (an episode succeeds when
    ``info["success"]`` is set at any step, :mod:`metarl.core.outcomes`), averaged over tasks (equal to Meta-World's
    mean over classes, the classes being balanced). Goals are dealt the way Meta-World's test sub-envs visit them:
    each class's goals in a seeded random order, without repetition until all 50 are used. In metarl's meta-test
    columns (``meta_test``: column 0 before adaptation, column k after adapting on k stages of ``episodes_per_stage``
    episodes): ``ceil(10 / episodes_per_stage)`` adaptation columns, then ``ceil(3 / episodes_per_stage)``
    evaluation columns — RL² and PEARL (one episode per stage): 13 episodes, success of episodes 10–12; MAML-TRPO
    with ``adapt_episodes = 10``: its one gradient step on 10 episodes, success of the 10 rollouts after it. The
    episodes actually used are recorded (``adaptation_episodes_used``, ``evaluation_episodes_used``). Two
    differences, both recorded in the result: evaluation episodes are not ended at the first success
    (``terminate_on_success``; the success count is the same, returns are not comparable with Meta-World's), and an
    agent whose stage holds more episodes than Meta-World's (MAML-TRPO with ``adapt_episodes > 10``) adapts on more.

Version history
    v0: first version (Meta-World 3.1.1, ``*-v3`` classes). ML25, ``reward_function_version`` and the benchmark
    protocol added without changing any episode.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import SPLITS, TaskEnvMixin, TaskError, check_finite_action, check_task_fields

try:  # optional extra: the module imports without metaworld, the environments need it
    import metaworld
    import metaworld.env_dict as _mw_env_dict
except ImportError:  # pragma: no cover - exercised only without the extra
    metaworld = None
    _mw_env_dict = None

TASKS_PER_CLASS = 50
"""Meta-World builds 50 tasks (goal variations) per class and split."""

REWARD_FUNCTION_VERSIONS = ("v2", "v1")
"""Meta-World's reward functions (``reward_function_version`` of its environments); v2 is the default."""

PROTOCOL = {"meta_batch_size": 20, "rounds": 10, "adaptation_steps": 1, "adaptation_episodes": 10,
            "evaluation_episodes": 3}
"""Meta-World's meta-learning evaluation (``metaworld.evaluation.metalearning_evaluation`` defaults, metaworld
3.1.1, with its ML test envs' ``meta_batch_size=20``): rounds (``num_evals``), test tasks per round, adaptation steps,
adaptation episodes per step, evaluation episodes."""

RAND_VEC_DIM = 6
"""Longest Meta-World task random vector (3 for some classes, 6 for others); the descriptor pads to this."""

_UNSTABLE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQPOS,
)

_BENCHMARKS: dict[tuple[str, str | None, int], Any] = {}
_BENCHMARKS_LOCK = threading.Lock()


def _require_metaworld() -> None:
    if metaworld is None:
        raise ImportError("Meta-World is not installed: pip install 'metarl[metaworld]' (metaworld==3.1.1)")


def metaworld_benchmark(benchmark: str, seed: int, task_name: str | None = None) -> Any:
    """The Meta-World benchmark object ``metaworld.<benchmark>(...)``, built once per process and cached."""
    _require_metaworld()
    key = (benchmark, task_name, int(seed))
    with _BENCHMARKS_LOCK:
        if key not in _BENCHMARKS:
            if benchmark == "ML1":
                _BENCHMARKS[key] = metaworld.ML1(task_name, seed=int(seed))
            elif benchmark in ("ML10", "ML25", "ML45"):
                _BENCHMARKS[key] = getattr(metaworld, benchmark)(seed=int(seed))
            else:
                raise ValueError(f"unknown Meta-World benchmark {benchmark!r}: expected ML1, ML10, ML25 or ML45")
        return _BENCHMARKS[key]


@dataclasses.dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World task: a class (skill) and one of its 50 goal variations in a split of a seeded benchmark."""

    benchmark: str
    """``"ML1"``, ``"ML10"`` or ``"ML45"``."""
    env_name: str
    """Meta-World class name, e.g. ``"reach-v3"``."""
    split: str
    """``"train"`` or ``"test"``: which task list of the benchmark ``index`` refers to."""
    index: int
    """Which of the class's 50 tasks in that split, ``0 <= index < 50``."""
    benchmark_seed: int
    """The seed the benchmark's goals were built from."""


class MetaWorldTaskEnv(TaskEnvMixin, gym.Env, EzPickle):
    """Shared implementation of the ML1/ML10/ML45 adapters (see the module docstring for the full spec)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}
    task_type = MetaWorldTask
    splits = SPLITS
    benchmark_name: ClassVar[str]

    def __init__(
        self,
        task_name: str | None = None,
        benchmark_seed: int = 0,
        reward_function_version: str = "v2",
        render_mode: str | None = None,
        camera_name: str | None = None,
        width: int = 480,
        height: int = 480,
        max_cached_envs: int | None = 4,
    ) -> None:
        _require_metaworld()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if isinstance(benchmark_seed, bool) or not isinstance(benchmark_seed, (int, np.integer)):
            raise ValueError(f"benchmark_seed must be an integer, got {benchmark_seed!r}")
        if max_cached_envs is not None and (not isinstance(max_cached_envs, int) or max_cached_envs < 1):
            raise ValueError(f"max_cached_envs must be a positive integer or None, got {max_cached_envs!r}")
        if reward_function_version not in REWARD_FUNCTION_VERSIONS:
            raise ValueError(f"reward_function_version must be one of {', '.join(REWARD_FUNCTION_VERSIONS)}, got "
                             f"{reward_function_version!r}")
        self.reward_function_version = reward_function_version
        self.task_name = task_name
        self.benchmark_seed = int(benchmark_seed)
        self.render_mode = render_mode
        self.camera_name = camera_name
        self.width, self.height = int(width), int(height)
        self.max_cached_envs = max_cached_envs
        self.classes: dict[str, tuple[str, ...]] = self._class_names()
        self.all_classes: tuple[str, ...] = tuple(dict.fromkeys(self.classes["train"] + self.classes["test"]))
        self._class_index = {name: i for i, name in enumerate(self.all_classes)}
        self._envs: OrderedDict[str, Any] = OrderedDict()
        self._task_lists: dict[tuple[str, str], list[Any]] = {}
        self._active: Any = None
        default = MetaWorldTask(self.benchmark_name, self.classes["train"][0], "train", 0, self.benchmark_seed)
        self._init_task(default)
        first = self._class_env(default.env_name)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_space = spaces.Box(
            first.observation_space.low.copy(), first.observation_space.high.copy(), dtype=np.float64
        )
        self._last_obs = np.zeros(self.observation_space.shape, dtype=np.float64)

    # --- benchmark ---------------------------------------------------------------------------------------
    def _class_names(self) -> dict[str, tuple[str, ...]]:
        raise NotImplementedError

    @property
    def benchmark(self) -> Any:
        """Meta-World's benchmark object (built on first use, then cached for the process)."""
        return metaworld_benchmark(self.benchmark_name, self.benchmark_seed, self.task_name)

    def metaworld_task(self, task: MetaWorldTask | None = None) -> Any:
        """Meta-World's own ``Task`` for ``task`` (default: the current one), to pass to a Meta-World env."""
        task = self.get_task() if task is None else self._validate_task(task)
        key = (task.split, task.env_name)
        if key not in self._task_lists:
            bench = self.benchmark
            listing = bench.train_tasks if task.split == "train" else bench.test_tasks
            self._task_lists[key] = [t for t in listing if t.env_name == task.env_name]
        of_class = self._task_lists[key]
        if len(of_class) != TASKS_PER_CLASS:
            raise RuntimeError(
                f"Meta-World built {len(of_class)} tasks for {task.env_name} ({task.split}), expected "
                f"{TASKS_PER_CLASS}: this adapter is written for metaworld==3.1.1"
            )
        return of_class[task.index]

    def _class_env(self, env_name: str) -> Any:
        """The Meta-World environment of class ``env_name``: built lazily, kept in a small LRU cache."""
        if env_name in self._envs:
            self._envs.move_to_end(env_name)
            return self._envs[env_name]
        cls = _mw_env_dict.ALL_V3_ENVIRONMENTS[env_name]
        env = cls(reward_function_version=self.reward_function_version, render_mode=self.render_mode,
                  camera_name=self.camera_name, width=self.width, height=self.height)
        self._envs[env_name] = env
        if self.max_cached_envs is not None:
            while len(self._envs) > self.max_cached_envs:
                name, old = next(iter(self._envs.items()))
                if old is self._active:  # never drop the env in use
                    self._envs.move_to_end(name)
                    continue
                del self._envs[name]
                old.close()
        return env

    # --- task protocol -----------------------------------------------------------------------------------
    def _validate_task(self, task: Any) -> MetaWorldTask:
        task = check_task_fields(task, MetaWorldTask)
        if task.benchmark != self.benchmark_name:
            raise TaskError(f"task is from benchmark {task.benchmark!r}, this environment is {self.benchmark_name}")
        if task.split not in self.splits:
            raise TaskError(f"task split {task.split!r} is not one of {', '.join(self.splits)}")
        if task.env_name not in self.classes[task.split]:
            raise TaskError(
                f"{task.env_name!r} is not a {task.split} class of {self._label()}; "
                f"{task.split} classes: {', '.join(self.classes[task.split])}"
            )
        if isinstance(task.index, bool) or not isinstance(task.index, (int, np.integer)):
            raise TaskError(f"task index must be an integer, got {task.index!r}")
        if not 0 <= task.index < TASKS_PER_CLASS:
            raise TaskError(f"task index {task.index} is outside [0, {TASKS_PER_CLASS - 1}]")
        if isinstance(task.benchmark_seed, bool) or not isinstance(task.benchmark_seed, (int, np.integer)):
            raise TaskError(f"task benchmark_seed must be an integer, got {task.benchmark_seed!r}")
        if task.benchmark_seed != self.benchmark_seed:
            raise TaskError(
                f"task was drawn from a benchmark built with seed {task.benchmark_seed}, this environment uses "
                f"benchmark_seed={self.benchmark_seed}"
            )
        # plain ints, so the task stays JSON-safe whatever integer type it came with
        return dataclasses.replace(task, index=int(task.index), benchmark_seed=int(task.benchmark_seed))

    def _label(self) -> str:
        return f"ML1({self.task_name})" if self.benchmark_name == "ML1" else self.benchmark_name

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[MetaWorldTask]:
        classes = self.classes[split]
        order = rng.permutation(len(classes))
        chosen = [classes[order[j % len(classes)]] for j in range(n)]
        counts = {name: chosen.count(name) for name in dict.fromkeys(chosen)}
        indices = {
            name: iter(rng.choice(TASKS_PER_CLASS, size=count, replace=count > TASKS_PER_CLASS).tolist())
            for name, count in counts.items()
        }
        return [
            MetaWorldTask(self.benchmark_name, name, split, int(next(indices[name])), self.benchmark_seed)
            for name in chosen
        ]

    def _descriptor(self, task: MetaWorldTask) -> Sequence[float]:
        one_hot = np.zeros(len(self.all_classes))
        one_hot[self._class_index[task.env_name]] = 1.0
        rand_vec = np.zeros(RAND_VEC_DIM)
        vec = np.asarray(pickle.loads(self.metaworld_task(task).data)["rand_vec"], dtype=np.float64).ravel()
        rand_vec[: vec.shape[0]] = vec
        return np.concatenate([one_hot, rand_vec]).tolist()

    # --- Meta-World's evaluation protocol -----------------------------------------------------------------
    def evaluation_metadata(self) -> dict[str, Any]:
        """What every evaluation result names (``env_info``): benchmark, class (ML1), benchmark seed, reward
        function version and the Meta-World version."""
        import importlib.metadata

        return {"benchmark": self.benchmark_name, "task_name": self.task_name, "benchmark_seed": self.benchmark_seed,
                "reward_function_version": self.reward_function_version,
                "metaworld_version": importlib.metadata.version("metaworld")}

    def protocol_tasks(self, rounds: int, seed: int) -> list[MetaWorldTask]:
        """The test tasks of Meta-World's protocol, round after round (``rounds`` × 20): per round ``20 / K`` goals
        of each of the ``K`` test classes; each class's goals dealt from seeded random orders of its 50 test goals,
        a new order only once all 50 are used (as Meta-World's pseudorandom test sub-envs visit them)."""
        classes = self.classes["test"]
        size = PROTOCOL["meta_batch_size"]
        if size % len(classes):
            raise ValueError(f"Meta-World's meta-batch of {size} does not divide among {len(classes)} test classes")
        per_round = size // len(classes)
        rng = np.random.default_rng((int(seed), len(classes), 0x4D57))
        dealt: dict[str, list[int]] = {}
        for name in classes:
            order: list[int] = []
            while len(order) < rounds * per_round:
                order += rng.permutation(TASKS_PER_CLASS).tolist()
            dealt[name] = order
        return [MetaWorldTask(self.benchmark_name, name, "test", int(dealt[name][r * per_round + j]),
                              self.benchmark_seed)
                for r in range(rounds) for name in classes for j in range(per_round)]

    def benchmark_protocol(self, episodes_per_stage: int, rounds: int | None, seed: int) -> dict[str, Any]:
        """Meta-World's meta-learning evaluation for an agent whose meta-test columns hold ``episodes_per_stage``
        episodes each (see the module docstring): the tasks, the adaptation and evaluation columns, the chunks
        (one ``meta_test`` call per round of 20) and what the result must name."""
        if isinstance(episodes_per_stage, bool) or not isinstance(episodes_per_stage, int) or episodes_per_stage < 1:
            raise ValueError(f"episodes_per_stage must be a positive integer, got {episodes_per_stage!r}")
        rounds = PROTOCOL["rounds"] if rounds is None else rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        adaptation = PROTOCOL["adaptation_steps"] * -(-PROTOCOL["adaptation_episodes"] // episodes_per_stage)
        evaluation = -(-PROTOCOL["evaluation_episodes"] // episodes_per_stage)
        tasks = self.protocol_tasks(rounds, seed)
        classes = self.classes["test"]
        return {
            "name": "metaworld", "metric": "success",
            "source": ("metaworld.evaluation.metalearning_evaluation (metaworld 3.1.1); "
                       "Meta-World+ (McLean et al. 2025)"),
            **self.evaluation_metadata(), "split": "test", "test_classes": list(classes),
            "meta_batch_size": PROTOCOL["meta_batch_size"], "rounds": rounds,
            "goals_per_class": rounds * PROTOCOL["meta_batch_size"] // len(classes),
            "distinct_goals_per_class": min(TASKS_PER_CLASS, rounds * PROTOCOL["meta_batch_size"] // len(classes)),
            "adaptation_steps": PROTOCOL["adaptation_steps"], "adaptation_episodes": PROTOCOL["adaptation_episodes"],
            "evaluation_episodes": PROTOCOL["evaluation_episodes"], "episodes_per_stage": episodes_per_stage,
            "adaptation_episodes_used": adaptation * episodes_per_stage,
            "evaluation_episodes_used": evaluation * episodes_per_stage,
            "num_episodes": adaptation + evaluation, "evaluation_columns": list(range(adaptation,
                                                                                     adaptation + evaluation)),
            "chunk": PROTOCOL["meta_batch_size"], "terminate_on_success": False,
            "success_rule": "info['success'] set at any step of the episode",
            "groups": [task.env_name for task in tasks], "tasks": tasks,
        }

    # --- gymnasium API -----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._apply_pending_task()
        task = self._task
        env = self._class_env(task.env_name)
        env.set_task(self.metaworld_task(task))  # cheap; re-set each reset since class envs are shared by tasks
        if not getattr(env, "_freeze_rand_vec", True):  # Meta-World would draw a goal from NumPy's global RNG
            raise RuntimeError(f"Meta-World left the goal of {task.env_name} unfrozen after set_task: its reset would "
                               "draw a new goal from NumPy's global generator (this adapter is written for "
                               "metaworld==3.1.1)")
        self._active = env
        obs, mw_info = env.reset()
        obs = np.asarray(obs, dtype=np.float64)
        self._last_obs = obs.copy()
        info = dict(mw_info)
        info["task"] = task
        return obs, info

    def step(self, action):
        if self._active is None:
            raise RuntimeError("call reset() before step()")
        action = check_finite_action(action)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {action.shape}")
        data = self._active.data
        warnings_before = sum(data.warning[w].number for w in _UNSTABLE_WARNINGS)
        obs, reward, terminated, truncated, mw_info = self._active.step(action)
        warnings_after = sum(data.warning[w].number for w in _UNSTABLE_WARNINGS)
        obs = np.asarray(obs, dtype=np.float64)
        reward = float(reward)
        if warnings_after > warnings_before or not (np.isfinite(obs).all() and np.isfinite(reward)):
            return self._unstable_step()
        info = dict(mw_info)
        info["reward_metaworld"] = reward
        info["task"] = self._task
        self._last_obs = obs
        return obs, reward, bool(terminated), bool(truncated), info

    def _unstable_step(self):
        """A blow-up: end the episode, keep the last finite observation, zero reward, flag it."""
        info: dict[str, Any] = {"success": 0.0, "reward_metaworld": 0.0, "physics_unstable": True, "task": self._task}
        return self._last_obs.copy(), 0.0, False, True, info

    def render(self):
        if self.render_mode is None:
            return None
        env = self._active if self._active is not None else self._class_env(self.get_task().env_name)
        return env.render()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._active = None


class MetaWorldML1Env(MetaWorldTaskEnv):
    """Meta-World ML1: one skill (``task_name``), 50 train and 50 held-out test goal variations.

    See :mod:`metarl.envs.metaworld` for spaces, reward, episode end, task law and descriptor.
    """

    benchmark_name = "ML1"

    def __init__(
        self,
        task_name: str = "reach-v3",
        benchmark_seed: int = 0,
        reward_function_version: str = "v2",
        render_mode: str | None = None,
        camera_name: str | None = None,
        width: int = 480,
        height: int = 480,
        max_cached_envs: int | None = 4,
    ) -> None:
        _require_metaworld()
        if task_name not in _mw_env_dict.ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"unknown Meta-World class {task_name!r}; choose one of {', '.join(_mw_env_dict.ALL_V3_ENVIRONMENTS)}"
            )
        super().__init__(task_name, benchmark_seed, reward_function_version, render_mode, camera_name, width, height,
                         max_cached_envs)
        EzPickle.__init__(
            self,
            task_name=task_name,
            benchmark_seed=benchmark_seed,
            reward_function_version=reward_function_version,
            render_mode=render_mode,
            camera_name=camera_name,
            width=width,
            height=height,
            max_cached_envs=max_cached_envs,
        )

    def _class_names(self) -> dict[str, tuple[str, ...]]:
        return {"train": (self.task_name,), "test": (self.task_name,)}


class MetaWorldML10Env(MetaWorldTaskEnv):
    """Meta-World ML10: 10 train skills, 5 held-out test skills, 50 goal variations each.

    See :mod:`metarl.envs.metaworld` for spaces, reward, episode end, task law and descriptor.
    """

    benchmark_name = "ML10"

    def __init__(
        self,
        benchmark_seed: int = 0,
        reward_function_version: str = "v2",
        render_mode: str | None = None,
        camera_name: str | None = None,
        width: int = 480,
        height: int = 480,
        max_cached_envs: int | None = 4,
    ) -> None:
        super().__init__(None, benchmark_seed, reward_function_version, render_mode, camera_name, width, height,
                         max_cached_envs)
        EzPickle.__init__(
            self,
            benchmark_seed=benchmark_seed,
            reward_function_version=reward_function_version,
            render_mode=render_mode,
            camera_name=camera_name,
            width=width,
            height=height,
            max_cached_envs=max_cached_envs,
        )

    def _class_names(self) -> dict[str, tuple[str, ...]]:
        return {split: tuple(_mw_env_dict.ML10_V3[split]) for split in ("train", "test")}


class MetaWorldML25Env(MetaWorldML10Env):
    """Meta-World ML25 (metaworld 3.x): 25 train skills, 5 held-out test skills, 50 goal variations each.

    See :mod:`metarl.envs.metaworld` for spaces, reward, episode end, task law and descriptor.
    """

    benchmark_name = "ML25"

    def _class_names(self) -> dict[str, tuple[str, ...]]:
        return {split: tuple(_mw_env_dict.ML25_V3[split]) for split in ("train", "test")}


class MetaWorldML45Env(MetaWorldTaskEnv):
    """Meta-World ML45: 45 train skills, 5 held-out test skills, 50 goal variations each.

    See :mod:`metarl.envs.metaworld` for spaces, reward, episode end, task law and descriptor.
    """

    benchmark_name = "ML45"

    def __init__(
        self,
        benchmark_seed: int = 0,
        reward_function_version: str = "v2",
        render_mode: str | None = None,
        camera_name: str | None = None,
        width: int = 480,
        height: int = 480,
        max_cached_envs: int | None = 4,
    ) -> None:
        super().__init__(None, benchmark_seed, reward_function_version, render_mode, camera_name, width, height,
                         max_cached_envs)
        EzPickle.__init__(
            self,
            benchmark_seed=benchmark_seed,
            reward_function_version=reward_function_version,
            render_mode=render_mode,
            camera_name=camera_name,
            width=width,
            height=height,
            max_cached_envs=max_cached_envs,
        )

    def _class_names(self) -> dict[str, tuple[str, ...]]:
        return {split: tuple(_mw_env_dict.ML45_V3[split]) for split in ("train", "test")}
