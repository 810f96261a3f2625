"""A stand-in agent process for the watchdog test: ``python -m tests.deploy.watchdog_child MODE``.

It wires ``agent.app.systemd`` the way the agent does: READY=1 at start, a ``WatchdogPinger`` whose
health check is "inference heartbeat fresh AND network thread alive", STOPPING=1 on the way out
(when stdin closes). Then it breaks on purpose:

- ``hung-inference``: the inference thread runs for a while, then blocks forever (a hung invoke).
- ``dead-network``: the network thread dies after a while; inference carries on.
"""

from __future__ import annotations

import sys
import threading
import time

from agent.app.systemd import Heartbeat, Notifier, WatchdogPinger

RUN_S = 0.5  # healthy time before the fault
ROUND_S = 0.01  # one simulated inference round
MAX_AGE_S = 0.2


def main() -> int:
    mode = sys.argv[1]
    assert mode in {"hung-inference", "dead-network"}, mode
    notifier = Notifier.from_environ()
    heartbeat = Heartbeat()
    forever = threading.Event()

    def inference() -> None:
        start = time.monotonic()
        while True:
            heartbeat.beat()
            time.sleep(ROUND_S)  # simulated invoke()
            if mode == "hung-inference" and time.monotonic() - start > RUN_S:
                forever.wait()  # the invoke that never returns

    def network() -> None:
        if mode == "dead-network":
            time.sleep(RUN_S)
            return  # the thread dies
        forever.wait()

    threading.Thread(target=inference, daemon=True).start()
    net = threading.Thread(target=network, daemon=True)
    net.start()

    pinger: WatchdogPinger

    def healthy() -> bool:
        return heartbeat.fresh(MAX_AGE_S) and net.is_alive()

    def status() -> str:
        return f"mode={mode} stalled={pinger.stalled}"

    pinger = WatchdogPinger(notifier, healthy, status=status)
    notifier.ready(f"mode={mode} starting")
    assert pinger.start(), "the pinger should run: NOTIFY_SOCKET and WATCHDOG_USEC are set"
    sys.stdin.read()  # the test closes stdin to stop us
    notifier.stopping("bye")
    pinger.stop()
    notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
