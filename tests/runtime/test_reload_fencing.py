"""A reload that changes fencing: the rebuilt parts are the ones that run (a real daemon, real signals)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.sim.harness import DaemonProcess, NotifyListener, run_cli, wait_for

LIBVIRT_LEVEL = '''
[[fencing.level]]

[[fencing.level.device]]
type = "libvirt"
name = "lab-hv"
uri = "test:///default"
domain = "test"

[metrics]
'''


def devices(cfg: Path) -> dict[str, Any]:
    st = json.loads(run_cli(cfg, "status", "--json").stdout)
    return {d["name"]: d for d in st["fencing"]["devices"]}


@pytest.mark.slow
def test_a_device_added_by_reload_is_checked(lab_configs: tuple[Path, Path], tmp_path: Path) -> None:
    """Sequence: the operator adds a fence level and reloads. The reload built a new coordinator, identity
    book and device monitor, but the task that runs the monitor kept running the old one (nobody
    cancelled it): the new device was never checked, so its identity was never verified, so the
    coordinator refused it ("not trusted") on every fence - the added level could never fence - while
    the old monitor went on polling the old devices (with old credentials) and writing the identity file."""
    cfg = lab_configs[0]
    notify = NotifyListener(tmp_path)
    d = DaemonProcess(cfg, env={"NOTIFY_SOCKET": str(notify.path)}).start()
    try:
        notify.wait_for_key("READY", 30)
        assert "lab-hv" not in devices(cfg)
        cfg.write_text(cfg.read_text().replace("\n[metrics]\n", LIBVIRT_LEVEL, 1))
        d.signal(signal.SIGHUP)
        wait_for(lambda: "fencing rebuilt from the reloaded configuration (2 levels)" in d.log(), 30, "the fencing rebuild")
        # The monitor checks a device it has not seen at once (then at most once a minute).
        checked = wait_for(lambda: devices(cfg)["lab-hv"]["checked_at"], 30, "a check of the device added by the reload")
        assert checked is not None and d.alive()
    finally:
        d.stop()
        notify.close()
