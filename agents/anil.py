"""ANIL (Almost No Inner Loop): MAML that adapts only the network's head.

Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness of
MAML", ICLR 2020.

Spec: as MAML, but the inner loop updates only the final layer (the "head"); the body is shared by all tasks and
learned in the outer loop only. For an :class:`~metarl.core.networks.MLP` the head is its last linear layer; for
:class:`~metarl.core.networks.Conv4` it is ``head``.
"""

from __future__ import annotations

from metarl.core.networks import MLP, head_parameter_names

from .maml import MAML


class ANIL(MAML):
    """MAML with the inner loop restricted to the head."""

    name = "anil"

    def adapt_keys(self) -> list[str]:
        if isinstance(self.model, MLP):
            last = self.model.linear_names[-1]
            return [f"{last}.weight", f"{last}.bias"]
        return head_parameter_names(self.model)
