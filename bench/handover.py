"""Handover benchmark: ``clevervm migrate`` on the two-node lab, total and per phase.

Runs the real daemons on ``sim.nodelab`` (as root), VMs on libvirt's test driver:

    .venv/bin/python bench/handover.py              # 10 handovers
    .venv/bin/python bench/handover.py --runs 1     # a quick check

One run: ``clevervm migrate`` on the active node; it saves the VMs to the
replicated filesystem, removes the IP, unmounts, demotes DRBD and grants;
the peer acknowledges, promotes, mounts, adds the IP and restores the saved
VMs. Then ``clevervm unmigrate`` lifts the ban (nothing moves: stickiness)
and the next run migrates back.

Per phase, from both nodes' ``clevervm history --json`` timelines
(``handover_out`` on the old active, ``handover_in`` on the new one) and the
transition log:
- decide: the migrate command started -> the old active decided to hand over;
- save, ip_down, umount, demote: the steps of the old active's stop sequence;
- grant: the stop sequence ended -> the new active acknowledged the grant;
- promote, mount, ip_up, restore: the steps of the new active's start sequence;
- total: the migrate command started -> the last managed VM active on the new
  node (libvirt's event in the transition log);
- beyond_save_restore: total - save - restore (DESIGN section 12: <= 0.5 s).

With the test driver, save and restore write and read a few bytes, so nearly
all of the total is the cluster's own overhead. The baseline in the same
process is a save + restore of one domain straight through libvirt on the
active node's libvirtd (no cluster involved): the ratio shows how much the
handover adds to what libvirt itself costs here.

The tiny QEMU guest (``sim/guest.py``, TCG, 128 MiB) is measured on its own
(``--no-qemu`` skips it): a private libvirtd with the QEMU driver saves and
restores the running guest ``--runs`` times (the same libvirt calls as the
resource group's VM step), checking each time that the guest carries on
counting (its memory survived). The lab's nodes serve only the test driver,
so a QEMU handover is not run end to end here: the script prints the
composed estimate, the test-driver handover's overhead beyond save + restore
plus QEMU's save + restore, and labels it as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import labbench as lb

from clever_cluster.sim import guest as tiny
from clever_cluster.sim.libvirt_nodes import domain_uuid
from clever_cluster.sim.libvirtd import PrivateLibvirtd

OVERRIDES: dict[str, dict[str, Any]] = {"gateway": {"dampen": "1s"}}
PHASES = ("decide", "save", "ip_down", "umount", "demote", "grant", "promote", "mount", "ip_up", "restore", "total",
          "beyond_save_restore")


def one_run(lab: lb.NodeLab, n: int) -> dict[str, Any]:
    old, new = lb.steady(lab)
    t_mono = lab.mark(f"run {n}: migrate from {old.name}")
    t_wall = time.time()
    got = lb.cli_json(old, "migrate")
    assert got["preflight"] == [], got
    lb.wait_for(lambda: lb.holds_all(lab, new.name), 120, f"{new.name} to hold everything", interval=0.05)
    end = lb.last_vm_active(lab, new.name, t_mono)
    assert end is not None, "no VM went active on the new node"
    out = lb.timeline(old, "handover_out", t_wall - 1.0)
    into = lb.timeline(new, "handover_in", t_wall - 1.0)
    decided, ack = lb.mark(out, "handover_decided"), lb.mark(into, "acknowledged")
    assert decided is not None and ack is not None, (out, into)
    stops = [s for s in out["sequences"] if s["kind"] == "stop" and s["outcome"] == "succeeded"]
    assert stops, out
    stop_end_wall = float(decided["at"]) + (float(lb.mark(out, "demote_started")["after_seconds"])  # type: ignore[index]
                                            + float(stops[-1]["seconds"]))
    s: dict[str, Any] = {
        "from": old.name, "to": new.name,
        "decide": float(decided["at"]) - t_wall,
        "save": lb.step_seconds(out, "vms", "stop"), "ip_down": lb.step_seconds(out, "ip", "stop"),
        "umount": lb.step_seconds(out, "filesystem", "stop"), "demote": lb.step_seconds(out, "drbd", "stop"),
        "grant": float(ack["at"]) - stop_end_wall,
        "promote": lb.step_seconds(into, "drbd", "start"), "mount": lb.step_seconds(into, "filesystem", "start"),
        "ip_up": lb.step_seconds(into, "ip", "start"), "restore": lb.step_seconds(into, "vms", "start"),
        "total": end - t_mono,
    }
    s["beyond_save_restore"] = s["total"] - (s["save"] or 0.0) - (s["restore"] or 0.0)
    notes = [p["detail"] for q in into["sequences"] for p in q["steps"] if p["step"] == "vms"]
    s["restored"] = all("restored from its save image" in d for d in notes[-1:]) if notes else False
    lb.cli_json(new, "unmigrate")
    return s


def libvirt_baseline(node: lb.LabNode, runs: int) -> dict[str, Any]:
    """Save + restore of the unmanaged domain ``tools`` through the node's libvirtd, no cluster involved."""
    times = []
    path = f"/tmp/cc-bench-handover-{node.name}.save"
    for _ in range(runs):
        with node.libvirt() as conn:
            dom = conn.lookupByName("tools")
            t0 = time.monotonic()
            dom.save(path)
            conn.restore(path)
            times.append(time.monotonic() - t0)
    Path(path).unlink(missing_ok=True)
    return lb.summary(times)


