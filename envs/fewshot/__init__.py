"""Few-shot supervised task sources: ``sample(n, *, split, seed) -> EpisodeBatch``."""
