"""Fuzz targets for every parser that reads the network or the disk (issue 18).

Each target feeds a parser inputs a peer (or a file) could hold and checks only what the parser's
docstring promises: which errors it may raise, and the bounds it keeps. They run under one of two
Hypothesis settings profiles, chosen by the HYPOTHESIS_PROFILE environment variable:

- ``ci`` (the default, what ``make test`` runs): each target's own small number of examples,
  derandomized and without the example database, so that a run is the same every time and the
  whole of tests/fuzz/ takes about half a minute;
- ``fuzz`` (``make fuzz``): FUZZ_SCALE times as many examples, at random, failures kept in the
  example database (.hypothesis/) so that the next run tries them first.

The profiles are applied per target through ``fuzz_settings``, never loaded globally: the rest of
the suite keeps its own Hypothesis settings even when it runs in the same session.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_VARIABLE = "HYPOTHESIS_PROFILE"
CI_PROFILE = "ci"
FUZZ_PROFILE = "fuzz"
# ``make fuzz`` tries this many times the examples of ``make test``: the CI profile takes ~25 s for
# all targets on a 2-core machine, so the fuzz profile takes ~7 minutes idle and ~10 while others
# share it (20 times took 12.7 minutes so).
FUZZ_SCALE = 15

# Inputs are built by several draws and some targets use a socket per example: slow generation and
# large inputs are what these targets are for, not a problem with the strategies.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

settings.register_profile(CI_PROFILE, deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_SLOW_IS_FINE)
settings.register_profile(FUZZ_PROFILE, deadline=None, derandomize=False, print_blob=True,
                          suppress_health_check=_SLOW_IS_FINE)


def profile_name() -> str:
    """The profile HYPOTHESIS_PROFILE names (``ci`` when unset); ValueError naming the choices otherwise."""
    name = os.environ.get(PROFILE_VARIABLE, CI_PROFILE) or CI_PROFILE
    if name not in (CI_PROFILE, FUZZ_PROFILE):
        raise ValueError(f"{PROFILE_VARIABLE}={name!r}: the fuzz targets know the profiles "
                         f"{CI_PROFILE!r} and {FUZZ_PROFILE!r}")
    return name


def fuzz_settings(examples: int) -> settings:
    """Settings for one target: ``examples`` under the CI profile, FUZZ_SCALE times as many under fuzz."""
    name = profile_name()
    scale = FUZZ_SCALE if name == FUZZ_PROFILE else 1
    return settings(settings.get_profile(name), max_examples=examples * scale)
