"""The one registry: algorithm name -> class. Name == module == CLI choice."""

from __future__ import annotations

from baselines.adpsgd import ADPSGD
from baselines.allreduce import AllReduceSGD
from baselines.choco import Choco
from baselines.dpsgd import DPSGD
from baselines.local_sgd import LocalSGD
from baselines.sgp import SGP
from bench.core.protocol import Algorithm
from bench.swarm import SwarmSGD

ALGORITHMS: dict[str, type[Algorithm]] = {
    "allreduce": AllReduceSGD,
    "local_sgd": LocalSGD,
    "dpsgd": DPSGD,
    "adpsgd": ADPSGD,
    "swarm": SwarmSGD,
    "choco": Choco,
    "sgp": SGP,
}
