"""``drbdadm``/``drbdsetup`` of a simulated node: forwards argv to the node's simulator.

Installed by ``sim.drbd.lab`` as two tiny shell wrappers that run this file
with ``python -S`` (standard library only, so a call costs a bare
interpreter start) and ``DRBDSIM_SOCKET`` pointing at the node's simulator.
stdout, stderr and the exit code are DRBD's; when the simulator is gone the
answer is what drbdsetup says without a kernel module (exit 20).
"""

import json
import os
import signal
import socket
import sys


def main() -> int:
    prog, argv = sys.argv[1], sys.argv[2:]
    path = os.environ.get("DRBDSIM_SOCKET", "")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        sys.stderr.write("Could not connect to 'drbd' generic netlink family\n")
        return 20
    s.sendall(json.dumps({"prog": prog, "argv": argv}).encode() + b"\n")
    f = s.makefile("rb")
    for raw in f:
        msg = json.loads(raw)
        if "o" in msg:
            sys.stdout.write(msg["o"])
            sys.stdout.flush()
        elif "e" in msg:
            sys.stderr.write(msg["e"])
            sys.stderr.flush()
        elif "x" in msg:
            return int(msg["x"])
    sys.stderr.write("drbd: the kernel module went away\n")
    return 20


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)
