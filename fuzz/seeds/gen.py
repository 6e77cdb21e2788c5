#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/seeds/<target>/).

Run from anywhere: python3 fuzz/seeds/gen.py. The agent seeds follow the
input layout documented at the top of fuzz_targets/agent.rs:

    [n_ctl u16][n_clk u16][guest u32][ctl][clk][regs: one u32 LE per read]

With the default clock (20 us per guest clock read) and ticks (250 ms),
each seed below is the register reads the agent makes, in order.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

GUEST_SEC = 1_800_000_000  # the harness's default guest clock
TRIES = 5  # AgentConfig::default().sample_tries

NONE, SHUTDOWN, REBOOT, SYNCRTC = 0, 1, 2, 3


def agent_input(regs, ctl=b"", clk=b"", guest=0):
    head = struct.pack("<HHI", len(ctl), len(clk), guest)
    return head + bytes(ctl) + bytes(clk) + b"".join(struct.pack("<I", r & 0xFFFFFFFF) for r in regs)


def sample(host_sec, host_usec=250_000, step_usec=40):
    """One precise sample: TRIES pairs of TIME_SEC, TIME_USEC."""
    out = []
    for i in range(TRIES):
        usec = host_usec + i * step_usec
        out += [host_sec + usec // 1_000_000, usec % 1_000_000]
    return out


def tick_ctl(*ticks):
    """ctl bytes: (advance code, notify, fault_at, begin_fails, step_fails)."""
    out = bytearray()
    for adv, notify, fault_at, begin_fails, step_fails in ticks:
        a = adv & 7
        if fault_at is not None:
            a |= 0xC0 | ((fault_at & 7) << 3)
        elif notify:
            a |= 0x38
        out += bytes([a, (1 if begin_fails else 0) | (2 if step_fails else 0)])
    return bytes(out)


def idle(n):
    return [(0, False, None, False, False)] * n


def agent_seeds():
    now = GUEST_SEC
    s = {}
    # Handshake with vmd's offer, then a quiet tick with its drift sample.
    s["handshake_idle"] = agent_input([0x7, NONE] + sample(now))
    # An older vmd without ACK/SYNCRTC, and all-ones (no device).
    s["handshake_timesync_only"] = agent_input([0x1, NONE] + sample(now))
    s["handshake_all_ones"] = agent_input([0xFFFFFFFF])
    # vmctl stop: REBOOT on the first poll, then latched.
    s["reboot"] = agent_input([0x7, REBOOT] + sample(now) + [REBOOT] * 20)
    # REBOOT and init never finishes: forced after the 25 s grace.
    s["reboot_grace"] = agent_input(
        [0x7, REBOOT] + sample(now) + [REBOOT] * 8,
        ctl=tick_ctl(*idle(1), (7, False, None, False, False), (7, False, None, False, False)),
    )
    # SHUTDOWN with init failing: sync, signal, force at once.
    s["shutdown_begin_fails"] = agent_input(
        [0x7, SHUTDOWN, SYNCRTC] + sample(now), ctl=tick_ctl((0, False, None, True, False))
    )
    s["shutdown"] = agent_input([0x7, SHUTDOWN] + sample(now) + [SHUTDOWN] * 4 + [NONE])
    # SYNCRTC after a 90 s host suspend, sane time: step, residual, drift.
    host = now + 92
    s["syncrtc_sane"] = agent_input(
        [0x7, SYNCRTC] + sample(host) + sample(host, 400_000) + sample(host, 500_000)
    )
    # SYNCRTC with the guest ahead (step backwards).
    s["syncrtc_backwards"] = agent_input(
        [0x7, SYNCRTC] + sample(now - 40) + sample(now, 300_000) + sample(now, 400_000)
    )
    # SYNCRTC without ACK: stays posted, handled once.
    s["syncrtc_no_ack"] = agent_input(
        [0x5, SYNCRTC] + sample(host) + sample(host, 400_000) + sample(host, 500_000) + [SYNCRTC] * 6
    )
    # SYNCRTC with nonsense time: 0, usec out of range, before build, stale.
    s["syncrtc_zero"] = agent_input([0x7, SYNCRTC] + [0, 0] * TRIES)
    s["syncrtc_usec_range"] = agent_input([0x7, SYNCRTC] + [now, 1_000_000] * TRIES)
    s["syncrtc_before_build"] = agent_input([0x7, SYNCRTC] + [12, 5] * TRIES)
    s["syncrtc_disagree"] = agent_input(
        [0x7, SYNCRTC] + [host, 1, host, 41, host + 120, 81, host, 121, host, 161]
    )
    # Slow reads: the guest clock jumps 100 ms around every read.
    s["syncrtc_slow_reads"] = agent_input(
        [0x7, SYNCRTC] + sample(host, 250_000, 200_000), clk=bytes([0xE1]) * 12
    )
    # The guest clock going backwards in the bracket.
    s["syncrtc_clock_backwards"] = agent_input(
        [0x7, SYNCRTC] + sample(host), clk=bytes([0xF8, 0x01] * 6)
    )
    # The clock refuses to be set.
    s["syncrtc_eperm"] = agent_input(
        [0x7, SYNCRTC] + sample(host), ctl=tick_ctl((0, False, None, False, True))
    )
    # A guest with no RTC (1970).
    s["syncrtc_epoch_guest"] = agent_input(
        [0x7, SYNCRTC] + sample(now) + sample(now, 400_000) + sample(now, 500_000), guest=1
    )
    # Junk in COMMAND: never acted on, logged once; then a real REBOOT.
    s["junk_commands"] = agent_input(
        [0x7, 7] + sample(now) + [7, 0xDEADBEEF, 0xFFFFFFFF, 0x102, 0x10002, 0x300, NONE, REBOOT]
    )
    # The power-down signal with REBOOT pending, and with nothing.
    s["notify_poweroff"] = agent_input(
        [0x7, REBOOT, REBOOT] + sample(now) + [NONE, NONE],
        ctl=tick_ctl((0, True, None, False, False), *idle(2), (1, True, None, False, False)),
    )
    # Device errors mid-tick: on the poll, on the ACK, in the sample.
    s["faults"] = agent_input(
        [0x7, REBOOT, REBOOT, SYNCRTC] + sample(host) * 3,
        ctl=tick_ctl(
            (0, False, 0, False, False),
            (0, False, 1, False, False),
            (0, False, 2, False, False),
            (0, False, 4, False, False),
        ),
    )
    # SYNCRTC, then REBOOT overwriting it, then SYNCRTC again (new).
    s["syncrtc_reboot_syncrtc"] = agent_input(
        [0x7, SYNCRTC] + sample(host) + sample(host) + sample(host) + [REBOOT, SYNCRTC] + sample(host) * 2
    )
    return s


CONFIGS = {
    "empty": "",
    "full": """device = "0000:00:05.0"
poll_interval = "250ms"
sample_interval = "15s"
grace = "25s"
run_dir = "/run/vmmci"
debug = false

[power]
reboot = ["reboot"]
poweroff = ["poweroff"]
""",
    "openrc": """poll_interval = "100ms"
grace = "1.5m"
[power]
reboot = ["/sbin/openrc-shutdown", "-r", "now"]
poweroff = ["/sbin/openrc-shutdown", "-p", "now"]
""",
    "duration_only": "250ms",
    "duration_min": "2min",
    "bad_unknown_key": 'debug = true\npoll_intervall = "1s"\n',
    "bad_duration": 'poll_interval = "fast"\n',
    "bad_unit": 'grace = "5h"\n',
    "bad_type": '[power]\nreboot = "reboot"\n',
    "invalid_poll": 'poll_interval = "5s"\n',
    "invalid_poll_fast": 'poll_interval = "1ms"\n',
    "invalid_grace": 'grace = "200s"\n',
    "invalid_sample": 'sample_interval = "500ms"\n',
    "invalid_empty_argv": "[power]\nreboot = []\n",
    "invalid_empty_prog": '[power]\npoweroff = [""]\n',
    "huge_duration": 'grace = "99999999999999999999999999999999s"\n',
    "dots": 'grace = "1.2.3s"\n',
    "toml_junk": '[[power]]\n= "\\u0000"\ndevice = 1979-05-27T07:32:00Z\n',
    "nested": "a = { b = { c = [1, [2, [3]]] } }\n",
}


def main():
    for name, data in agent_seeds().items():
        d = os.path.join(HERE, "agent")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    for name, text in CONFIGS.items():
        d = os.path.join(HERE, "config")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name + ".toml"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
