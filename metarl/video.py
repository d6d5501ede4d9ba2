"""``metarl evaluate RUN_DIR --video``: a held-out task's rollouts before and after adaptation, as a GIF.

MuJoCo renders off-screen; on a machine without a display set ``MUJOCO_GL=egl`` (GPU) or ``MUJOCO_GL=osmesa``
(CPU, Debian package ``libosmesa6``). This module picks ``egl`` then ``osmesa`` when ``MUJOCO_GL`` is unset and
says in one line what to install when neither works. Agents provide the frames through the optional contract
method ``render_episodes(task, num_episodes, seed) -> list[list[np.ndarray]]`` (frames of each adaptation episode,
episode 0 before adaptation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from metarl.runs import RunError, atomic_write_bytes


def choose_gl_backend() -> str:
    """Set ``MUJOCO_GL`` to a headless backend that works here (before mujoco creates a context)."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    import subprocess
    import sys

    for backend in ("egl", "osmesa"):
        probe = ("import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); "
                 "r = mujoco.Renderer(m, 8, 8); r.render()")
        ok = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, MUJOCO_GL=backend),
                            capture_output=True, timeout=60).returncode == 0
        if ok:
            os.environ["MUJOCO_GL"] = backend
            return backend
    raise RunError("no headless OpenGL for MuJoCo rendering: install libegl1 (GPU) or libosmesa6 (CPU, "
                   "`apt-get install libosmesa6`) or set MUJOCO_GL")


def label_frames(frames: list[np.ndarray], text: str) -> list[np.ndarray]:
    """Write ``text`` in the top-left corner of every frame."""
    from PIL import Image, ImageDraw

    out = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame))
        ImageDraw.Draw(image).text((8, 8), text, fill=(255, 255, 255))
        out.append(np.asarray(image))
    return out


def record_adaptation_video(run_dir: Path, *, num_episodes: int | None = None, split: str = "test",
                            seed: int = 12345, every: int = 2) -> Path:
    """Render one held-out task's adaptation episodes into ``RUN_DIR/adaptation.gif``; returns its path."""
    choose_gl_backend()
    import gymnasium as gym
    import imageio.v2 as imageio

    import metarl.envs  # noqa: F401
    from metarl.core.seeding import derive_seed
    from metarl.runs import load_checkpoint, read_config
    from metarl.training_rl import build_agent, load_rl_config, resolve_agent_config

    run_dir = Path(run_dir)
    run = load_rl_config(run_dir)
    agent: Any = build_agent(run, resolve_agent_config(run, stored=read_config(run_dir).get("agent_config", {})))
    agent.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["agent_state"])
    if not hasattr(agent, "render_episodes"):
        raise RunError(f"agent {run.agent} cannot render episodes")
    env = gym.make(run.env)
    task = env.unwrapped.sample_tasks(1, split=split, seed=derive_seed(seed, "video"))[0]
    env.close()
    episodes = agent.render_episodes(task, num_episodes or run.eval_episodes or 3, derive_seed(seed, "video-rollouts"))
    agent.close()
    frames: list[np.ndarray] = []
    for k, episode in enumerate(episodes):
        label = "before adaptation" if k == 0 else f"after adaptation ({k})"
        frames += label_frames(episode[::every], f"{label} | task {task}")
    if not frames:
        raise RunError("the agent rendered no frames")
    path = run_dir / "adaptation.gif"
    import io

    buffer = io.BytesIO()
    imageio.mimsave(buffer, frames, format="GIF", duration=0.05 * every, loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return path
