"""A causal Transformer policy over a whole trial, with a key/value cache for acting one step at a time.

The in-context alternative to RL²'s GRU (:class:`~metarl.core.recurrent.RecurrentPolicy`), with the same interface
(:class:`~metarl.core.recurrent.TrialPolicy`), so trial collection and the PPO minibatch loss run either unchanged.

Spec
    * **Tokens.** One token per step of the trial: the step's input (observation, previous action, previous
      reward, done flag: :class:`metarl.core.trials.TrialInputs`) through a linear embedding, plus an absolute
      position over the *whole trial* (step 0 … ``context - 1``, not restarted at episode boundaries, so the
      policy can tell episodes apart by the done flags and still know how far into the trial it is): ``learned``
      (an embedding per position) or ``sinusoidal`` (Vaswani et al. 2017, fixed).
    * **Blocks.** ``layers`` pre-LayerNorm blocks (Radford et al. 2019, "GPT-2"): ``x + Attn(LN(x))`` then
      ``x + MLP(LN(x))``, multi-head causal self-attention with ``heads`` heads of ``d_model / heads`` dimensions
      (softmax(q kᵀ / √d_head) v, step t attends over steps 0 … t of its trial), MLP ``d_model → 4·d_model → d_model``
      with GELU; a final LayerNorm gives the features, on which sit the linear policy and value heads. No dropout
      (PPO's ratio needs the same network at acting and at training).
    * **Acting.** ``initial_state(batch)`` is an empty :class:`KeyValueCache` (per layer, keys and values of
      ``context`` positions, preallocated). ``forward(x [B, 1, in], cache)`` embeds the new step at position
      ``cache.length``, writes its keys and values into the cache and attends over the cached ones: the cost of a
      step is the projections and MLP of one token plus a dot product with each cached key, never the whole
      context again (attention is one fused ``scaled_dot_product_attention`` call: no score matrix is built, and
      the one-token step needs no mask). A trial longer than ``context`` steps is refused (``ValueError``), as are
      fewer than one layer, head or context step, and heads that do not divide ``d_model``.
    * **Training.** ``forward(inputs [B, T, in])`` (no state) is one causal pass over the whole trial from its
      first step, as the GRU recomputes from a zero hidden state; it equals the cached step-by-step outputs up to
      floating-point rounding. Padded steps after a trial's end (lockstep collection) come after all its real
      steps, so the causal mask keeps them out of every real step's output.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from .config import ConfigError, check_choice, check_fields, check_int
from .recurrent import RecurrentPolicy, TrialPolicy

POSITIONS = ("learned", "sinusoidal")
SEQUENCE_MODELS = ("gru", "transformer")


def check_sequence_fields(config) -> None:
    """Validate the sequence-model fields a trial agent's config holds (``sequence_model``, ``hidden_size``,
    ``transformer_layers``/``heads``/``d_model``/``context``/``positions``: RL², the AMAGO-style agent); one-line
    :class:`~metarl.core.config.ConfigError`."""
    check_choice(config.sequence_model, "sequence_model", SEQUENCE_MODELS)
    check_fields(config, ("hidden_size", "transformer_layers", "transformer_heads", "transformer_d_model"),
                 check_int, minimum=1)
    check_int(config.transformer_context, "transformer_context", minimum=1, optional=True)
    check_choice(config.transformer_positions, "transformer_positions", POSITIONS)
    if config.transformer_d_model % config.transformer_heads:
        raise ConfigError(f"transformer_d_model ({config.transformer_d_model}) must be divisible by "
                          f"transformer_heads ({config.transformer_heads})")


def trial_context(config, trial_steps: int | None, env_id: str, agent: str) -> int:
    """The Transformer's context: ``transformer_context``, default the training trial's ``trial_steps``
    (``episodes_per_trial`` x the episode step limit; None when the env sets none). One-line ``ValueError`` when
    neither is known or the context cannot hold a training trial."""
    if trial_steps is None and config.transformer_context is None:
        raise ValueError(f"{env_id} sets no episode step limit: give {agent}'s transformer a transformer_context "
                         "(or a max_episode_steps)")
    context = config.transformer_context or trial_steps
    if trial_steps is not None and context < trial_steps:
        raise ValueError(f"transformer_context ({context}) must be >= the trial's steps ({trial_steps}: "
                         f"episodes_per_trial {config.episodes_per_trial} x {trial_steps // config.episodes_per_trial}"
                         " steps per episode)")
    return context


def make_sequence_model(config, input_size: int, action_size: int, discrete: bool, init_log_std: float,
                        context: int | None) -> TrialPolicy:
    """The trial model a config names: the GRU (``hidden_size``) or the causal Transformer over ``context`` steps
    (from :func:`trial_context`; unused by the GRU)."""
    if config.sequence_model == "gru":
        return RecurrentPolicy(input_size, config.hidden_size, action_size, discrete, init_log_std)
    return TransformerPolicy(input_size, action_size, discrete, init_log_std, layers=config.transformer_layers,
                             heads=config.transformer_heads, d_model=config.transformer_d_model, context=context,
                             positions=config.transformer_positions)


class KeyValueCache:
    """Keys and values of the steps a batch of trials has taken so far, for every layer: ``keys``, ``values``
    ``[layers, B, heads, context, d_head]`` (the first ``length`` positions filled); all trials in lockstep."""

    def __init__(self, layers: int, batch: int, heads: int, context: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.keys = torch.zeros(layers, batch, heads, context, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def context(self) -> int:
        return self.keys.shape[3]


def sinusoidal_positions(context: int, d_model: int) -> torch.Tensor:
    """``[context, d_model]``: sin(p / 10000^(2i/d)) in even columns, cos in odd ones (Vaswani et al. 2017)."""
    position = torch.arange(context, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(context, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table.float()


class CausalBlock(nn.Module):
    """Pre-LayerNorm Transformer block: causal multi-head self-attention, then a GELU MLP, each residual."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.attention_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None, values: torch.Tensor | None,
                offset: int) -> torch.Tensor:
        """``x [B, T, d]`` at positions ``offset … offset + T - 1``; ``keys``/``values`` ``[B, heads, context,
        d_head]``: this layer's cache (written at those positions, attended up to them), or None (``offset`` 0)."""
        batch, steps, d_model = x.shape
        q, k, v = (t.view(batch, steps, self.heads, self.head_dim).transpose(1, 2)
                   for t in self.qkv(self.attention_norm(x)).split(d_model, dim=-1))
        if keys is not None:
            keys[:, :, offset:offset + steps] = k
            values[:, :, offset:offset + steps] = v
            k, v = keys[:, :, :offset + steps], values[:, :, :offset + steps]
        # softmax(q kᵀ / √d_head) v in one fused kernel: no [T, offset + T] score matrix is materialised (the
        # training pass over a 1,000-step trial) and the cached step streams over the keys once
        if steps == 1:  # acting: the one new step attends over every cached step, no mask
            attended = functional.scaled_dot_product_attention(q, k, v)
        elif offset == 0:  # a whole trial (or its first chunk): the square causal mask
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk after cached steps: step offset + i attends over 0 … offset + i
            query_position = torch.arange(offset, offset + steps, device=x.device)[:, None]
            visible = torch.arange(offset + steps, device=x.device)[None, :] <= query_position
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, steps, d_model))
        return x + self.mlp(self.mlp_norm(x))


