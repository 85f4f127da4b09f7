"""livemig benchmarks: every figure next to a baseline measured in the same run.

Run ``python -m bench all`` (about 10-15 minutes on 2 cores), ``python -m bench all --quick``
(under 2 minutes, what CI runs) or one figure (``python -m bench throughput``). Results go to
``bench/results/`` (JSON per figure, PNG charts); docs/benchmarks.md explains each figure.
"""

from __future__ import annotations
