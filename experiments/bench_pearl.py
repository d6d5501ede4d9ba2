"""Benchmark PEARL's update and data collection: gradient steps/s of ``PEARL.gradient_step`` (the meta-batch's tasks
batched in one forward pass) vs the same update written here as a Python loop over the tasks (:func:`looped_step`,
the reference that tests/test_pearl.py checks the batched update against), and env steps/s of collection. Prints
JSON (and writes it to ``--out``).

    .venv/bin/python experiments/bench_pearl.py                      # reference network sizes, Navigation2D
    .venv/bin/python experiments/bench_pearl.py --size small --threads 1
    .venv/bin/python experiments/bench_pearl.py --env metarl/HalfCheetahVel-v0

Batched and looped variants alternate in ``--repeats`` rounds in the same process, so the ratio is meaningful on a
busy machine even when the absolute numbers are not. The oracle runs the same update without the encoder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from metarl.agents.oracle import Oracle
from metarl.agents.pearl import PEARL, PEARLConfig
from metarl.core.context import kl_to_unit_gaussian
from metarl.core.sac import conditioned_actor_losses, conditioned_critic_loss, soft_update_

SIZES = {
    # the reference's networks and batches (oyster configs/default.py)
    "reference": dict(hidden_sizes=[300, 300, 300], encoder_hidden_sizes=[200, 200, 200], meta_batch_size=16,
                      batch_size=256, embedding_batch_size=64),
    # experiments/presets/pearl_navigation.yaml's
    "small": dict(hidden_sizes=[64, 64], encoder_hidden_sizes=[64, 64], meta_batch_size=8, batch_size=64,
                  embedding_batch_size=32),
}


def looped_step(agent: PEARL, ids: torch.Tensor, batch: dict, context: torch.Tensor | None,
                generator: torch.Generator) -> None:
    """``agent.gradient_step`` written task by task: each loss the mean of the per-task losses (the baseline that
    batching the meta-batch replaces)."""
    cfg, (tasks, rows) = agent.config, batch["rewards"].shape
    if agent.encoder is not None:
        mean, var = agent.encoder.posterior(context)
        z = mean + var.sqrt() * torch.randn(mean.shape, generator=generator)
        kl = kl_to_unit_gaussian(mean, var).sum()
    else:
        z, kl = agent.train_descriptors[ids], torch.zeros(())
    alpha = agent.log_alpha.detach().exp()
    noise = torch.randn(2, tasks, rows, agent.action_dim, generator=generator)

    def task(m: int) -> tuple[dict, torch.Tensor]:
        data = {k: v[m] for k, v in batch.items()}
        data["next_noise"], data["noise"] = noise[0, m], noise[1, m]
        return data, z[m, None, :].expand(rows, -1)

    q_loss = torch.stack([conditioned_critic_loss(agent.actor, agent.critic, agent.target_critic, *task(m), alpha,
                                                  cfg.gamma, cfg.reward_scale)[0] for m in range(tasks)]).mean()
    agent.critic_optimizer.zero_grad(set_to_none=True)
    (q_loss + cfg.kl_lambda * kl).backward()
    agent.critic_optimizer.step()
    losses = [conditioned_actor_losses(agent.actor, agent.critic, agent.log_alpha, *task(m), alpha,
                                       agent.target_entropy, cfg.policy_mean_reg, cfg.policy_std_reg)
              for m in range(tasks)]
    pi_loss = torch.stack([pair[0] for pair in losses]).mean()
    alpha_loss = torch.stack([pair[1] for pair in losses]).mean()
    agent.actor_optimizer.zero_grad(set_to_none=True)
    (pi_loss + alpha_loss if cfg.learn_temperature else pi_loss).backward()
    agent.actor_optimizer.step()
    soft_update_(agent.target_critic, agent.critic, cfg.tau)


def gradient_steps_per_second(agent: PEARL, steps: int, loop_over_tasks: bool, seed: int) -> float:
    cfg = agent.config
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(cfg.num_train_tasks, (cfg.meta_batch_size,), generator=generator)
        batch = agent.replay.sample(ids, cfg.batch_size, generator)
        context = (agent._context(agent.encoder_replay.sample(ids, cfg.embedding_batch_size, generator))
                   if agent.encoder_replay is not None else None)
        (looped_step if loop_over_tasks else type(agent).gradient_step)(agent, ids, batch, context, generator)
    return steps / (time.perf_counter() - start)


def collection_steps_per_second(agent: PEARL, steps: int, posterior: bool) -> float:
    ids = torch.arange(agent.config.num_tasks_sample) % agent.config.num_train_tasks
    start = time.perf_counter()
    _, task_of, _ = agent.collect(agent.envs, ids, steps, posterior, torch.Generator().manual_seed(0), seed=0)
    return len(task_of) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="metarl/Navigation2D-v0")
    parser.add_argument("--size", choices=sorted(SIZES), default="reference")
    parser.add_argument("--steps", type=int, default=30, help="gradient steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating batched/loop rounds")
    parser.add_argument("--collect-steps", type=int, default=200, help="env steps per task per collection")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict = {"env": args.env, "size": args.size, "threads": torch.get_num_threads(),
                    "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "agents": {}}
    for agent_type in (PEARL, Oracle):
        config = PEARLConfig(**SIZES[args.size], num_train_tasks=32, num_initial_steps=200, num_tasks_sample=8,
                             num_steps_prior=0, num_extra_rl_steps_posterior=0, gradient_steps=0,
                             replay_capacity=10_000)
        agent = agent_type(args.env, config)
        agent.train_iteration(0)  # fills every task's buffers
        gradient_step = {"batched": [], "loop": []}
        for repeat in range(args.repeats):
            for mode in ("batched", "loop"):
                rate = gradient_steps_per_second(agent, args.steps, mode == "loop", seed=repeat)
                gradient_step[mode].append(rate)
        batched, loop = statistics.median(gradient_step["batched"]), statistics.median(gradient_step["loop"])
        result["agents"][agent.name] = {
            "meta_batch_size": config.meta_batch_size, "batch_size": config.batch_size,
            "gradient_steps_per_s_batched": round(batched, 2),
            "gradient_steps_per_s_loop_over_tasks": round(loop, 2),
            "batched_speedup": round(batched / loop, 2),
            "collect_env_steps_per_s_prior": round(collection_steps_per_second(agent, args.collect_steps, False), 1),
            "collect_env_steps_per_s_posterior": round(
                collection_steps_per_second(agent, args.collect_steps, agent.encoder is not None), 1),
            "collect_num_envs": config.num_tasks_sample,
        }
        agent.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