def qemu_save_restore(work: Path, runs: int) -> dict[str, Any]:
    """Save + restore of the running tiny QEMU guest through a private libvirtd, ``runs`` times."""
    import libvirt

    image = tiny.build_guest()
    console = work / "qemu-console.log"
    saves, restores = [], []
    with PrivateLibvirtd(work / "qemu-libvirtd") as lvd:
        conn = libvirt.open(lvd.qemu_uri)
        try:
            dom = conn.defineXML(tiny.domain_xml("benchq", domain_uuid("benchq"), image, console))
            dom.create()
            lb.wait_for(lambda: len(tiny.ticks(console)) >= 2, 120, "the QEMU guest to tick twice", interval=0.2)
            path = work / "benchq.save"
            for k in range(1, runs + 1):
                before = tiny.ticks(console)
                t0 = time.monotonic()
                dom.save(str(path))
                t1 = time.monotonic()
                conn.restore(str(path))
                t2 = time.monotonic()
                saves.append(t1 - t0)
                restores.append(t2 - t1)
                dom = conn.lookupByName("benchq")
                lb.wait_for(lambda b=before: len(tiny.ticks(console)) > len(b), 60, "the restored guest to tick", interval=0.1)
                print(f"  QEMU run {k}/{runs}: save {saves[-1]:.3f} s, restore {restores[-1]:.3f} s "
                      f"({path.stat().st_size / 2**20:.1f} MiB image)", file=sys.stderr)
            counted = tiny.ticks(console)
            assert counted == list(range(1, len(counted) + 1)) and tiny.boots(console) == 1, "the guest restarted"
            size = path.stat().st_size
            dom.destroy()
            dom.undefine()
        finally:
            conn.close()
    return {"save": lb.summary(saves), "restore": lb.summary(restores),
            "save_plus_restore": lb.summary([a + b for a, b in zip(saves, restores, strict=True)]),
            "image_mib": size / 2**20, "memory_mib": 128}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="handovers (default 10)")
    ap.add_argument("--no-qemu", action="store_true", help="skip the tiny QEMU guest's save + restore")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    work = lb.setup("handover")
    res: dict[str, Any] = {"command": lb.command(), "machine_before": lb.machine()}
    samples = []
    with lb.lab(work, "testdriver", overrides=OVERRIDES) as lab:
        active, _ = lb.steady(lab)
        res["baseline_libvirt_save_restore"] = libvirt_baseline(active, max(args.runs, 3))
        for n in range(1, args.runs + 1):
            s = one_run(lab, n)
            samples.append(s)
            print(f"  run {n}/{args.runs}: {s['from']} -> {s['to']}, total {s['total']:.3f} s "
                  f"(save {s['save']:.3f}, restore {s['restore']:.3f})", file=sys.stderr)
        lb.steady(lab)
        lab.check()  # never two active, no acknowledged write lost, over every run
    res["machine_after"] = lb.machine()
    res["samples"] = samples
    res["summary"] = {p: lb.summary([float(s[p]) for s in samples if s[p] is not None]) for p in PHASES}
    base = res["baseline_libvirt_save_restore"]["median"]
    res["ratio_total_to_libvirt_save_restore"] = res["summary"]["total"]["median"] / base if base > 0 else None
    print(f"\ncommand: {res['command']}")
    print(f"load average before {res['machine_before']['loadavg']}, after {res['machine_after']['loadavg']}")
    print("| phase | median | p95 | min | max |\n|---|---|---|---|---|")
    for p in PHASES:
        q = res["summary"][p]
        print(f"| {p} | {q['median']:.3f} s | {q['p95']:.3f} | {q['min']:.3f} | {q['max']:.3f} |")
    print(f"restored from save images in every run: {all(s['restored'] for s in samples)}")
    print(f"baseline, libvirt save + restore of one domain on the same libvirtd: {lb.fmt(res['baseline_libvirt_save_restore'])}; "
          f"ratio handover total / baseline: {res['ratio_total_to_libvirt_save_restore']:.1f}")
    if not args.no_qemu:
        print("tiny QEMU guest...", file=sys.stderr)
        q = res["qemu"] = qemu_save_restore(work, args.runs)
        over = res["summary"]["beyond_save_restore"]["median"]
        res["qemu_handover_estimate"] = over + q["save_plus_restore"]["median"]
        print(f"tiny QEMU guest ({q['memory_mib']} MiB, image {q['image_mib']:.1f} MiB): save {lb.fmt(q['save'])}; "
              f"restore {lb.fmt(q['restore'])}; save + restore {lb.fmt(q['save_plus_restore'])}")
        print(f"composed estimate, not measured end to end: a QEMU handover = {over:.3f} s beyond save + restore "
              f"(test driver, above) + {q['save_plus_restore']['median']:.3f} s = {res['qemu_handover_estimate']:.3f} s")
    lb.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
