"""Small dedicated thread pools for blocking work of the resource steps (INTEGRATION.md section 10).

The default executor of ``asyncio.to_thread`` is shared by everything in the
daemon; a call that hangs there (a ``save_dir`` on a filesystem that stopped
answering, DRBD's I/O frozen during a fence) holds one of its threads for
ever, and enough of them would queue the floating IP's add behind the gate
check it was made under. So each kind of work has its own pool:

- ``IP``: netlink reads and address changes, ARP/NDP sockets;
- ``SAVE_DIR``: everything that touches ``vms.save_dir`` (images, metadata);
- ``OBSERVE``: the runtime's mount and address observations;
- ``STATE``: the runtime's fsynced state files (the policy's Durable before
  a decision's actions, fail counts), one at a time, in order.

Invariant: a pool is used only for its kind of work, so a hang in one never
delays another kind. Pools belong to the event loop that first uses them
(like the default executor, their threads start from the loop's thread and
so share its namespaces) and are shut down when that loop is collected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import weakref
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_SIZES = {"ip": 2, "save_dir": 4, "observe": 2, "state": 1}
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, concurrent.futures.ThreadPoolExecutor]] = \
    weakref.WeakKeyDictionary()

IP, SAVE_DIR, OBSERVE, STATE = "ip", "save_dir", "observe", "state"


def _shutdown(pools: dict[str, concurrent.futures.ThreadPoolExecutor]) -> None:
    for p in pools.values():
        p.shutdown(wait=False, cancel_futures=True)


def pool(loop: asyncio.AbstractEventLoop, kind: str) -> concurrent.futures.ThreadPoolExecutor:
    pools = _pools.get(loop)
    if pools is None:
        pools = _pools[loop] = {}
        weakref.finalize(loop, _shutdown, pools)
    p = pools.get(kind)
    if p is None:
        p = pools[kind] = concurrent.futures.ThreadPoolExecutor(_SIZES[kind], thread_name_prefix=f"clever-{kind}")
    return p


async def run_in(kind: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``asyncio.to_thread`` on the pool of ``kind`` of the running loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool(loop, kind), functools.partial(fn, *args, **kwargs))
