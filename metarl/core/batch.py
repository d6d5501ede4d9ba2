"""Episode batches: the few-shot unit of data, shaped ``[tasks, shots, ...]`` so learners can ``vmap`` over tasks."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class EpisodeBatch:
    """Support and query sets of ``num_tasks`` tasks.

    ``support_x``: ``[tasks, n_support, *x_shape]``, ``support_y``: ``[tasks, n_support, *y_shape]`` (class indices
    ``0..ways-1`` as ``int64`` for classification, floats for regression); likewise ``query_x``/``query_y``.
    For classification, ``ways`` is the number of classes per task and the support set holds ``shots`` examples of
    each class, in class-major order.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int | None = None
    shots: int | None = None

    def __post_init__(self) -> None:
        n = self.support_x.shape[0]
        for name in ("support_y", "query_x", "query_y"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} tasks, support_x has {n}")
        if self.support_x.shape[1] != self.support_y.shape[1] or self.query_x.shape[1] != self.query_y.shape[1]:
            raise ValueError("x and y must hold the same number of examples per task")

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def nbytes(self) -> int:
        """Bytes of the four tensors."""
        return sum(t.element_size() * t.nelement() for t in (self.support_x, self.support_y, self.query_x,
                                                              self.query_y))

    @property
    def is_classification(self) -> bool:
        return self.ways is not None

    def to(self, device: torch.device | str) -> EpisodeBatch:
        return replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
        )

    def task(self, index: int | slice) -> EpisodeBatch:
        """A batch of the selected task(s), keeping the leading task dimension."""
        sel = slice(index, index + 1) if isinstance(index, int) else index
        return replace(
            self,
            support_x=self.support_x[sel],
            support_y=self.support_y[sel],
            query_x=self.query_x[sel],
            query_y=self.query_y[sel],
        )
