"""Meta-training of meta-RL agents: run directories, presets, checkpoints, resume, held-out evaluation.

The Python API::

    from metarl.training_rl import RLRunConfig, train_meta_rl
    run_dir = train_meta_rl(RLRunConfig(agent="maml-trpo", env="metarl/Navigation2D-v0", iterations=50,
                                        preset="experiments/presets/maml_trpo_navigation.yaml"))

The agent's own config (a dataclass of the agent's module) is built from the preset (YAML, ``yaml.safe_load``),
then ``overrides`` (``--set key=value`` on the command line), then the run's ``seed``/``device``; the resolved
agent config is stored in ``config.json`` beside the run config. Determinism: every iteration draws its randomness
from the seed and the iteration index or from RNG state the agent saves in its checkpoint, so ``metarl resume``
after a kill reproduces the uninterrupted run on CPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml

from metarl.evaluation import evaluate_meta_rl, plot_meta_rl, save_json
from metarl.runs import (
    MetricsLogger,
    RunError,
    create_run_dir,
    load_checkpoint,
    read_config,
    remove_if_failed,
    save_checkpoint,
)


@dataclass
class RLRunConfig:
    """Meta-train a meta-RL agent on a task distribution, then evaluate it on held-out tasks."""

    agent: str = "maml-trpo"
    """maml-trpo, rl2, pearl, oracle, multitask or scratch"""
    env: str = "metarl/Navigation2D-v0"
    """a Gymnasium id whose env implements sample_tasks/set_task/get_task (also module:EnvId-v0)"""
    iterations: int = 100
    """meta-iterations"""
    preset: str | None = None
    """YAML file with the agent's config fields (experiments/presets/...)"""
    overrides: dict[str, Any] = field(default_factory=dict)
    """agent config fields set on top of the preset (CLI: --set key=value)"""
    seed: int = 0
    """one seed for initialisation, task sampling and environments"""
    device: str = "cpu"
    """cpu, cuda or auto"""
    eval_tasks: int = 20
    """held-out tasks per split"""
    eval_episodes: int | None = None
    """adaptation episodes per task (column 0 = before adaptation); default: the agent's trial length
    (episodes_per_trial) where it has one, else 3"""
    eval_splits: tuple[str, ...] = ("test", "ood")
    """splits to evaluate (splits the env does not offer are skipped)"""
    eval_seed: int = 12345
    """seed of the held-out tasks (the same for every agent)"""
    checkpoint_every: int = 10
    """iterations between checkpoints (and at the end)"""
    init_from: str | None = None
    """warm start: a run directory of the same agent whose last checkpoint's policy weights start this run (e.g.
    fine-tune with a larger meta-batch); the iteration count, seeds and env steps of this run start from zero"""
    threads: int | None = None
    """torch intra-op threads (default: torch's)"""
    run_dir: str | None = None
    """where to write the run (default: runs/<agent>-<env>-<time>)"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        from metarl.agents import RL_AGENTS

        if self.agent not in RL_AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; choose one of: {', '.join(RL_AGENTS)}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("eval_tasks", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        self.eval_splits = tuple(self.eval_splits)
        if not isinstance(self.overrides, dict):
            raise ValueError("overrides must be a mapping of agent config fields")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["inner_lr=0.05", "hidden=[32, 32]"]`` -> dict, values parsed as YAML scalars/lists."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            result[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"cannot parse the value of --set {pair!r}") from None
    return result


def load_preset(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"preset not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"preset {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {path} must be a mapping of config fields")
    return data


def resolve_agent_config(run: RLRunConfig, stored: dict[str, Any] | None = None) -> Any:
    """The agent's config dataclass from preset + overrides + seed/device (or from a stored dict on resume)."""
    from metarl.agents import rl_agent_classes
    from metarl.core.config import check_renamed_fields

    _, config_type = rl_agent_classes(run.agent)
    names = {f.name for f in dataclasses.fields(config_type)}
    if stored is None:
        values = {**(load_preset(run.preset) if run.preset else {}), **run.overrides}
        values.pop("env", None)  # a preset may name its env for documentation
        for key in ("seed", "device"):
            if key in names:
                values[key] = getattr(run, key)
    else:
        values = dict(stored)
    check_renamed_fields(config_type, values, run.preset)  # an old key of a renamed field: one line naming the new
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {run.agent} config field(s) {unknown}; valid: {sorted(names)}")
    for f in dataclasses.fields(config_type):  # YAML/JSON give lists where the dataclass has tuples
        if isinstance(values.get(f.name), list) and "tuple" in str(f.type):
            values[f.name] = tuple(values[f.name])
    try:
        return config_type(**values)
    except TypeError as err:
        raise ValueError(f"bad {run.agent} config: {err}") from None


