"""``metarl evaluate RUN_DIR --video``: agents' render_episodes, the recording env, the GIF (2D navigation draws
without OpenGL; the MuJoCo variant runs in a subprocess and skips where ``mujoco.Renderer`` cannot be created)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metarl.video as video
from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from metarl.agents.oracle import Oracle, OracleConfig
from metarl.agents.pearl import PEARL, PEARLConfig
from metarl.agents.rl2 import RL2, RL2Config
from metarl.agents.varibad import VariBAD, VariBADConfig
from metarl.cli import main as cli_main
from metarl.core.agent import RendersEpisodes
from metarl.envs.recording import FrameRecorder, make_recording_envs
from metarl.training import make_run_config, train

NAV = "metarl/Navigation2D-v0"
STEPS = 6  # episode length: the point stays inside the drawn square, so consecutive frames always differ
MAML_TINY = dict(meta_batch_size=2, episodes_per_task=2, max_episode_steps=STEPS, hidden_sizes=[8])
PEARL_TINY = dict(
    num_train_tasks=3,
    hidden_sizes=[8],
    encoder_hidden_sizes=[8],
    meta_batch_size=2,
    batch_size=4,
    embedding_batch_size=3,
    num_initial_steps=6,
    num_tasks_sample=1,
    num_steps_prior=6,
    num_extra_rl_steps_posterior=0,
    gradient_steps=1,
    max_episode_steps=STEPS,
    replay_capacity=50,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_run(run_dir: Path, env: str = NAV, **overrides) -> Path:
    """A one-iteration MAML-TRPO run directory (checkpoint, config, evaluation) in a few seconds."""
    run = make_run_config(
        "maml-trpo",
        {**MAML_TINY, **overrides},
        env=env,
        iterations=1,
        eval_tasks=2,
        eval_episodes=2,
        eval_splits=("test",),
        progress=False,
        run_dir=str(run_dir),
    )
    return train(run)


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("video") / "maml-nav")


def make_agent(kind: str):
    if kind == "maml-trpo":
        return MAMLTRPO(NAV, MAMLTRPOConfig(**MAML_TINY))
    if kind == "rl2":
        return RL2(NAV, RL2Config(meta_batch_size=2, num_minibatches=1, hidden_size=8, max_episode_steps=STEPS))
    if kind == "varibad":
        return VariBAD(NAV, VariBADConfig(meta_batch_size=2, num_minibatches=1, encoder_hidden_size=8,
                                          decoder_hidden_sizes=[8], policy_hidden_sizes=[8], max_episode_steps=STEPS))
    if kind == "pearl":
        return PEARL(NAV, PEARLConfig(**PEARL_TINY))
    return Oracle(NAV, OracleConfig(**PEARL_TINY))


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        assert image.format == "GIF"
        frames = []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
        return frames


# --- the recording env ----------------------------------------------------------------------------------------
@pytest.mark.api
def test_recording_env_keeps_one_frame_per_reset_and_step():
    envs, recorder = make_recording_envs(NAV, max_episode_steps=4)
    assert isinstance(recorder, FrameRecorder) and envs.num_envs == 1 and envs.max_episode_steps == 4
    envs.reset(seed=0)
    for _ in range(4):
        envs.step(np.full((1, 2), 0.1, dtype=np.float32))
    envs.step(np.zeros((1, 2), dtype=np.float32))  # NEXT_STEP autoreset: a new episode starts
    envs.close()
    assert [len(episode) for episode in recorder.episodes] == [5, 1]
    first = recorder.episodes[0]
    assert all(f.shape == (256, 256, 3) and f.dtype == np.uint8 for f in first)
    assert all(not np.array_equal(a, b) for a, b in zip(first, first[1:]))  # the point moves every step
    np.testing.assert_array_equal(recorder.episodes[1][0], first[0])  # same start, same goal
    with warnings.catch_warnings(), pytest.raises(ValueError, match="cannot render"):
        warnings.simplefilter("ignore")  # Gymnasium's warning that the bandit has no rgb_array mode
        make_recording_envs("metarl/BernoulliBandit-v0")


# --- render_episodes of every agent ---------------------------------------------------------------------------
def held_out_task(agent, seed: int = 3):
    api = agent.task_env
    return api.sample_tasks(1, split="test", seed=seed)[0]


def policy_state(agent) -> dict[str, torch.Tensor]:
    module = agent.actor if isinstance(agent, PEARL) else agent.policy
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_frames(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(np.array_equal(f, g) for f, g in zip(x, y)) for x, y in zip(a, b)
    )


@pytest.mark.api
@pytest.mark.parametrize("kind", ["maml-trpo", "rl2", "varibad", "pearl", "oracle"])
def test_render_episodes_shapes_and_determinism(kind):
    agent = make_agent(kind)
    assert isinstance(agent, RendersEpisodes)
    task, before = held_out_task(agent), policy_state(agent)
    episodes = agent.render_episodes(task, 3, seed=11)
    assert len(episodes) == 3
    for episode in episodes:
        assert len(episode) == STEPS + 1  # the reset frame, then one per step
        assert all(frame.shape == (256, 256, 3) and frame.dtype == np.uint8 for frame in episode)
    assert same_frames(episodes, agent.render_episodes(task, 3, seed=11))
    after = policy_state(agent)
    assert all(torch.equal(before[k], after[k]) for k in before)
    if kind != "oracle":  # sampled actions or latents: another seed, other episodes (the oracle's are fixed)
        assert not same_frames(episodes, agent.render_episodes(task, 3, seed=12))
    with pytest.raises(ValueError, match="num_episodes"):
        agent.render_episodes(task, 0, seed=0)
    agent.close()


@pytest.mark.api
def test_maml_trpo_renders_the_policies_meta_test_measures():
    """render_episodes and meta_test go through the same adaptation stages (one generator)."""
    agent = make_agent("maml-trpo")
    task = held_out_task(agent, seed=5)
    stages = [{k: v.clone() for k, v in fast.items()} for fast, _ in agent.adaptation_stages([task], 3, seed=2)]
    assert not torch.equal(stages[0]["body.0.weight"], stages[1]["body.0.weight"])  # it does adapt
    seen = []
    original = agent.adaptation_stages

    def spy(*args, **kwargs):
        for fast, episodes in original(*args, **kwargs):
            seen.append({k: v.clone() for k, v in fast.items()})
            yield fast, episodes

    agent.adaptation_stages = spy
    agent.render_episodes(task, 3, seed=2)
    assert len(seen) == 3 and all(torch.equal(a[k], b[k]) for a, b in zip(seen, stages) for k in a)
    agent.close()


# --- the GIF ------------------------------------------------------------------------------------------------------
@pytest.mark.smoke
def test_cli_evaluate_video_writes_the_gif(nav_run, capsys):
    assert cli_main(["evaluate", str(nav_run), "--video"]) == 0
    gif = nav_run / "adaptation.gif"
    assert f"video: {gif}" in capsys.readouterr().out
    frames = gif_frames(gif)
    every = 2
    assert len(frames) == 2 * math.ceil((STEPS + 1) / every)  # 2 episodes (eval_episodes), every 2nd frame
    assert all(frame.shape == (256, 256, 3) for frame in frames)


@pytest.mark.determinism
def test_video_labels_and_determinism(nav_run, monkeypatch):
    labels: list[str] = []
    original = video.label_frames

    def spy(frames, text):
        labels.append(text)
        return original(frames, text)

    monkeypatch.setattr(video, "label_frames", spy)
    first = video.record_adaptation_video(nav_run, num_episodes=3, every=3).read_bytes()
    assert [label.split("\n")[0] for label in labels] == [
        "before adaptation",
        "after adaptation (1)",
        "after adaptation (2)",
    ]
    assert all("goal_x=" in label and "goal_y=" in label for label in labels)
    assert len(gif_frames(nav_run / "adaptation.gif")) == 3 * math.ceil((STEPS + 1) / 3)
    assert video.record_adaptation_video(nav_run, num_episodes=3, every=3).read_bytes() == first
    assert video.record_adaptation_video(nav_run, num_episodes=3, every=3, seed=1).read_bytes() != first


@pytest.mark.smoke
def test_navigation_video_needs_no_opengl(nav_run, monkeypatch):
    """2D navigation is drawn with Pillow: no headless OpenGL found is no reason to fail."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(video, "gl_backend_works", lambda backend, timeout=60: False)
    with pytest.raises(video.RunError, match="no headless OpenGL"):
        video.choose_gl_backend()
    assert len(gif_frames(video.record_adaptation_video(nav_run, num_episodes=1))) == math.ceil((STEPS + 1) / 2)


