"""Benchmark RL²'s sequence policies (issue 18, "Speed"): the Transformer's acting cost per step at a context of
100 vs 1,000 steps, with its key/value cache and uncached (re-running the whole context each step, the cost the
cache removes), and RL² trials per second, GRU against Transformer, on 100-pull bandits and on tabular MDPs. Prints
JSON and writes it to ``--out``.

    .venv/bin/python experiments/bench_sequence_policy.py     # -> experiments/out/bench_sequence_policy.json
    .venv/bin/python experiments/bench_sequence_policy.py --batch 8 --repeats 9 --skip-trials

Acting (:class:`metarl.core.sequence.TransformerPolicy` at RL²'s default size: 2 layers, 4 heads, width 64, for
each ``--batch`` size: that many trials in lockstep, ``torch.no_grad`` as collection runs it):

* ``cached_mean_step_ms``: one trial of C steps from an empty cache, one token per call, total time / C;
* ``cached_step_at_context_ms``: one more step when the cache already holds C − 1 steps (the step at context C);
* ``uncached_step_at_context_ms``: the same step computed without a cache, one causal pass over all C steps (what
  acting would cost if each step re-ran the context);
* ratios: context 1,000 over context 100 per step (the target: within 2× with the cache), uncached over cached;
* ``cache_megabytes_read_at_context``: the keys and values a cached step reads (2 · layers · batch · width · C
  float32s), the part of its cost that must grow with C whatever the implementation.

Trials per second (``RL2.train_iteration``: collecting ``meta_batch_size`` trials and the PPO epochs on them):
100-pull bandits with ``experiments/rl2_bandits.py``'s 100-pull settings (k = 5), and tabular MDPs (10 states,
5 actions, horizon 10, trials of 10 episodes) with ``experiments/presets/rl2_tabular_mdp.yaml``; the Transformer at
its default size with the same PPO settings. The GRU is the reference: ``ratio_to_gru`` = Transformer trials/s over
GRU trials/s (``collection_wall_s``: the iteration's collection, wall clock, from its metrics). The two models
alternate iteration by iteration, in one process, one torch thread. Times are CPU seconds of this process
(``time.process_time``), so that the other jobs of a shared machine count less (they still share its caches and
memory bandwidth); every figure is the median over ``--repeats``; only ratios measured in one run are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from metarl.agents.rl2 import RL2, RL2Config
from metarl.core.sequence import TransformerPolicy
from metarl.runs import head_commit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from rl2_bandits import HUNDRED_PULLS  # noqa: E402  (the 100-pull settings of the bandit table)

CONTEXTS = (100, 1000)
clock = time.process_time  # CPU seconds of this process: the other jobs of a shared machine do not count


def acting_costs(batch: int, repeats: int, layers: int, heads: int, d_model: int) -> dict[str, Any]:
    """Milliseconds per step at each context in ``CONTEXTS``, cached and uncached (medians of ``repeats``)."""
    input_size = 10  # a 5-armed bandit's input: observation 1 + previous action 5 + reward + done (+ slack)
    policy = TransformerPolicy(input_size, 5, True, 0.0, layers=layers, heads=heads, d_model=d_model,
                               context=max(CONTEXTS)).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, max(CONTEXTS), input_size, generator=generator)
    rows: dict[str, Any] = {}
    samples: dict[int, dict[str, list[float]]] = {c: {"mean": [], "at": [], "uncached": []} for c in CONTEXTS}
    with torch.no_grad():
        policy(x[:, :10], policy.initial_state(batch))  # warm-up
        for _ in range(repeats):
            for context in CONTEXTS:
                cache = policy.initial_state(batch)
                start = clock()
                for t in range(context):
                    policy(x[:, t:t + 1], cache)
                samples[context]["mean"].append((clock() - start) / context)
                steps = []
                for _ in range(20):  # the step at context C, the cache holding C - 1 steps
                    cache.length = context - 1
                    start = clock()
                    policy(x[:, context - 1:context], cache)
                    steps.append(clock() - start)
                samples[context]["at"].append(statistics.median(steps))
                start = clock()
                policy(x[:, :context])  # no cache: the whole context again for the one new step
                samples[context]["uncached"].append(clock() - start)
    for context in CONTEXTS:
        rows[str(context)] = {
            "cached_mean_step_ms": round(1e3 * statistics.median(samples[context]["mean"]), 4),
            "cached_step_at_context_ms": round(1e3 * statistics.median(samples[context]["at"]), 4),
            "uncached_step_at_context_ms": round(1e3 * statistics.median(samples[context]["uncached"]), 4),
        }
    small, large = (rows[str(c)] for c in CONTEXTS)
    for context in CONTEXTS:
        row = rows[str(context)]
        row["uncached_over_cached_at_context"] = round(row["uncached_step_at_context_ms"]
                                                       / row["cached_step_at_context_ms"], 2)
        # what a cached step must read: every cached key and value of every layer (float32)
        row["cache_megabytes_read_at_context"] = round(2 * layers * batch * d_model * context * 4 / 1e6, 3)
    ratios = {f"{key}_1000_over_100": round(large[key] / small[key], 3)
              for key in ("cached_mean_step_ms", "cached_step_at_context_ms", "uncached_step_at_context_ms")}
    return {"batch": batch, "layers": layers, "heads": heads, "d_model": d_model, "contexts": rows,
            "ratios": ratios, "cached_within_2x": max(ratios["cached_mean_step_ms_1000_over_100"],
                                                      ratios["cached_step_at_context_ms_1000_over_100"]) <= 2.0}


def trial_settings() -> dict[str, tuple[str, dict[str, Any]]]:
    """Env id and RL² fields of each trial-throughput setting."""
    preset = yaml.safe_load((ROOT / "presets" / "rl2_tabular_mdp.yaml").read_text())
    return {"bandit_5x100": ("metarl/BernoulliBandit-v0", dict(HUNDRED_PULLS, env_kwargs={"k": 5},
                                                                 episodes_per_trial=100)),
            "tabular_mdp_10x5_h10_n10": ("metarl/TabularMDP-v0", preset)}


def trials_per_second(repeats: int) -> dict[str, Any]:
    """Median trials per second of ``RL2.train_iteration`` (collection + PPO), GRU and Transformer alternating."""
    table: dict[str, Any] = {}
    for name, (env_id, fields) in trial_settings().items():
        agents = {model: RL2(env_id, RL2Config(seed=0, sequence_model=model, **fields)) for model in ("gru",
                                                                                                     "transformer")}
        times: dict[str, dict[str, list[float]]] = {m: {"total": [], "rollout": []} for m in agents}
        for agent in agents.values():
            agent.train_iteration(0)  # warm-up
        for iteration in range(1, repeats + 1):
            for model, agent in agents.items():
                start = clock()
                metrics = agent.train_iteration(iteration)
                times[model]["total"].append(clock() - start)
                times[model]["rollout"].append(metrics["charts/rollout_seconds"])
        row: dict[str, Any] = {"env": env_id, "meta_batch_size": fields["meta_batch_size"],
                               "steps_per_trial": None, "config": {k: v for k, v in fields.items()}}
        for model, agent in agents.items():
            total, rollout = statistics.median(times[model]["total"]), statistics.median(times[model]["rollout"])
            row[model] = {"trials_per_s": round(agent.config.meta_batch_size / total, 2),
                          "iteration_cpu_s": round(total, 3), "collection_wall_s": round(rollout, 3),
                          "parameters": sum(p.numel() for p in agent.policy.parameters())}
            row["steps_per_trial"] = getattr(agent.policy, "context", row["steps_per_trial"])
            agent.close()
        row["transformer_ratio_to_gru"] = round(row["transformer"]["trials_per_s"] / row["gru"]["trials_per_s"], 3)
        table[name] = row
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64],
                        help="trials in lockstep while acting (1: one trial, as at deployment; 64: RL²'s meta-batch)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per figure (medians)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--skip-trials", action="store_true", help="only the acting costs")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_sequence_policy.json")
    args = parser.parse_args(argv)
    if min(*args.batch, args.repeats, args.layers, args.heads, args.d_model) < 1 or args.d_model % args.heads:
        parser.error("--batch, --repeats, --layers, --heads, --d-model must be >= 1, heads dividing d-model")
    torch.set_num_threads(1)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "bench_sequence_policy", "commit": head_commit(ROOT),
        "command": " ".join([".venv/bin/python", *sys.argv]), "threads": torch.get_num_threads(),
        "repeats": args.repeats, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                             "torch": torch.__version__},
        "acting": {str(batch): acting_costs(batch, args.repeats, args.layers, args.heads, args.d_model)
                   for batch in args.batch},
    }
    if not args.skip_trials:
        result["trials_per_second"] = trials_per_second(args.repeats)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".tmp")
    temporary.write_text(text + "\n")
    temporary.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
