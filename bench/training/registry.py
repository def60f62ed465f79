"""The one registry: algorithm name -> class. Name == module == CLI choice."""

from __future__ import annotations

from baselines.adpsgd import ADPSGD
from baselines.allreduce import AllReduceSGD
from baselines.choco import Choco
from baselines.decentlam import DecentLaM
from baselines.dpsgd import DPSGD
from baselines.local_sgd import LocalSGD
from baselines.minibatch_sgd import MinibatchSGD
from baselines.overlap_local_sgd import OverlapLocalSGD
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
    "decentlam": DecentLaM,
    "minibatch_sgd": MinibatchSGD,
    "overlap_local_sgd": OverlapLocalSGD,
}
