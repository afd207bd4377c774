"""Seeded bugs for the mutation checks of the test suite (issue 3).

A ``Mutations`` value is passed explicitly, by keyword, to
:func:`clever_cluster.policy.step` and to the simulator; the default is
``NO_MUTATIONS`` and no configuration key, environment variable or control
command can produce another value, so production code cannot switch a bug
on (tests/policy/test_mutations.py checks that daemon/ and fencing/ never
name this module).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Mutations:
    drop_s7: bool = False                    # fence without the fresh gateway probe
    accepted_counts_as_off: bool = False     # a device's "command accepted" confirms the fence (simulated coordinator)
    handler_exit3_unreachable: bool = False  # fence-peer exits 3 when the daemon is unreachable
    skip_priority_delay: bool = False        # the standby fences an active peer at once
    restore_stale_image: bool = False        # restore any unconsumed image, whatever its token
    promote_consistent: bool = False         # a Consistent disk counts as UpToDate

    def names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


NO_MUTATIONS = Mutations()
