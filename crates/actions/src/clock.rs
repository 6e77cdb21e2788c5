//! CLOCK_REALTIME, read, stepped and slewed.

use std::io;

use vmmci_agent::{ClockError, GuestClock, Rate};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The guest's real wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl GuestClock for SystemClock {
    fn now_ns(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec; CLOCK_REALTIME always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        ts.tv_sec * NANOS_PER_SEC + ts.tv_nsec
    }

    /// One `clock_adjtime(ADJ_SETOFFSET | ADJ_NANO)`: the kernel adds the
    /// delta itself, so no time is lost between reading and setting, and
    /// the step keeps nanoseconds (the old driver set whole RTC seconds).
    fn step(&mut self, delta_ns: i64) -> Result<(), ClockError> {
        // SAFETY: an all-zero timex is valid input.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
        (tx.time.tv_sec, tx.time.tv_usec) = split_ns(delta_ns);
        // SAFETY: tx is a valid timex for the duration of the call.
        let rc = unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, &mut tx) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM) => Err(ClockError::NotPermitted(err.to_string())),
            // Kernels before 2.6.39 lack ADJ_SETOFFSET: set the time instead.
            Some(libc::EINVAL) | Some(libc::ENOSYS) => self.settime(delta_ns),
            _ => Err(ClockError::Failed(err.to_string())),
        }
    }

    fn rate(&self) -> Result<Rate, ClockError> {
        let tx = adjtime(&mut zeroed_timex())?;
        Ok(Rate {
            // c_long is i64 on x86_64, the only target vmd runs.
            tick_us: tx.tick,
            frequency_ppm: tx.freq as f64 / FREQ_SCALE,
        })
    }

    /// `clock_adjtime(ADJ_TICK | ADJ_FREQUENCY)`: the kernel's tick length
    /// and NTP frequency correction, the knobs chronyd turns on Linux. They
    /// change the clock's rate, never its reading.
    fn set_rate(&mut self, rate: Rate) -> Result<(), ClockError> {
        if !rate.frequency_ppm.is_finite() {
            return Err(ClockError::Failed(format!(
                "frequency {} is not a number",
                rate.frequency_ppm
            )));
        }
        let mut tx = zeroed_timex();
        tx.modes = libc::ADJ_TICK | libc::ADJ_FREQUENCY;
        tx.tick = rate.tick_us;
        tx.freq =
            (rate.frequency_ppm.clamp(-MAX_PPM, MAX_PPM) * FREQ_SCALE).round() as libc::c_long;
        adjtime(&mut tx).map(|_| ())
    }

    fn disciplined_by(&self) -> Option<String> {
        crate::time_daemons::running()
    }

    fn kernel_synchronised(&self) -> Option<bool> {
        adjtime(&mut zeroed_timex())
            .ok()
            .map(|tx| kernel_synchronised(tx.status))
    }
}

/// ADJ_FREQUENCY's unit: ppm with a 16-bit fraction.
const FREQ_SCALE: f64 = 65_536.0;
/// The kernel refuses more (MAXFREQ).
const MAX_PPM: f64 = vmmci_agent::MAX_FREQUENCY_PPM;

/// A timex that asks for nothing (modes 0: only read).
fn zeroed_timex() -> libc::timex {
    // SAFETY: an all-zero timex is valid input.
    unsafe { std::mem::zeroed() }
}

/// One `clock_adjtime` on CLOCK_REALTIME; the kernel's state comes back in
/// `tx`.
fn adjtime(tx: &mut libc::timex) -> Result<libc::timex, ClockError> {
    // SAFETY: tx is a valid timex for the duration of the call.
    if unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, tx) } >= 0 {
        return Ok(*tx);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) => Err(ClockError::NotPermitted(err.to_string())),
        _ => Err(ClockError::Failed(err.to_string())),
    }
}

/// The kernel boots with STA_UNSYNC set and only a time daemon clears it
/// (the agent never does); see the agent's policy for what a clear flag
/// is taken to mean.
fn kernel_synchronised(status: libc::c_int) -> bool {
    status & libc::STA_UNSYNC == 0
}

/// The kernel wants times and offsets as whole seconds plus nanoseconds in
/// [0, 1e9): −0.3 s is (−1, 700000000).
fn split_ns(delta_ns: i64) -> (i64, i64) {
    (
        delta_ns.div_euclid(NANOS_PER_SEC),
        delta_ns.rem_euclid(NANOS_PER_SEC),
    )
}

impl SystemClock {
    fn settime(&self, delta_ns: i64) -> Result<(), ClockError> {
        let target = self.now_ns() + delta_ns;
        let (tv_sec, tv_nsec) = split_ns(target);
        let ts = libc::timespec { tv_sec, tv_nsec };
        // SAFETY: ts is a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM) => Err(ClockError::NotPermitted(err.to_string())),
            _ => Err(ClockError::Failed(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2023_and_moves_forward() {
        let c = SystemClock;
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(a > 1_700_000_000 * NANOS_PER_SEC);
        assert!(b >= a);
    }

    // No test here calls step(): even a zero ADJ_SETOFFSET clears the
    // kernel's NTP state, and tests must never re-clock the machine they
    // run on. The end-to-end tests step a real guest's clock in QEMU.
    #[test]
    fn rate_and_sync_flag_read_without_privilege() {
        let r = SystemClock.rate().unwrap();
        assert!(r.frequency_ppm.abs() <= MAX_PPM, "{r:?}");
        assert!(
            (vmmci_agent::MIN_TICK_US..=vmmci_agent::MAX_TICK_US).contains(&r.tick_us),
            "{r:?}"
        );
        assert!(SystemClock.kernel_synchronised().is_some());
        assert!(!kernel_synchronised(libc::STA_UNSYNC | libc::STA_PLL));
        assert!(kernel_synchronised(libc::STA_PLL));
    }

    #[test]
    fn offsets_split_with_nanoseconds_in_range() {
        assert_eq!(split_ns(0), (0, 0));
        assert_eq!(split_ns(1_500_000_000), (1, 500_000_000));
        assert_eq!(split_ns(-300_000_000), (-1, 700_000_000));
        assert_eq!(split_ns(-2_000_000_000), (-2, 0));
        assert_eq!(split_ns(-1), (-1, 999_999_999));
    }
}
