"""Task distributions: Gymnasium task environments and few-shot supervised task sources.

Importing this package registers every environment under ``metarl/<Name>-v0`` (see :mod:`.registration`).
:mod:`.references` holds the reference policies of the discrete tasks (Gittins indices, Thompson sampling, UCB1,
PSRL, OPSRL, UCRL2, BEB, ...), the figures RL² is measured against.
"""

from . import references
from .base import SPLITS, TaskEnvMixin, TaskError, checkerboard_uniform, is_task_env
from .registration import ENVIRONMENTS, register_all

register_all()

__all__ = ["SPLITS", "TaskError", "TaskEnvMixin", "checkerboard_uniform", "is_task_env", "ENVIRONMENTS", "references"]
