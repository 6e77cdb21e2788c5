//! `vmmci simulate`: the real agent state machine against the built-in vmd
//! simulator, with a scripted host, on a virtual clock. The guest clock and
//! the power switch here are simulated: nothing on this machine is touched.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmd_sim::{HostClock, ManualClock, SimBar, SkewedClock, VmEnd, Vmd, VmdConfig};
use vmmci_agent::fakes::{FakeGuestClock, PowerCall, RecordingPower};
use vmmci_agent::{fmt_bound, fmt_ns, Agent, ClockMode, GuestClock, Outcome, PowerAction};
use vmmci_protocol::NANOS_PER_SEC;

use crate::cli::SimulateArgs;
use crate::config::Config;
use crate::daemon::agent_config;
use crate::CliError;

/// When the scripted host does what.
const SUSPEND_AT: Duration = Duration::from_secs(20);
const STOP_AT: Duration = Duration::from_secs(45);
/// How long the simulated guest's init takes to reboot.
const GUEST_SHUTDOWN: Duration = Duration::from_secs(3);
const SCRIPT_END: Duration = Duration::from_secs(120);

fn line(at: Duration, who: &str, text: impl std::fmt::Display) {
    println!("[{:>7.3}] {who:<6} {text}", at.as_secs_f64());
}

pub fn run(config: &Config, args: SimulateArgs) -> Result<ExitCode, CliError> {
    // Virtual time starts on a whole second of today, so every run prints
    // the same figures.
    let now = vmmci_actions::SystemClock.now_ns();
    let base = ManualClock::new(now - now.rem_euclid(NANOS_PER_SEC));
    let host_clock = SkewedClock::new(Box::new(base.clone()), args.host_ppm, 0);
    let vmd = Arc::new(Mutex::new(Vmd::new(
        VmdConfig::default(),
        Box::new(host_clock),
    )));
    let mut config = config.clone();
    config.clock.mode = args.clock_mode.unwrap_or(config.clock.mode);
    let config = &config;
    let guest = {
        let b = base.clone();
        FakeGuestClock::new(move || b.realtime_ns(), (-args.boot_offset * 1e9) as i64)
    };
    let power = RecordingPower::default();
    let mut agent = Agent::new(
        SimBar::new(vmd.clone()),
        guest.clone(),
        power.clone(),
        agent_config(config),
    );
    let lock = || vmd.lock().unwrap_or_else(|p| p.into_inner());
    let poll = config.poll_interval;
    let mut printed = 0;
    let flush_vmd = |printed: &mut usize| {
        let vmd = lock();
        for e in &vmd.events()[*printed..] {
            line(e.at, "vmd", e);
        }
        *printed = vmd.events().len();
    };

    println!("vmmci simulate: the real agent against the built-in vmd simulator (virtual time, nothing on this machine is touched)");
    println!(
        "power commands would run {:?} / {:?}; poll every {poll:?}; clock mode {}; host clock {:+} ppm\n",
        config.power.reboot, config.power.poweroff, config.clock.mode, args.host_ppm
    );
    line(
        Duration::ZERO,
        "host",
        format!(
            "VM boots; guest clock is {} s behind the host",
            args.boot_offset
        ),
    );
    let features = agent.handshake()?;
    flush_vmd(&mut printed);
    line(
        Duration::ZERO,
        "agent",
        format!("handshake done: DRIVER_OK, features {features}"),
    );

    let mut now = Duration::ZERO;
    let mut suspended = false;
    let mut stop_sent = false;
    let mut reset_at: Option<Duration> = None;
    let mut steps = Vec::new();
    while now <= SCRIPT_END && lock().ended().is_none() {
        if !suspended && now >= SUSPEND_AT {
            suspended = true;
            line(
                now,
                "host",
                format!(
                    "suspended for {} s (laptop lid closed), then resumes",
                    args.suspend
                ),
            );
            lock().jump_host_clock(i64::from(args.suspend) * NANOS_PER_SEC);
        }
        if !stop_sent && now >= STOP_AT {
            stop_sent = true;
            line(now, "host", "vmctl stop");
            if let Err(e) = lock().vmctl_stop() {
                line(now, "host", format!("vmctl stop refused: {e}"));
            }
        }
        if reset_at.is_some_and(|t| now >= t) {
            line(now, "guest", "init finished its shutdown; the CPU resets");
            lock().guest_reset();
            flush_vmd(&mut printed);
            break;
        }
        lock().poll();
        flush_vmd(&mut printed);
        let tick = agent.tick(now)?;
        if let Some(h) = &tick.handled {
            let ack = if h.acked {
                "acknowledged"
            } else {
                "not acknowledged"
            };
            line(now, "agent", format!("{} {ack}: {}", h.name(), h.outcome));
            match &h.outcome {
                Outcome::PowerStarted(action) => {
                    let argv = match action {
                        PowerAction::Reboot => &config.power.reboot,
                        PowerAction::Poweroff => &config.power.poweroff,
                    };
                    line(now, "agent", format!("would run {argv:?} (simulated: the guest shuts down for {GUEST_SHUTDOWN:?})"));
                    reset_at = Some(now + GUEST_SHUTDOWN);
                }
                Outcome::Stepped(s) => steps.push(*s),
                _ => {}
            }
        }
        if let Some(d) = tick.sampled {
            line(
                now,
                "agent",
                format!(
                    "drift {} (host − guest), round trip {}",
                    fmt_ns(d.offset_ns),
                    fmt_bound(d.round_trip_ns)
                ),
            );
        }
        if let Some(d) = &tick.clock {
            line(now, "agent", d);
        }
        now += poll;
        base.advance(poll);
    }
    flush_vmd(&mut printed);

    let vmd = lock();
    let residual = vmd.host_now_ns() - guest.now_ns();
    let mut problems = Vec::new();
    if vmd.ended() != Some(VmEnd::CleanStop) {
        problems.push(format!("VM did not end as a clean stop: {:?}", vmd.ended()));
    }
    if steps.is_empty() && config.clock.mode != ClockMode::Off {
        problems.push("the clock was never stepped after the suspend".to_string());
    }
    if residual.abs() > 1_000_000 && config.clock.mode != ClockMode::Off {
        problems.push(format!(
            "guest clock off by {} after SYNCRTC",
            fmt_ns(residual)
        ));
    }
    if !vmd.violations().is_empty() {
        problems.push(format!(
            "register access rule broken: {:?}",
            vmd.violations()
        ));
    }
    println!("\nsummary:");
    println!(
        "  vmd outcome:       {}",
        vmd.ended()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "VM still running".into())
    );
    for s in &steps {
        println!(
            "  clock step:        {} (±{})",
            fmt_ns(s.delta_ns),
            fmt_bound(s.error_bound_ns)
        );
    }
    println!("  guest − host now:  {}", fmt_ns(-residual));
    let actions: Vec<PowerAction> = power
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            PowerCall::Begin(a) | PowerCall::Force(a) => Some(a),
            PowerCall::Sync => None,
        })
        .collect();
    println!("  power actions:     {actions:?} (simulated; this machine was not touched)");
    println!(
        "  register accesses: {} , rule violations: {}",
        vmd.accesses(),
        vmd.violations().len()
    );
    if problems.is_empty() {
        println!("result: OK");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