# --- MuJoCo -----------------------------------------------------------------------------------------------------
def gl_candidates() -> list[str]:
    return [os.environ["MUJOCO_GL"]] if os.environ.get("MUJOCO_GL") else ["egl", "osmesa"]


def headless_gl_backend() -> str | None:
    """A MUJOCO_GL value under which ``mujoco.Renderer`` works here (probed in subprocesses), else None."""
    return next((backend for backend in gl_candidates() if video.gl_backend_works(backend)), None)


MUJOCO_SCRIPT = """
import sys
import numpy as np
from PIL import Image
from metarl.cli import main
from metarl.video import record_adaptation_video

run = sys.argv[1]
assert main(["evaluate", run, "--video"]) == 0
with Image.open(run + "/adaptation.gif") as gif:
    frames, size = gif.n_frames, gif.size
assert frames == 2 * 2 and size == (480, 480), (frames, size)  # 2 episodes of 3 steps: frames 0 and 2 of 4
first = open(run + "/adaptation.gif", "rb").read()
assert record_adaptation_video(run).read_bytes() == first
print("rendered")
"""


@pytest.mark.smoke
def test_mujoco_video_in_a_subprocess(tmp_path):
    backend = headless_gl_backend()
    if backend is None:
        pytest.skip(
            f"mujoco.Renderer cannot be created here with MUJOCO_GL={' or '.join(gl_candidates())} (no "
            "headless OpenGL: egl needs libegl1, osmesa needs libosmesa6)"
        )
    run_dir = tiny_run(tmp_path / "maml-cheetah", env="metarl/HalfCheetahVel-v0", max_episode_steps=3)
    environ = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    result = subprocess.run(
        [sys.executable, "-c", MUJOCO_SCRIPT, str(run_dir)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and "rendered" in result.stdout, result.stderr[-3000:]


@pytest.mark.api
def test_captions_fit_the_frame_and_long_videos_are_capped(nav_run):
    """Every caption line fits inside a narrow frame (it used to run off the right edge), and a video whose episodes
    would give more frames than ``max_frames`` gets a larger stride instead."""
    from PIL import Image, ImageDraw

    caption = video.wrap_caption("after adaptation (2)\ngoal_x=-0.31 goal_y=0.12 velocity=1.25 mass=3.50 extra=1", 160)
    draw = ImageDraw.Draw(Image.new("RGB", (160, 160)))
    assert all(draw.textlength(line) <= 160 - 16 for line in caption.splitlines())
    assert caption.splitlines()[0] == "after adaptation (2)" and len(caption.splitlines()) >= 3
    capped = gif_frames(video.record_adaptation_video(nav_run, num_episodes=3, every=1, max_frames=10))
    assert len(capped) <= 10 + 3  # at most one extra frame per episode from rounding
