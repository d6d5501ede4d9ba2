"""metarl: meta-learning for PyTorch on one inner/outer-loop core.

Importing metarl sets ``THP_MEM_ALLOC_ENABLE=1`` unless the environment already sets it: PyTorch's CPU allocator
then asks the kernel for transparent huge pages on every buffer of 2 MB or more (torch >= 2.2, read at the first such
allocation). Meta-learners allocate and free buffers of tens of MB in every inner and outer step; with 4 KB pages
each fresh buffer costs thousands of page faults, with huge pages a few (``experiments/bench_maml_trpo.py
--compare-huge-pages`` measures both). ``THP_MEM_ALLOC_ENABLE=0`` turns it off.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
