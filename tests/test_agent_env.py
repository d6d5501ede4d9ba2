"""The agent plumbing shared by every meta-RL agent (metarl.core.agent_env) and the contract's shared parts."""

from __future__ import annotations

import pytest

from metarl.agents import rl_agent_classes
from metarl.core.config import ConfigError, config_from_dict

SMALL = {
    "maml-trpo": dict(meta_batch_size=2, episodes_per_task=2, max_episode_steps=5, hidden_sizes=[8]),
    "rl2": dict(meta_batch_size=2, episodes_per_trial=2, hidden_size=8, num_minibatches=1, max_episode_steps=5),
    "varibad": dict(meta_batch_size=2, episodes_per_trial=2, encoder_hidden_size=8, decoder_hidden_sizes=[8],
                    policy_hidden_sizes=[8], num_minibatches=1, max_episode_steps=5),
    "pearl": dict(num_train_tasks=2, hidden_sizes=[8], encoder_hidden_sizes=[8], meta_batch_size=2, batch_size=4,
                  embedding_batch_size=2, num_initial_steps=5, num_tasks_sample=1, num_steps_prior=5,
                  num_extra_rl_steps_posterior=0, gradient_steps=1, max_episode_steps=5, replay_capacity=20),
}
SMALL["oracle"] = SMALL["pearl"]
SMALL["amago"] = dict(meta_batch_size=2, episodes_per_trial=2, transformer_d_model=8, transformer_heads=2,
                      hidden_sizes=[8], batch_size=2, gradient_steps=1, replay_capacity=4, max_episode_steps=5)
NAV = "metarl/Navigation2D-v0"


@pytest.mark.api
@pytest.mark.parametrize("name", ["maml-trpo", "rl2", "varibad", "pearl", "amago", "oracle", "multitask",
                                  "scratch"])
def test_a_keyword_the_env_does_not_take_is_one_line_naming_env_and_keyword(name):
    agent_type, config_type = rl_agent_classes(name)
    with pytest.raises(ValueError, match="cannot make environment 'metarl/Navigation2D-v0'") as info:
        agent_type(NAV, config_type(**SMALL.get(name, {}), env_kwargs={"bogus": 1}))
    assert "'bogus'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.api
@pytest.mark.parametrize("name, overrides", [
    ("maml-trpo", {"meta_batch_size": 10**12}), ("rl2", {"meta_batch_size": 10**12}),
    ("varibad", {"meta_batch_size": 10**12}),
    ("pearl", {"num_train_tasks": 10**12}),
])
def test_a_request_that_cannot_fit_in_memory_is_refused_before_anything_is_built(name, overrides):
    agent_type, config_type = rl_agent_classes(name)
    with pytest.raises(ValueError, match="need at least .* of memory") as info:
        agent_type(NAV, config_type(**{**SMALL[name], **overrides}))
    assert "\n" not in str(info.value)


@pytest.mark.api
@pytest.mark.parametrize("name, expected", [
    ("maml-trpo", 3), ("rl2", 1), ("varibad", 1), ("pearl", 1), ("amago", 1), ("oracle", 1), ("multitask", 1),
    ("scratch", 1),
])
def test_episodes_per_stage_says_how_much_adaptation_data_each_column_has(name, expected):
    agent_type, config_type = rl_agent_classes(name)
    overrides = {"adapt_episodes": 3} if name == "maml-trpo" else {}
    agent = agent_type(NAV, config_type(**{**SMALL.get(name, {}), **overrides}))
    try:
        assert agent.episodes_per_stage == expected
        with pytest.raises(AttributeError):
            agent.episodes_per_stage = 2  # read-only
    finally:
        agent.close()


@pytest.mark.api
@pytest.mark.parametrize("name", ["maml-trpo", "pearl", "oracle"])
def test_an_old_preset_key_of_a_renamed_field_names_the_new_one(name):
    _, config_type = rl_agent_classes(name)
    with pytest.raises(ConfigError, match="'discount' is now called 'gamma'") as info:
        config_from_dict(config_type, {"discount": 0.9}, where="old.yaml")
    assert "\n" not in str(info.value)
    assert config_from_dict(config_type, {"gamma": 0.9}).gamma == 0.9


@pytest.mark.api
def test_the_run_loop_refuses_an_old_key_naming_the_new_one(tmp_path):
    from metarl.training import make_run_config

    preset = tmp_path / "old.yaml"
    preset.write_text("discount: 0.9\n")
    with pytest.raises(ValueError, match="now called 'gamma'"):
        make_run_config("maml-trpo", env=NAV, preset=str(preset))
    with pytest.raises(ValueError, match="now called 'gamma'"):
        make_run_config("maml-trpo", env=NAV, discount=0.9)
