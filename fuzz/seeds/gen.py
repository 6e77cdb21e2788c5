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


def T(adv=0, handshake=False, fault=None, begin_fails=False, step_fails=False,
      sync_slow=False, force_fails=False):
    """The two ctl bytes of one tick (see the top of fuzz_targets/agent.rs)."""
    a = adv & 7
    if fault is not None:
        a |= 0xC0 | ((fault & 7) << 3)
    elif handshake:
        a |= 0x38
    b = (1 if begin_fails else 0) | (2 if step_fails else 0)
    b |= (4 if sync_slow else 0) | (8 if force_fails else 0)
    return bytes([a, b])


def tick_ctl(*ticks):
    return b"".join(ticks)


def idle(n):
    return [T()] * n


def hs(features=0x7, status=0):
    """The handshake's reads: DEVICE_STATUS, then DEVICE_FEATURES."""
    return [status, features]


def sync_ack(isr_after=0, command_after=None):
    """SYNCRTC with ACK: the poll (3), ISR, COMMAND again (3), [the ACK],
    ISR, and COMMAND once more if ISR has the config-change bit (2)."""
    out = [SYNCRTC, 0, SYNCRTC, isr_after]
    if isr_after & 2:
        out.append(command_after)
    return out


def agent_seeds():
    now = GUEST_SEC
    host = now + 92  # after a 90 s host suspend
    s = {}
    # Handshake with vmd's offer, then a quiet tick with its drift sample.
    s["handshake_idle"] = agent_input(hs() + [NONE] + sample(now))
    # A restarted agent: DRIVER_OK already set, kept (no status 0).
    s["handshake_claimed"] = agent_input(hs(status=0x7) + [NONE] + sample(now))
    # DRIVER_OK with FAILED: a fresh handshake.
    s["handshake_failed_bit"] = agent_input(hs(status=0x87) + [NONE] + sample(now))
    # An older vmd without ACK/SYNCRTC, and all-ones (no device).
    s["handshake_timesync_only"] = agent_input(hs(0x1) + [NONE] + sample(now))
    s["handshake_all_ones"] = agent_input([0, 0xFFFFFFFF])
    # vmctl stop: REBOOT on the first poll, then latched.
    s["reboot"] = agent_input(hs() + [REBOOT] + sample(now) + [REBOOT] * 20)
    # REBOOT and init never finishes: synced at 25 s, forced at 110 s.
    regs = hs() + [REBOOT] + sample(now)
    for k in range(1, 6):
        regs += [REBOOT] + sample(now + 25 * k)
    s["reboot_grace_force"] = agent_input(regs, ctl=tick_ctl(*idle(1), *[T(7)] * 5))
    # The same at the default 250 ms ticks (440 of them).
    s["reboot_stuck"] = agent_input(hs() + [REBOOT] + sample(now))
    # SHUTDOWN with init failing: no force at once; the sync is slow, the
    # force fails.
    s["shutdown_begin_fails"] = agent_input(
        hs() + [SHUTDOWN] + sample(now),
        ctl=tick_ctl(T(begin_fails=True), T(7, sync_slow=True), T(7), T(7), T(7, force_fails=True)),
    )
    s["shutdown"] = agent_input(hs() + [SHUTDOWN] + sample(now) + [SHUTDOWN] * 4 + [NONE])
    # SYNCRTC, sane time: ACK, step, residual, second poll, drift.
    s["syncrtc_sane"] = agent_input(
        hs() + sync_ack() + sample(host) + sample(host, 400_000) + [NONE] + sample(host, 500_000)
    )
    # SYNCRTC with the guest ahead (step backwards).
    s["syncrtc_backwards"] = agent_input(
        hs() + sync_ack() + sample(now - 40) + sample(now, 300_000) + [NONE] + sample(now, 400_000)
    )
    # SYNCRTC without ACK: stays posted, handled once.
    s["syncrtc_no_ack"] = agent_input(
        hs(0x5) + [SYNCRTC] + sample(host) + sample(host, 400_000) + [SYNCRTC]
        + sample(host, 500_000) + [SYNCRTC] * 6
    )
    # SYNCRTC with nonsense time: 0, usec out of range, before build, stale;
    # the retries then read zeros too.
    s["syncrtc_zero"] = agent_input(hs() + sync_ack() + [0, 0] * TRIES)
    s["syncrtc_usec_range"] = agent_input(hs() + sync_ack() + [now, 1_000_000] * TRIES)
    s["syncrtc_before_build"] = agent_input(hs() + sync_ack() + [12, 5] * TRIES)
    s["syncrtc_disagree"] = agent_input(
        hs() + sync_ack() + [host, 1, host, 41, host + 120, 81, host, 121, host, 161]
    )
    # Slow reads: the guest clock jumps 100 ms around every read.
    s["syncrtc_slow_reads"] = agent_input(
        hs() + sync_ack() + sample(host, 250_000, 200_000), clk=bytes([0xE1]) * 12
    )
    # The guest clock going backwards in the bracket.
    s["syncrtc_clock_backwards"] = agent_input(
        hs() + sync_ack() + sample(host), clk=bytes([0xF8, 0x01] * 6)
    )
    # The clock refuses to be set; the next tick's retry steps.
    s["syncrtc_eperm_retried"] = agent_input(
        hs() + sync_ack() + sample(host) + [NONE] + sample(host)
        + sample(host, 300_000) + sample(host, 400_000) + [NONE],
        ctl=tick_ctl(T(step_fails=True), T()),
    )
    # A guest with no RTC (1970).
    s["syncrtc_epoch_guest"] = agent_input(
        hs() + sync_ack() + sample(now) + sample(now, 400_000) + [NONE] + sample(now, 500_000),
        guest=1,
    )
    # REBOOT overwrites SYNCRTC before its ACK: REBOOT handled instead.
    s["syncrtc_superseded"] = agent_input(hs() + [SYNCRTC, 0, REBOOT, REBOOT] + sample(now))
    # A stop posted just before the SYNCRTC ACK, which wiped it: ISR says
    # so, COMMAND reads NONE: sync and force a reboot at once.
    s["syncrtc_wiped_stop"] = agent_input(hs() + sync_ack(2, NONE) + sample(now))
    # A stop posted just after the ACK: stepped, then REBOOT in the same tick.
    s["syncrtc_stop_after_ack"] = agent_input(
        hs() + sync_ack(2, REBOOT) + sample(host) + sample(host, 400_000) + [REBOOT]
        + sample(host, 500_000)
    )
    # Junk in COMMAND: never acted on, logged once; then a real REBOOT.
    s["junk_commands"] = agent_input(
        hs() + [7] + sample(now) + [7, 0xDEADBEEF, 0xFFFFFFFF, 0x102, 0x10002, 0x300, NONE, REBOOT]
    )
    # Handshakes again while a REBOOT is under way: DRIVER_OK set (kept),
    # then a device that lost it (fresh handshake).
    s["rehandshake"] = agent_input(
        hs() + [REBOOT] + sample(now) + hs(status=0x7) + [REBOOT] + [REBOOT] + hs() + [NONE],
        ctl=tick_ctl(T(), T(handshake=True), T(), T(handshake=True)),
    )
    # Device errors: on the poll, on the ACK, in the drift sample, on the
    # SYNCRTC re-read; each followed by a handshake (DRIVER_OK kept).
    s["faults"] = agent_input(
        hs()
        + hs(status=0x7) + [REBOOT]
        + hs(status=0x7) + [REBOOT, now]
        + hs(status=0x7) + [SYNCRTC, 0]
        + hs(status=0x7) + sync_ack() + sample(host) * 2 + [NONE],
        ctl=tick_ctl(T(fault=0), T(fault=5), T(fault=7), T(fault=6), T()),
    )
    # SYNCRTC with REBOOT seen by the poll after the step, then SYNCRTC
    # again while stopping (acknowledged and stepped, no retries).
    s["syncrtc_reboot_syncrtc"] = agent_input(
        hs() + sync_ack() + sample(host) + sample(host) + [REBOOT] + sample(host)
        + sync_ack() + sample(host) * 2 + [NONE]
    )
    return s


