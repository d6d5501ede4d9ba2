"""Gymnasium registration of every task distribution: ``gymnasium.make("metarl/<Name>-v0")``.

Importing :mod:`metarl.envs` registers them. Episode lengths follow the references of each family and are
applied by Gymnasium's ``TimeLimit`` through ``max_episode_steps``.
"""

from __future__ import annotations

import gymnasium as gym

# (id, entry point, max_episode_steps, default kwargs)
ENVIRONMENTS: list[tuple[str, str, int | None, dict]] = [
    # goals
    ("metarl/Navigation2D-v0", "metarl.envs.navigation:Navigation2DEnv", 100, {}),
    ("metarl/SparseNavigation2D-v0", "metarl.envs.navigation:SparseNavigation2DEnv", 100, {}),
    ("metarl/HalfCheetahVel-v0", "metarl.envs.locomotion:HalfCheetahVelEnv", 200, {}),
    ("metarl/HalfCheetahDir-v0", "metarl.envs.locomotion:HalfCheetahDirEnv", 200, {}),
    ("metarl/AntDir-v0", "metarl.envs.locomotion:AntDirEnv", 200, {}),
    ("metarl/AntGoal-v0", "metarl.envs.locomotion:AntGoalEnv", 200, {}),
    ("metarl/HumanoidDir-v0", "metarl.envs.locomotion:HumanoidDirEnv", 200, {}),
    # dynamics
    ("metarl/HalfCheetahRandParams-v0", "metarl.envs.rand_params:HalfCheetahRandParamsEnv", 200, {}),
    ("metarl/HopperRandParams-v0", "metarl.envs.rand_params:HopperRandParamsEnv", 200, {}),
    ("metarl/Walker2dRandParams-v0", "metarl.envs.rand_params:Walker2dRandParamsEnv", 200, {}),
    ("metarl/CartPoleContext-v0", "metarl.envs.classic_control:CartPoleContextEnv", 500, {}),
    ("metarl/PendulumContext-v0", "metarl.envs.classic_control:PendulumContextEnv", 200, {}),
    ("metarl/MountainCarContinuousContext-v0", "metarl.envs.classic_control:MountainCarContinuousContextEnv", 999, {}),
    ("metarl/AcrobotContext-v0", "metarl.envs.classic_control:AcrobotContextEnv", 500, {}),
    # morphologies
    ("metarl/HalfCheetahMorph-v0", "metarl.envs.morphology:HalfCheetahMorphEnv", 200, {}),
    ("metarl/AntMorph-v0", "metarl.envs.morphology:AntMorphEnv", 200, {}),
    # discrete (RL^2)
    ("metarl/BernoulliBandit-v0", "metarl.envs.discrete:BernoulliBanditEnv", None, {}),
    ("metarl/TabularMDP-v0", "metarl.envs.discrete:TabularMDPEnv", None, {}),
    # memory (Ni et al. 2023): the env ends each episode itself after corridor_length + 1 steps
    ("metarl/PassiveTMaze-v0", "metarl.envs.memory:PassiveTMazeEnv", None, {}),
    # Meta-World (optional extra `metarl[metaworld]`)
    ("metarl/MetaWorldML1-v0", "metarl.envs.metaworld:MetaWorldML1Env", 500, {}),
    ("metarl/MetaWorldML10-v0", "metarl.envs.metaworld:MetaWorldML10Env", 500, {}),
    ("metarl/MetaWorldML25-v0", "metarl.envs.metaworld:MetaWorldML25Env", 500, {}),
    ("metarl/MetaWorldML45-v0", "metarl.envs.metaworld:MetaWorldML45Env", 500, {}),
]


def register_all() -> None:
    """Register every environment above once (re-importing is harmless)."""
    for env_id, entry_point, max_steps, kwargs in ENVIRONMENTS:
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps, kwargs=kwargs)
