"""metarl: meta-learning for PyTorch on one inner/outer-loop core."""

__version__ = "0.1.0"