def check_env(env_id: str) -> None:
    """Fail early, in one line, if ``env_id`` is unknown or is not a task environment."""
    import metarl.envs  # noqa: F401 - registers metarl/* ids
    from metarl.envs.base import is_task_env

    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise ValueError(f"cannot make environment {env_id!r}: {str(err).splitlines()[0]}") from None
    except ModuleNotFoundError as err:
        raise ValueError(f"cannot make environment {env_id!r}: {err}") from None
    try:
        if not is_task_env(env):
            raise ValueError(f"{env_id} is not a task environment: its unwrapped env needs sample_tasks, set_task "
                             "and get_task (or wrap it with metarl.envs.wrappers.AttributeTaskWrapper)")
    finally:
        env.close()


def build_agent(run: RLRunConfig, agent_config: Any):
    from metarl.agents import rl_agent_classes

    agent_type, _ = rl_agent_classes(run.agent)
    return agent_type(run.env, agent_config)


def train_meta_rl(run: RLRunConfig, *, resume_dir: Path | None = None) -> Path:
    """Meta-train (or resume) and evaluate on held-out tasks; returns the run directory."""
    if run.threads:
        torch.set_num_threads(run.threads)
    check_env(run.env)
    if resume_dir is None:
        agent_config = resolve_agent_config(run)
    else:
        agent_config = resolve_agent_config(run, stored=read_config(resume_dir).get("agent_config", {}))
    agent = build_agent(run, agent_config)  # bad hyperparameters / env fail here, before any directory exists
    start = 0
    if resume_dir is None:
        record = {**dataclasses.asdict(run), "agent_config": dataclasses.asdict(agent_config)}
        if run.init_from:
            record["init_from_checkpoint"] = _warm_start(agent, run)
        run_dir = create_run_dir(Path(run.run_dir) if run.run_dir else None,
                                 f"{run.agent}-{run.env.split('/')[-1]}", record)
    else:
        run_dir = Path(resume_dir)
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if state.get("kind") != "meta-rl" or state.get("agent") != run.agent:
            raise RunError(f"checkpoint in {run_dir} is not a {run.agent} run")
        try:
            agent.load_state_dict(state["agent_state"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise RunError(f"checkpoint does not match the config: {str(err).splitlines()[0][:200]}") from None
        start = int(state["iteration"])
    try:
        _train_loop(run, agent, run_dir, start, resumed=resume_dir is not None)
        evaluate_rl_run(run_dir, agent=agent, run=run)
    except BaseException:
        remove_if_failed(run_dir, created=resume_dir is None)
        raise
    finally:
        agent.close()
    return run_dir


def _warm_start(agent: Any, run: RLRunConfig) -> dict[str, Any]:
    """Load ``run.init_from``'s last policy weights into ``agent``; return where they came from (for config.json)."""
    path = Path(run.init_from) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise RunError(f"--init-from {run.init_from}: no checkpoint there (checkpoints/last.pt)")
    state = load_checkpoint(path)
    if state.get("kind") != "meta-rl" or state.get("agent") != run.agent:
        raise RunError(f"--init-from {run.init_from}: not a {run.agent} run")
    load_weights = getattr(agent, "load_weights", None)
    if load_weights is None:
        raise RunError(f"--init-from is not supported by {run.agent} (it has no load_weights)")
    try:
        load_weights(state["agent_state"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise RunError(f"--init-from {run.init_from}: weights do not fit this config: "
                       f"{str(err).splitlines()[0][:200]}") from None
    return {"run_dir": str(run.init_from), "iteration": int(state.get("iteration", 0)),
            "env_steps": int(state.get("env_steps", 0))}


def _train_loop(run: RLRunConfig, agent: Any, run_dir: Path, start: int, resumed: bool) -> None:
    from tqdm.auto import tqdm

    logger = MetricsLogger(run_dir, resume_from_step=start if resumed else None)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    env_steps = 0
    if resumed:
        env_steps = int(load_checkpoint(checkpoint_path).get("env_steps", 0))

    def checkpoint(iteration: int) -> None:
        save_checkpoint(checkpoint_path, {"kind": "meta-rl", "agent": run.agent, "iteration": iteration,
                                          "env_steps": env_steps, "agent_state": agent.state_dict()})

    bar = tqdm(total=run.iterations, initial=start, desc=f"{run.agent} on {run.env}", disable=not run.progress,
               dynamic_ncols=True)
    for iteration in range(start, run.iterations):
        tick = time.perf_counter()
        metrics = agent.train_iteration(iteration)
        seconds = time.perf_counter() - tick
        steps = int(metrics.pop("env_steps", 0))
        env_steps += steps
        metrics["charts/env_steps"] = env_steps
        metrics["charts/env_steps_per_s"] = steps / max(seconds, 1e-9)
        logger.log(iteration + 1, metrics)
        shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()
                 if k.endswith(("return", "env_steps_per_s")) or "return" in k}
        bar.set_postfix(shown)
        bar.update(1)
        if (iteration + 1) % run.checkpoint_every == 0 or iteration + 1 == run.iterations:
            checkpoint(iteration + 1)
    bar.close()
    if not checkpoint_path.exists():
        checkpoint(run.iterations)
    logger.close()


def evaluate_rl_run(run_dir: Path, *, agent: Any = None, run: RLRunConfig | None = None,
                    eval_tasks: int | None = None) -> dict[str, Any]:
    """Meta-test the run's agent on held-out tasks; writes evaluation.json and adaptation.png."""
    run_dir = Path(run_dir)
    stored = read_config(run_dir)
    if run is None:
        run = load_rl_config(run_dir)
    if agent is None:
        agent = build_agent(run, resolve_agent_config(run, stored=stored.get("agent_config", {})))
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if state.get("kind") != "meta-rl":
            raise RunError(f"{run_dir} is not a meta-RL run")
        agent.load_state_dict(state["agent_state"])
    episodes = run.eval_episodes or int(getattr(agent.config, "episodes_per_trial", 3))
    result = evaluate_meta_rl(agent, run.env, splits=run.eval_splits, num_tasks=eval_tasks or run.eval_tasks,
                              num_episodes=episodes, seed=run.eval_seed)
    result["config"] = stored
    save_json(run_dir / "evaluation.json", result)
    plot_meta_rl(result, run_dir / "adaptation.png", title=f"{run.agent} on {run.env}")
    return result


def load_rl_config(run_dir: Path) -> RLRunConfig:
    raw = dict(read_config(run_dir))
    raw.pop("agent_config", None)
    raw.pop("init_from_checkpoint", None)  # provenance of a warm start (the weights are in this run's checkpoint)
    names = {f.name for f in dataclasses.fields(RLRunConfig)}
    unknown = set(raw) - names
    if unknown:
        raise RunError(f"{run_dir}/config.json has unknown fields {sorted(unknown)}")
    if "eval_splits" in raw:
        raw["eval_splits"] = tuple(raw["eval_splits"])
    try:
        return RLRunConfig(**raw)
    except (TypeError, ValueError) as err:
        raise RunError(f"{run_dir}/config.json is invalid: {err}") from None


def is_rl_run(run_dir: Path) -> bool:
    try:
        return "agent_config" in read_config(run_dir)
    except RunError:
        return False
