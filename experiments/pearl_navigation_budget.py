"""How many iterations of the 2D-navigation preset PEARL needs before its posterior episodes beat its prior episode.

For each seed, trains PEARL with ``experiments/presets/pearl_navigation.yaml`` (one torch thread) and, at each
checkpoint iteration, meta-tests it on 20 held-out goals (test split, task seed 123, meta-test seed 0, three
episodes: prior, then two posterior episodes); prints one JSON line per (seed, iteration) with the mean return per
episode and the margin ``mean(posterior episodes) - prior episode``. ``tests/test_pearl.py``'s learning test uses
the budget this shows to be enough for every seed tried::

    .venv/bin/python experiments/pearl_navigation_budget.py --seeds 0 1 2 --at 20 35 50
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from metarl.agents.pearl import PEARL, PEARLConfig
from metarl.core.config import config_from_dict

PRESET = Path(__file__).resolve().parent / "presets" / "pearl_navigation.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--at", type=int, nargs="+", default=[20, 35, 50], help="iterations to meta-test at")
    args = parser.parse_args()
    torch.set_num_threads(1)
    values = yaml.safe_load(PRESET.read_text())
    values.pop("env", None)
    for seed in args.seeds:
        agent = PEARL("metarl/Navigation2D-v0", config_from_dict(PEARLConfig, {**values, "seed": seed}))
        try:
            for i in range(max(args.at)):
                agent.train_iteration(i)
                if i + 1 in args.at:
                    tasks = agent.task_env.sample_tasks(20, split="test", seed=123)
                    returns = agent.meta_test(tasks, 3, seed=0).mean(0)
                    print(json.dumps({"seed": seed, "iterations": i + 1, "returns": [round(float(r), 2)
                                                                                        for r in returns],
                                      "margin": round(float(returns[1:].mean() - returns[0]), 2)}), flush=True)
        finally:
            agent.close()


if __name__ == "__main__":
    main()
