"""The soak's timeline (pure): a warm-up, a baseline, then one phase per component killed.

    warm-up | baseline | kill ztunnel-node-1 ... | kill node-agent-node-1 ... | kill controlplane ...

Load runs through every phase. A kill phase starts with SIGKILL to the component, waits until it is
back (a new pid, running; ztunnel also ready on 15021) and the loads are served again, then keeps
steady load until the phase's planned end, and at least `MIN_STEADY_S` after the recovery. The
order is the one a lab recovers from today: a restarted ztunnel fetches its certificate and view
from the control plane, so the control plane is killed last.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.components import CONTROLPLANE, node_agent_name, ztunnel_name

SERVER_NODE = "node-1"  # the killed node components are the server side's: traffic crosses into them
KILL_ORDER = (ztunnel_name(SERVER_NODE), node_agent_name(SERVER_NODE), CONTROLPLANE)
# The soak's timeline (lab up and down not counted). The default leaves room within the issue's
# 10 minutes for lab up, lab down and recoveries slower than planned; --quick is for iterating.
DEFAULT_DURATION_S = 420.0
QUICK_DURATION_S = 90.0
MIN_DURATION_S = 60.0  # below this a phase is too short to see a recovery and a steady stretch after it
MAX_DURATION_S = 480.0
WARMUP_SHARE = 0.1  # of the duration: the first connections, certificates, HBONE pool
MIN_WARMUP_S = 10.0
# A kill must be recovered from within this long (component back, ready, and both loads served
# again), or the soak fails: a supervised restart takes about a second plus its backoff (0.5 s
# after a healthy run), ztunnel's certificate and view a few more.
RECOVERY_BOUND_S = 30.0
# Steady load kept after a recovery before the next kill, even when the recovery ran past the
# phase's planned end: the drift samples and the next failure window need a quiet start.
MIN_STEADY_S = 10.0


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float  # planned length, a kill phase's recovery included
    kill: str | None = None  # the lab component SIGKILLed at the phase's start


def plan(duration: float = DEFAULT_DURATION_S, kills: tuple[str, ...] = KILL_ORDER) -> tuple[Phase, ...]:
    """The phases for a soak of `duration` seconds: the warm-up, then the baseline and each kill phase
    with an equal share of the rest."""
    if not MIN_DURATION_S <= duration <= MAX_DURATION_S:
        raise ValueError(f"a soak of {duration:g} s: the duration must be within {MIN_DURATION_S:g}-"
                         f"{MAX_DURATION_S:g} s")
    if not kills or len(set(kills)) != len(kills):
        raise ValueError(f"kills must name each component once, not {kills!r}")
    warmup = max(MIN_WARMUP_S, duration * WARMUP_SHARE)
    share = (duration - warmup) / (1 + len(kills))
    return (Phase("warm-up", warmup), Phase("baseline", share),
            *(Phase(f"kill {component}", share, kill=component) for component in kills))


def worst_case_seconds(phases: tuple[Phase, ...]) -> float:
    """How long the timeline can run when every recovery takes its whole bound: what the loads'
    own time bound must cover."""
    return sum(max(p.seconds, RECOVERY_BOUND_S + MIN_STEADY_S) if p.kill else p.seconds for p in phases)
