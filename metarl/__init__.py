"""metarl: meta-learning for PyTorch on one inner/outer-loop core.

Importing metarl (or ``metarl.envs``, ``metarl.agents``) changes no process-wide setting: no environment variable,
allocator option or thread count. The ``metarl`` command turns on what helps a training process, in one place
(:func:`metarl.cli.configure_process`), each with an opt-out.
"""

__version__ = "0.1.0"
