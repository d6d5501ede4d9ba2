"""``metarl evaluate RUN_DIR --video``: a held-out task's rollouts before and after adaptation, as a GIF.

MuJoCo renders off-screen; on a machine without a display set ``MUJOCO_GL=egl`` (GPU) or ``MUJOCO_GL=osmesa``
(CPU, Debian package ``libosmesa6``). This module picks ``egl`` then ``osmesa`` when ``MUJOCO_GL`` is unset and
says in one line what to install when neither works and a MuJoCo env had to be rendered (environments drawn without
OpenGL, like 2D navigation, render anyway). MuJoCo reads ``MUJOCO_GL`` once, when it is imported: the CLI chooses
the backend before importing anything that imports MuJoCo. Agents provide the frames through the optional contract
method ``render_episodes(task, num_episodes, seed) -> list[list[np.ndarray]]`` (frames of each adaptation episode,
episode 0 before adaptation; see :mod:`metarl.core.agent`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from metarl.runs import RunError, atomic_write_bytes

GL_PROBE = "import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); r = mujoco.Renderer(m, 8, 8); r.render()"
"""Python code that exits 0 where ``mujoco.Renderer`` works (run in a subprocess with ``MUJOCO_GL`` set)."""


def gl_backend_works(backend: str, timeout: float = 60) -> bool:
    """Whether ``mujoco.Renderer`` can render with ``MUJOCO_GL=backend`` (probed in a fresh subprocess)."""
    import subprocess
    import sys

    try:
        result = subprocess.run([sys.executable, "-c", GL_PROBE], env=dict(os.environ, MUJOCO_GL=backend),
                                capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def choose_gl_backend() -> str:
    """Set ``MUJOCO_GL`` to a headless backend that works here (before mujoco creates a context).

    Raises :class:`RunError` when neither ``egl`` nor ``osmesa`` works, or when MuJoCo was imported before the
    backend was set (it reads ``MUJOCO_GL`` once, at import).
    """
    import sys

    backend = os.environ.get("MUJOCO_GL")
    if not backend:
        backend = next((b for b in ("egl", "osmesa") if gl_backend_works(b)), None)
        if backend is None:
            raise RunError("no headless OpenGL for MuJoCo rendering: install libegl1 (GPU) or libosmesa6 (CPU, "
                           "`apt-get install libosmesa6`) or set MUJOCO_GL")
        os.environ["MUJOCO_GL"] = backend
    gl_context = sys.modules.get("mujoco.gl_context")
    loaded = getattr(getattr(gl_context, "GLContext", None), "__module__", None)
    if backend in ("egl", "osmesa") and loaded is not None and loaded != f"mujoco.{backend}":
        raise RunError(f"MuJoCo was imported before MUJOCO_GL was set ({loaded}): start Python with "
                       f"MUJOCO_GL={backend}")
    return backend


def describe_task(task: Any) -> str:
    """A short label for a task: its fields with floats rounded (``goal_x=-0.31 goal_y=0.12``)."""
    import dataclasses

    if not dataclasses.is_dataclass(task):
        return str(task)[:60]
    parts = []
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        if isinstance(value, float):
            value = f"{value:.2f}"
        elif isinstance(value, (tuple, list)) and all(isinstance(v, float) for v in value):
            value = "(" + ", ".join(f"{v:.2f}" for v in value) + ")"
        parts.append(f"{f.name}={value}")
    return " ".join(parts)[:60]


def wrap_caption(text: str, width_px: int, char_px: int = 6) -> str:
    """``text`` with each line broken at spaces so that it fits ``width_px`` pixels of Pillow's default font
    (``char_px`` wide per character), leaving an 8-pixel margin on both sides."""
    import textwrap

    columns = max(8, (width_px - 16) // char_px)
    return "\n".join(part for line in text.splitlines() for part in (textwrap.wrap(line, columns) or [""]))


def label_frames(frames: list[np.ndarray], text: str) -> list[np.ndarray]:
    """Write ``text`` in the top-left corner of every frame, wrapped to the frame's width, on a dark band."""
    from PIL import Image, ImageDraw

    out = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame))
        draw = ImageDraw.Draw(image)
        caption = wrap_caption(text, image.width)
        box = draw.multiline_textbbox((8, 8), caption)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.multiline_text((8, 8), caption, fill=(255, 255, 255))
        out.append(np.asarray(image))
    return out


def record_adaptation_video(run_dir: Path, *, num_episodes: int | None = None, split: str = "test",
                            seed: int = 12345, every: int = 2, max_frames: int = 240) -> Path:
    """Render one held-out task's adaptation episodes into ``RUN_DIR/adaptation.gif``; returns its path.

    The task is drawn from ``split`` of the run's environment (with the agent's ``env_kwargs``); every ``every``-th
    frame is kept, shown for ``50 * every`` ms (real time at 20 frames per second), each labelled with its episode.
    Where the episodes would give more than ``max_frames`` frames, the stride grows (each frame then shows for
    longer) so the file stays small: long MuJoCo episodes are sped up, not cut.
    """
    try:
        choose_gl_backend()
        gl_problem: RunError | None = None
    except RunError as err:  # only MuJoCo needs OpenGL: a Pillow-drawn env (2D navigation) renders anyway
        gl_problem = err
    import gymnasium as gym
    import imageio.v2 as imageio

    import metarl.envs  # noqa: F401
    from metarl.core.seeding import derive_seed
    from metarl.training import load_session

    run_dir = Path(run_dir)
    session = load_session(run_dir)
    run = session.run
    if run.domain != "meta-rl":
        session.close()
        raise RunError(f"{run_dir} is a few-shot run: videos are of meta-RL agents")
    agent: Any = session.agent
    if not hasattr(agent, "render_episodes"):
        agent.close()
        raise RunError(f"agent {run.name} cannot render episodes")
    env = gym.make(run.task.env, **getattr(agent.config, "env_kwargs", {}))
    task = env.unwrapped.sample_tasks(1, split=split, seed=derive_seed(seed, "video"))[0]
    env.close()
    try:
        episodes = agent.render_episodes(task, num_episodes or run.evaluation.eval_episodes or 3,
                                         derive_seed(seed, "video-rollouts"))
    except Exception as err:
        if gl_problem is None:
            raise
        raise RunError(f"{gl_problem} (rendering failed: {str(err).splitlines()[0] if str(err) else err!r})") from err
    finally:
        agent.close()
    total = sum(len(episode) for episode in episodes)
    every = max(every, -(-total // max_frames))
    frames: list[np.ndarray] = []
    for k, episode in enumerate(episodes):
        label = "before adaptation" if k == 0 else f"after adaptation ({k})"
        frames += label_frames(episode[::every], f"{label}\n{describe_task(task)}")
    if not frames:
        raise RunError("the agent rendered no frames")
    path = run_dir / "adaptation.gif"
    import io

    buffer = io.BytesIO()
    imageio.mimsave(buffer, frames, format="GIF", duration=50 * every, loop=0)  # milliseconds per frame
    atomic_write_bytes(path, buffer.getvalue())
    return path
