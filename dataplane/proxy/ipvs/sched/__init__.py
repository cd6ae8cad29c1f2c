"""The kernel's IPVS schedulers, one module per family, by ipvsadm name (`-s NAME`)."""

from __future__ import annotations

from collections.abc import Callable

from dataplane.proxy.ipvs.sched.base import Flow, Scheduler
from dataplane.proxy.ipvs.sched.hashing_sched import DestinationHash, SourceHash
from dataplane.proxy.ipvs.sched.leastconn import (LeastConnection, NeverQueue, ShortestExpectedDelay,
                                                  WeightedLeastConnection)
from dataplane.proxy.ipvs.sched.locality import LocalityLeastConnection, LocalityLeastConnectionReplicated
from dataplane.proxy.ipvs.sched.maglev import Maglev
from dataplane.proxy.ipvs.sched.rr import RoundRobin
from dataplane.proxy.ipvs.sched.wrr import WeightedRoundRobin

SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "rr": RoundRobin,
    "wrr": WeightedRoundRobin,
    "lc": LeastConnection,
    "wlc": WeightedLeastConnection,
    "sed": ShortestExpectedDelay,
    "nq": NeverQueue,
    "sh": SourceHash,
    "dh": DestinationHash,
    "mh": Maglev,
    "lblc": LocalityLeastConnection,
    "lblcr": LocalityLeastConnectionReplicated,
}
# in the kernel but not modelled here
NOT_MODELLED = ("fo", "ovf", "twos")


def make_scheduler(name: str) -> Scheduler:
    """A fresh scheduler instance; unknown names get the list of the ones we have."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        hint = " (in the kernel, not modelled here)" if name in NOT_MODELLED else ""
        raise ValueError(f"unknown IPVS scheduler {name!r}{hint}; "
                         f"choose one of {', '.join(SCHEDULERS)}") from None


__all__ = ["Flow", "SCHEDULERS", "Scheduler", "make_scheduler"]
