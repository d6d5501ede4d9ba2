"""Learners, supervised and RL, one readable file each."""
