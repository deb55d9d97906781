"""A web that falls silent without a FIN (its node lost, issue 35): the client hears
nothing, not a close, and must notice from Socket.IO's heartbeat alone, within
WEB_PING_INTERVAL_S + WEB_PING_TIMEOUT_S (7 s + 7 s by default; 45 s before)."""

import time

from conftest import (
    Watcher,
    assert_gapless_single_terminal,
    compose,
    docker,
    wait_ready,
    wait_until,
)

NOTICED_WITHIN_S = 15


def test_a_silent_web_is_noticed_within_15_s(api):
    task = api.create(steps=40, step_ms=500)
    watcher = Watcher(api).connect()
    drops = []
    watcher.sio.on("disconnect", lambda *reason: drops.append(time.monotonic()))
    try:
        watcher.follow(task["id"])
        wait_until(lambda: watcher.last_seq(task["id"]) >= 2, 30, what="the task under way")
        webs = compose("ps", "-q", "web").split()
        assert webs
        # The cgroup freezer: every process of the container stops and its sockets stay
        # open (no FIN, no RST), as when the machine under it is gone. Counted from when
        # it has taken hold: a ping may still arrive while `docker pause` runs.
        docker("pause", *webs)
        frozen_at = time.monotonic()
        try:
            wait_until(lambda: drops, NOTICED_WITHIN_S + 35, what="the client to notice")
            noticed_s = drops[0] - frozen_at
            print(f"a client noticed the silent web after {noticed_s:.1f} s")  # with -rP
            assert noticed_s < NOTICED_WITHIN_S, f"noticed the silence after {noticed_s:.1f} s"
        finally:
            docker("unpause", *webs)
        # Back: reconnected, resubscribed, and caught up without a gap.
        wait_until(lambda: watcher.connects >= 2, 60, what="the client reconnected")
        watcher.wait_terminal([task["id"]], timeout=60)
        assert_gapless_single_terminal(watcher.history(task["id"]))
        wait_ready()
    finally:
        watcher.close()