CONFIGS = {
    "empty": "",
    "full": """device = "0000:00:05.0"
poll_interval = "250ms"
sample_interval = "15s"
grace = "25s"
force_after = "110s"
release_on_exit = false
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
    "force_after": 'grace = "10s"\nforce_after = "115s"\n',
    "invalid_force_after": 'force_after = "116s"\n',
    "invalid_grace_after_force": 'grace = "60s"\nforce_after = "50s"\n',
    "invalid_sample": 'sample_interval = "500ms"\n',
    "invalid_empty_argv": "[power]\nreboot = []\n",
    "invalid_empty_prog": '[power]\npoweroff = [""]\n',
    "huge_duration": 'grace = "99999999999999999999999999999999s"\n',
    "dots": 'grace = "1.2.3s"\n',
    "toml_junk": '[[power]]\n= "\\u0000"\ndevice = 1979-05-27T07:32:00Z\n',
    "nested": "a = { b = { c = [1, [2, [3]]] } }\n",
    "hooks": """[hooks]
before_reboot = ["/usr/local/sbin/drain-queue", "--fast"]
before_poweroff = ["logger", "powering off"]
after_step = ["logger", "-t", "vmmci-hook", "clock stepped"]
timeout = "2.5s"
dir = "/etc/vmmci/hooks.d"
""",
    "invalid_hook_timeout": '[hooks]\ntimeout = "21s"\ndir = "hooks.d"\n',
}


def write_all(target, files, mode):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), mode) as f:
            f.write(data)
    # Seeds this script no longer makes (an input layout that changed).
    for stale in sorted(set(os.listdir(d)) - set(files)):
        print(f"removing stale seed {target}/{stale}")
        os.remove(os.path.join(d, stale))


def main():
    write_all("agent", agent_seeds(), "wb")
    write_all("config", {name + ".toml": text for name, text in CONFIGS.items()}, "w")


if __name__ == "__main__":
    main()
