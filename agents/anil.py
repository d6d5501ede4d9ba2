"""ANIL (Almost No Inner Loop): MAML that adapts only the network's head.

Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of
MAML", ICLR 2020.

Spec: as MAML, but the inner loop updates only the final layer (the "head"); the body is shared by all tasks and
learned in the outer loop only. The head is :func:`metarl.core.networks.head_parameter_names` (an
:class:`~metarl.core.networks.MLP`'s last linear layer, :class:`~metarl.core.networks.Conv4`'s ``head``), the same
subset MAML-TRPO's ``adapt_head_only`` adapts.
"""

from __future__ import annotations

from metarl.core.networks import head_parameter_names

from .maml import MAML


class ANIL(MAML):
    """MAML with the inner loop restricted to the head."""

    name = "anil"

    # ALGO LOGIC: only the head adapts
    def adapt_keys(self) -> list[str]:
        return head_parameter_names(self.model)
