"""The one registry: algorithm name -> class. Name == module == CLI choice."""

from __future__ import annotations

from baselines.adpsgd import ADPSGD
from baselines.adsaga import ADSAGA
from baselines.allreduce import AllReduceSGD
from baselines.choco import Choco
from baselines.d2 import D2
from baselines.decentlam import DecentLaM
from baselines.dpsgd import DPSGD
from baselines.gradient_tracking import GradientTracking
from baselines.lead import LEAD
from baselines.local_sgd import LocalSGD
from baselines.minibatch_sgd import MinibatchSGD
from baselines.osgp import OSGP
from baselines.overlap_local_sgd import OverlapLocalSGD
from baselines.powersgd import PowerSGD
from baselines.qg_dsgdm import QGDSGDm
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
    "osgp": OSGP,
    "decentlam": DecentLaM,
    "minibatch_sgd": MinibatchSGD,
    "overlap_local_sgd": OverlapLocalSGD,
    "d2": D2,
    "gradient_tracking": GradientTracking,
    "lead": LEAD,
    "qg_dsgdm": QGDSGDm,
    "powersgd": PowerSGD,
    "adsaga": ADSAGA,
}


def runs_on(name: str, model: str, compute: str = "real") -> bool:
    """Whether algorithm `name` runs on `--model` `model` with `--compute` `compute` (`--algo all` takes those that
    do): a cost-only simulation's stand-in has none of the model's tensors (`Algorithm.needs_tensors`)."""
    algo = ALGORITHMS[name]
    return (not algo.models or model in algo.models) and not (compute == "cost-only" and algo.needs_tensors)