class TransformerPolicy(TrialPolicy):
    """Causal Transformer over the trial's steps (see the module docstring), linear policy and value heads."""

    def __init__(self, input_size: int, action_size: int, discrete: bool, init_log_std: float, *, layers: int,
                 heads: int, d_model: int, context: int, positions: str = "learned") -> None:
        super().__init__()
        for name, value in (("layers", layers), ("heads", heads), ("d_model", d_model), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        self.layers, self.heads, self.d_model, self.context = layers, heads, d_model, context
        self.embed = nn.Linear(input_size, d_model)
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(context, d_model) * 0.02)
        else:
            self.register_buffer("positions", sinusoidal_positions(context, d_model), persistent=False)
        self.blocks = nn.ModuleList(CausalBlock(d_model, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(d_model)
        self._init_heads(d_model, action_size, discrete, init_log_std)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> KeyValueCache:
        """An empty cache for ``batch`` trials (in the dtype of the parameters)."""
        return KeyValueCache(self.layers, batch, self.heads, self.context, self.d_model // self.heads, device,
                             self.embed.weight.dtype)

    def forward(self, inputs: torch.Tensor, cache: KeyValueCache | None = None):
        """``inputs [B, T, in]`` -> head ``[B, T, A]``, value ``[B, T]``, cache, features ``[B, T, d_model]``.

        No cache: one causal pass over a whole trial from its first step. A cache: ``T`` more steps after the
        ``cache.length`` it holds (written into it; its ``length`` advanced)."""
        offset = 0 if cache is None else cache.length
        steps = inputs.shape[1]
        if offset + steps > self.context:
            raise ValueError(f"a trial of more than {self.context} steps: the Transformer's context is "
                             f"{self.context} (raise transformer_context)")
        x = self.embed(inputs) + self.positions[offset:offset + steps]
        for layer, block in enumerate(self.blocks):
            if cache is None:
                x = block(x, None, None, 0)
            else:
                x = block(x, cache.keys[layer], cache.values[layer], offset)
        if cache is not None:
            cache.length = offset + steps
        features = self.final_norm(x)
        return self.policy_head(features), self.value_head(features).squeeze(-1), cache, features
