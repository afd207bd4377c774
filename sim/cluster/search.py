"""Fault schedules: run one, generate random ones, explore short ones
exhaustively, and shrink a failing one to a minimal replayable schedule.

A run: both nodes boot together, the schedule's commands are applied at
their times, at ``heal_at`` every fault is repaired (``heal_all``), and the
service must be back on exactly one node within ``liveness_bound`` virtual
seconds (the bound the fast timings predict, see ``predicted_bound``).
Safety violations are collected by the oracle at every tick.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence

from clever_cluster.policy import NO_MUTATIONS, Mutations, Phase

from .config import FAST_SETTINGS, FAST_TIMING
from .script import Command, apply, heal_all
from .world import World

# One event per kind the issue names, node-specific ones aimed at node1 (the
# node a cold start makes active) except the standby's fence device.
EXHAUSTIVE_ALPHABET: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("power-off", ("node1",)),
    ("crash", ("node1",)),
    ("hang", ("node1", "4")),
    ("cut", ("bond0",)),
    ("cut", ("lan",)),
    ("heal", ()),
    ("gateway-down", ("node1",)),
    ("gateway-down", ("node2",)),
    ("device", ("node2", "1", "fail")),
    ("migrate", ("node1",)),
)

RANDOM_ALPHABET: tuple[tuple[str, tuple[str, ...]], ...] = (
    *[(v, (n,)) for n in ("node1", "node2") for v in ("power-off", "power-on", "crash", "restart", "reboot",
                                                          "gateway-down", "gateway-up", "migrate", "unmigrate",
                                                          "standby", "unstandby")],
    *[("hang", (n, d)) for n in ("node1", "node2") for d in ("2", "5", "12")],
    *[("cut", (ln,)) for ln in ("bond0", "lan")],
    *[("cut", (ln, "from", n)) for ln in ("bond0", "lan") for n in ("node1", "node2")],
    ("heal", ()), ("heal", ("bond0",)), ("heal", ("lan",)),
    ("loss", ("all", "0.3")), ("burst", ("all", "2")),
    *[("device", (n, "1", m)) for n in ("node1", "node2")
      for m in ("ok", "fail", "hang", "unreachable", "slow", "dies_with_node", "wrong_machine", "accept_only")],
    *[("vm-crash", (n, v)) for n in ("node1", "node2") for v in ("vm1", "vm2")],
    ("forcestop", ()), ("forcestart", ()), ("cleanup", ()),
    *[("fail-step", (n, op)) for n in ("node1", "node2") for op in ("drbd_primary", "mount", "ip", "vm_start", "umount", "drbd_secondary")],
    ("proto", ("node2", "6")), ("proto", ("node2", "5")), ("key", ("node2", "k2", "k1")), ("key", ("node1", "k1", "k2")),
)


def predicted_bound(settings: dict[str, float] = FAST_SETTINGS) -> float:
    """Worst case from 'everything healed' to 'service up', from the configured timings."""
    t = FAST_TIMING
    s = settings
    return (t.boot + t.daemon_restart + s["heartbeat_timeout"] + s["silent_peer_grace"] + s["priority_delay"]
            + s["random_delay"] + t.device_timeout + s["retry_backoff_max"] + t.ping_timeout
            + t.seq_step * 2 * 8 + s["gateway_dampen"] + 10 * s["heartbeat_interval"])


@dataclasses.dataclass
class Outcome:
    violations: list[str]
    world: World

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclasses.dataclass(frozen=True)
class RunConfig:
    heal_at: float = 45.0
    bound: float = dataclasses.field(default_factory=predicted_bound)
    mutations: Mutations = NO_MUTATIONS
    liveness: bool = True


def new_world(seed: int, cfg: RunConfig) -> World:
    return World(seed=seed, settings=FAST_SETTINGS, timing=FAST_TIMING, mutations=cfg.mutations)


def run(seed: int, schedule: Sequence[Command], cfg: RunConfig = RunConfig()) -> Outcome:
    w = new_world(seed, cfg)
    pending = sorted(schedule, key=lambda c: c.at)
    i = 0
    while w.t < cfg.heal_at - 1e-9:
        while i < len(pending) and pending[i].at <= w.t + 1e-9:
            apply(w, pending[i])
            i += 1
        w.advance()
    return finish(w, cfg)


def settled(w: World) -> bool:
    """One node runs the whole group and both decide "nothing to do": nothing further can happen."""
    up = w.service_up()
    if up is None:
        return False
    codes = {n.name: n.state.last_code for n in w.nodes.values()}
    other = w._other(up)
    return (codes[up] == "no_action_primary" and codes[other] == "no_action_secondary"
            and all(n.alive and n.seq is None for n in w.nodes.values()))


def finish(w: World, cfg: RunConfig, known_good: set[tuple[object, ...]] | None = None, hold: float = 0.0) -> Outcome:
    """Let the faults ``hold``, heal everything, and check the service comes back within the bound.

    ``known_good``: fingerprints of worlds whose future was already seen to pass (exhaustive
    search: leaves reach the same instants, and many converge to the same world)."""
    seen: list[tuple[object, ...]] = []
    w.run_until(w.t + hold)
    if w.oracle.violations:
        return Outcome([str(v) for v in w.oracle.violations], w)
    heal_all(w)
    end = w.t + cfg.bound
    k = 0
    while w.t < end - 1e-9 and not w.oracle.violations and not settled(w):
        if known_good is not None and k % 3 == 0:
            fp = w.fingerprint()
            if fp in known_good:
                known_good.update(seen)
                return Outcome([], w)
            seen.append(fp)
        k += 1
        w.advance()
    out = [str(v) for v in w.oracle.violations]
    if cfg.liveness and not out:
        up = w.service_up()
        if up is None:
            out.append(f"liveness: service not back {cfg.bound:g}s after every fault healed: {status_line(w)}")
        for n in w.nodes.values():
            if n.alive and n.state.phase is Phase.BLOCKED:
                out.append(f"liveness: {n.name} BLOCKED after every fault healed ({n.state.durable.block})")
    if not out and known_good is not None:
        known_good.update(seen)
    return Outcome(out, w)


def status_line(w: World) -> str:
    parts = []
    for n in w.nodes.values():
        dn = w.drbd.n[n.name]
        parts.append(f"{n.name}[{n.daemon} {n.state.phase} {n.state.last_code} drbd {dn.role}/{dn.conn}/{dn.disk} "
                     f"mounted={n.mounted} ip={n.ip} vms={[v.state.value for v in n.vms.values()]}]")
    return "; ".join(parts)


def random_schedule(rng: random.Random, *, events: int = 6, start: float = 2.0, end: float = 40.0,
                    alphabet: Sequence[tuple[str, tuple[str, ...]]] = RANDOM_ALPHABET) -> list[Command]:
    out = []
    for _ in range(events):
        verb, args = rng.choice(alphabet)
        out.append(Command(float(rng.randint(int(start), int(end))), verb, args))
    return sorted(out, key=lambda c: c.at)


def random_search(seeds: range, cfg: RunConfig = RunConfig(), events: int = 6,
                  alphabet: Sequence[tuple[str, tuple[str, ...]]] = RANDOM_ALPHABET) -> Iterator[tuple[int, list[Command], Outcome]]:
    """Yield every failing (seed, schedule, outcome)."""
    for seed in seeds:
        sched = random_schedule(random.Random(seed), events=events, alphabet=alphabet)
        out = run(seed, sched, cfg)
        if not out.ok:
            yield seed, sched, out


def shrink(seed: int, schedule: list[Command], cfg: RunConfig = RunConfig()) -> list[Command]:
    """Greedy: drop commands one at a time while the run still fails."""
    cur = list(schedule)
    changed = True
    while changed:
        changed = False
        for i in range(len(cur)):
            cand = cur[:i] + cur[i + 1:]
            if not run(seed, cand, cfg).ok:
                cur = cand
                changed = True
                break
    return cur


def report(seed: int, schedule: list[Command], outcome: Outcome, cfg: RunConfig = RunConfig()) -> str:
    small = shrink(seed, schedule, cfg)
    again = run(seed, small, cfg)
    lines = [f"seed {seed}: {outcome.violations[0]}", "minimal replayable schedule (sim.cluster.search.run(seed, parse(...))):"]
    lines += [f"  {c}" for c in small]
    lines.append(f"  -> {again.violations[0] if again.violations else 'passes when shrunk?'}")
    tail = [ln for ln in again.world.log][-25:]
    lines += ["last decisions:"] + [f"  {ln.t:7.2f} {ln.node} {ln.phase:<11} {ln.code} {list(ln.actions)} | {ln.sentence}" for ln in tail]
    return "\n".join(lines)


def exhaustive(depth: int, slot: float = 4.0, cfg: RunConfig = RunConfig(heal_at=0.0),
               alphabet: Sequence[tuple[str, tuple[str, ...]]] = EXHAUSTIVE_ALPHABET,
               warmup: float = 12.0, hold: float = 12.0, first: Sequence[int] | None = None) -> Iterator[tuple[list[Command], Outcome]]:
    """Every sequence of ``depth`` events from ``alphabet``, one per ``slot``, after a warm-up;
    the faults then ``hold`` for a while before everything is healed and liveness is checked.

    Prefixes are shared: the world after each prefix is copied, not replayed. ``first`` limits the
    first event to those alphabet indices (to split the search between processes).
    Yields failing (schedule, outcome) pairs; the count of leaves is len(alphabet)**depth."""
    base = new_world(0, cfg)
    base.run_until(warmup)
    firsts = range(len(alphabet)) if first is None else first
    seen: set[tuple[object, ...]] = set()
    good_tails: set[tuple[object, ...]] = set()
    stats.update(leaves=0, distinct=0, pruned=0)

    def rec(w: World, prefix: list[Command]) -> Iterator[tuple[list[Command], Outcome]]:
        if w.oracle.violations:
            yield prefix, Outcome([str(v) for v in w.oracle.violations], w)
            return
        key = (len(prefix), w.fingerprint())
        if key in seen:
            stats["pruned"] += len(alphabet) ** (depth - len(prefix))   # this subtree was explored from an identical world
            return
        seen.add(key)
        if len(prefix) == depth:
            stats["distinct"] += 1
            out = finish(w, cfg, good_tails, hold=hold)   # the faults last a while before everything is repaired
            if not out.ok:
                yield prefix, out
            return
        for i, (verb, args) in enumerate(alphabet):
            if not prefix and i not in firsts:
                continue
            c = Command(w.t, verb, args)
            w2 = w.clone()
            apply(w2, c)
            w2.run_until(w2.t + slot)
            if len(prefix) + 1 == depth:
                stats["leaves"] += 1
            yield from rec(w2, [*prefix, c])

    yield from rec(base, [])


stats: dict[str, int] = {}


def replayable(schedule: list[Command], slot: float = 4.0, hold: float = 12.0) -> RunConfig:
    """The RunConfig that replays an exhaustive schedule with ``run(0, schedule, cfg)``."""
    last = max((c.at for c in schedule), default=0.0)
    return RunConfig(heal_at=last + slot + hold)


def _run_seed(args: tuple[int, RunConfig, int, tuple[tuple[str, tuple[str, ...]], ...]]) -> tuple[int, list[Command], list[str]] | None:
    seed, cfg, events, alphabet = args
    sched = random_schedule(random.Random(seed), events=events, alphabet=alphabet)
    out = run(seed, sched, cfg)
    return None if out.ok else (seed, sched, out.violations)


def first_failures(seeds: Sequence[int], cfg: RunConfig = RunConfig(), events: int = 6,
                   alphabet: Sequence[tuple[str, tuple[str, ...]]] = RANDOM_ALPHABET, workers: int = 1,
                   limit: int = 3) -> list[tuple[int, list[Command], list[str]]]:
    """Run the seeds (in ``workers`` processes) and return up to ``limit`` failures, lowest seeds first."""
    jobs = [(seed, cfg, events, tuple(alphabet)) for seed in seeds]
    found: list[tuple[int, list[Command], list[str]]] = []
    if workers <= 1:
        for j in jobs:
            r = _run_seed(j)
            if r is not None:
                found.append(r)
                if len(found) >= limit:
                    break
        return found
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for r in pool.imap(_run_seed, jobs, chunksize=200):
            if r is not None:
                found.append(r)
                if len(found) >= limit:
                    pool.terminate()
                    break
    return sorted(found)


def _exhaustive_part(args: tuple[int, Sequence[int], float, float, RunConfig, tuple[tuple[str, tuple[str, ...]], ...]]) -> tuple[list[tuple[list[Command], list[str]]], dict[str, int]]:
    depth, first, slot, hold, cfg, alphabet = args
    bad = []
    for sched, out in exhaustive(depth, slot=slot, cfg=cfg, alphabet=alphabet, hold=hold, first=first):
        bad.append((sched, out.violations))
        if len(bad) >= 3:
            break
    return bad, dict(stats)


def exhaustive_parallel(depth: int, workers: int = 2, slot: float = 4.0, hold: float = 12.0, cfg: RunConfig = RunConfig(heal_at=0.0),
                        alphabet: Sequence[tuple[str, tuple[str, ...]]] = EXHAUSTIVE_ALPHABET) -> tuple[list[tuple[list[Command], list[str]]], dict[str, int]]:
    """``exhaustive`` with the first event split between processes; returns (failures, summed stats)."""
    parts = [list(range(i, len(alphabet), workers)) for i in range(workers)]
    jobs = [(depth, p, slot, hold, cfg, tuple(alphabet)) for p in parts]
    if workers <= 1:
        results = [_exhaustive_part(jobs[0])]
    else:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_exhaustive_part, jobs)
    bad = [b for r in results for b in r[0]]
    total: dict[str, int] = {}
    for _, st in results:
        for k, v in st.items():
            total[k] = total.get(k, 0) + v
    return bad, total

