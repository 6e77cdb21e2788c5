//! Property tests of the protocol's pure parts: the sampling math behind
//! every clock step and drift figure, the host time check, and the register
//! and command tables the access rule rests on.

use proptest::prelude::*;
use vmmci_protocol::{
    pci, Command, Drift, HostTime, HostTimeError, Register, TimeSample, UnknownCommand, Width,
    HOST_RESOLUTION_NS, MAX_AHEAD_OF_BUILD_SECS, NANOS_PER_SEC,
};

/// Guest clock readings from 1970-01-01 to 2262-04-11 (the whole of `i64`
/// nanoseconds on the positive side), with the edges weighted in.
fn guest_ns() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => Just(0i64),
        1 => Just(i64::MAX),
        1 => Just(i64::MAX - 1),
        2 => 1_600_000_000 * NANOS_PER_SEC..2_200_000_000 * NANOS_PER_SEC,
        4 => 0..=i64::MAX,
    ]
}

/// Any register pair vmd (or junk) can produce, edges weighted in.
fn any_sec() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        Just(u32::MAX),
        1_600_000_000u32..2_200_000_000,
        any::<u32>(),
    ]
}

fn any_usec() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(999_999u32),
        Just(1_000_000u32),
        Just(u32::MAX),
        0u32..1_000_000,
        any::<u32>(),
    ]
}

fn valid_host() -> impl Strategy<Value = HostTime> {
    (1u32..=u32::MAX, 0u32..1_000_000).prop_map(|(sec, usec)| HostTime { sec, usec })
}

/// A plausible bracket: a guest clock reading and a round trip of up to a
/// few seconds (a slow or stalled read).
fn bracket() -> impl Strategy<Value = (i64, i64)> {
    (
        0i64..=4_000_000_000 * NANOS_PER_SEC,
        prop_oneof![
            Just(0i64),
            Just(1i64),
            0i64..100_000,
            0i64..5 * NANOS_PER_SEC
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// `validate` accepts exactly sec != 0, usec < 1e6, sec >= not_before,
    /// and names the first rule broken in that order.
    #[test]
    fn validate_accepts_exactly_sane_pairs(
        sec in any_sec(),
        usec in any_usec(),
        not_before in prop_oneof![Just(0u32), Just(u32::MAX), 1_700_000_000u32..1_900_000_000, any::<u32>()],
    ) {
        let sane = sec != 0
            && usec < 1_000_000
            && sec >= not_before
            && sec <= not_before.saturating_add(MAX_AHEAD_OF_BUILD_SECS);
        let got = HostTime::validate(sec, usec, not_before);
        prop_assert_eq!(got.is_ok(), sane, "validate({}, {}, {}) = {:?}", sec, usec, not_before, got);
        match got {
            Ok(t) => {
                prop_assert_eq!(t, HostTime { sec, usec });
                prop_assert_eq!(
                    i128::from(t.as_nanos()),
                    i128::from(sec) * 1_000_000_000 + i128::from(usec) * 1_000
                );
            }
            Err(HostTimeError::Zero) => prop_assert_eq!(sec, 0),
            Err(HostTimeError::UsecOutOfRange(u)) => {
                prop_assert!(sec != 0);
                prop_assert_eq!(u, usec);
                prop_assert!(u >= 1_000_000);
            }
            Err(HostTimeError::BeforeBuild { sec: s, not_before: nb }) => {
                prop_assert!(sec != 0 && usec < 1_000_000);
                prop_assert_eq!((s, nb), (sec, not_before));
                prop_assert!(s < nb);
            }
            Err(HostTimeError::FarFuture { sec: s, not_after }) => {
                prop_assert!(sec != 0 && usec < 1_000_000 && sec >= not_before);
                prop_assert_eq!(s, sec);
                prop_assert!(s > not_after);
            }
        }
    }

    /// Nothing overflows or panics for any register pair (junk usec too) and
    /// any guest readings from 1970 to 2262, ordered or not; the derived
    /// figures keep their invariants.
    #[test]
    fn sample_math_never_panics(
        sec in any_sec(),
        usec in any_usec(),
        before in guest_ns(),
        after in guest_ns(),
    ) {
        // The one bracket that spans all of 1970..2262 overflows
        // error_bound_ns: see `full_range_bracket_error_bound` below.
        let host = HostTime { sec, usec };
        prop_assert!(host.as_nanos() >= 0);
        let s = TimeSample { guest_before_ns: before, host, guest_after_ns: after };
        let rtt = s.round_trip_ns();
        prop_assert!(rtt >= 0);
        prop_assert_eq!(s.is_ordered(), after >= before);
        if s.is_ordered() {
            prop_assert_eq!(rtt, after - before);
            prop_assert!(s.guest_mid_ns() >= before && s.guest_mid_ns() <= after);
        } else {
            prop_assert_eq!(rtt, 0);
        }
        let bound = s.error_bound_ns();
        prop_assert!(bound >= HOST_RESOLUTION_NS / 2);
        prop_assert!(2 * i128::from(bound) >= i128::from(rtt) + i128::from(HOST_RESOLUTION_NS));
        // offset == host_mid - guest_mid, exactly (no wrap).
        prop_assert_eq!(
            i128::from(s.offset_ns()),
            i128::from(s.host_mid_ns()) - i128::from(s.guest_mid_ns())
        );
        prop_assert_eq!(s.drift(), Drift(s.offset_ns()));
    }

    /// The error bound is at least half the round trip plus half the host's
    /// microsecond, and the true offset lies within it: wherever in its
    /// microsecond the host took the snapshot, and wherever in the bracket
    /// the guest clock stood when it did.
    #[test]
    fn true_offset_is_within_the_error_bound(
        host in valid_host(),
        (before, rtt) in bracket(),
        host_frac in 0i64..HOST_RESOLUTION_NS,
        guest_frac in 0.0f64..=1.0,
    ) {
        let after = before + rtt;
        let s = TimeSample { guest_before_ns: before, host, guest_after_ns: after };
        let bound = s.error_bound_ns();
        prop_assert!(bound >= rtt / 2 + 500, "bound {} for rtt {}", bound, rtt);
        prop_assert!(2 * bound >= rtt + HOST_RESOLUTION_NS);
        let host_true = host.as_nanos() + host_frac;
        let guest_true = before + ((rtt as f64) * guest_frac) as i64;
        for (h, g) in [
            (host_true, guest_true),
            // The corners of the box.
            (host.as_nanos(), before),
            (host.as_nanos(), after),
            (host.as_nanos() + HOST_RESOLUTION_NS - 1, before),
            (host.as_nanos() + HOST_RESOLUTION_NS - 1, after),
        ] {
            let err = (h - g) - s.offset_ns();
            prop_assert!(err.abs() <= bound, "true {} vs offset {} ± {}", h - g, s.offset_ns(), bound);
        }
    }

    /// Host ahead of the guest (even at the end of the bracket) gives a
    /// positive offset: step forward. Host behind gives a negative one.
    #[test]
    fn offset_sign_is_host_minus_guest(
        host in valid_host(),
        rtt in prop_oneof![0i64..100_000, 0i64..5 * NANOS_PER_SEC],
        gap in 1i64..1_000 * NANOS_PER_SEC,
    ) {
        let h = host.as_nanos();
        // Guest behind: the whole bracket ends before the host's microsecond starts.
        let after = h - gap;
        let behind = TimeSample { guest_before_ns: after - rtt, host, guest_after_ns: after };
        prop_assert!(behind.offset_ns() > 0, "{:?} -> {}", behind, behind.offset_ns());
        // Guest ahead: the bracket starts after the host's microsecond ends.
        let before = h + HOST_RESOLUTION_NS + gap;
        let ahead = TimeSample { guest_before_ns: before, host, guest_after_ns: before + rtt };
        prop_assert!(ahead.offset_ns() < 0, "{:?} -> {}", ahead, ahead.offset_ns());
        // And the size is right to within the bound.
        let bound = behind.error_bound_ns();
        prop_assert!((behind.offset_ns() - (h - (after - rtt / 2))).abs() <= bound);
    }

    /// The old driver's sysctl split, without its sign normalisation: both
    /// fields carry the sign, recombine exactly, and nsec stays under 1 s.
    #[test]
    fn drift_split_keeps_sign_and_recombines(total in prop_oneof![
        Just(0i64), Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(1i64),
        Just(-NANOS_PER_SEC), Just(NANOS_PER_SEC), Just(-300_000_000i64),
        -10 * NANOS_PER_SEC..10 * NANOS_PER_SEC,
        any::<i64>(),
    ]) {
        let d = Drift(total);
        let (sec, nsec) = (d.sec(), d.nsec());
        prop_assert_eq!(i128::from(sec) * 1_000_000_000 + i128::from(nsec), i128::from(total));
        prop_assert!(nsec.abs() < NANOS_PER_SEC);
        if total > 0 {
            prop_assert!(sec >= 0 && nsec >= 0, "{} -> ({}, {})", total, sec, nsec);
        } else if total < 0 {
            prop_assert!(sec <= 0 && nsec <= 0, "{} -> ({}, {})", total, sec, nsec);
        } else {
            prop_assert_eq!((sec, nsec), (0, 0));
        }
        // |sec| is the whole seconds of |total|.
        prop_assert_eq!(i128::from(sec).abs(), i128::from(total).abs() / 1_000_000_000);
    }

    /// Only the 13 decoded offsets resolve, each to the register that
    /// reports it.
    #[test]
    fn only_decoded_offsets_resolve(offset in prop_oneof![0u64..0x40, 0u64..0x1000, any::<u64>()]) {
        match Register::at(offset) {
            Some(r) => prop_assert_eq!(r.offset(), offset),
            None => prop_assert!(Register::ALL.iter().all(|r| r.offset() != offset)),
        }
    }

    /// A COMMAND value is a command only if all 32 bits are 0..=3.
    #[test]
    fn only_four_values_are_commands(v in prop_oneof![0u32..8, any::<u32>()]) {
        match Command::from_raw(v) {
            Ok(c) => {
                prop_assert!(v <= 3);
                prop_assert_eq!(c.raw(), v);
            }
            Err(e) => {
                prop_assert!(v > 3);
                prop_assert_eq!(e, UnknownCommand(v));
            }
        }
    }

    /// Width round trips and masks are consistent for every byte count.
    #[test]
    fn widths(n in 0usize..16) {
        match Width::from_bytes(n) {
            Some(w) => {
                prop_assert!(matches!(n, 1 | 2 | 4));
                prop_assert_eq!(w.bytes(), n);
                prop_assert_eq!(u64::from(w.mask()), (1u64 << (8 * n)) - 1);
            }
            None => prop_assert!(!matches!(n, 1 | 2 | 4)),
        }
    }
}

/// Registers tile the block without overlapping: one access of a
/// register's natural width at its offset touches no other register, and
/// everything is inside BAR0.
#[test]
fn registers_do_not_overlap_and_fit_in_bar0() {
    for r in Register::ALL {
        let end = r.offset() + r.width().bytes() as u64;
        assert!(end <= u64::from(pci::BAR0_SIZE), "{r}");
        assert_eq!(Register::at(r.offset()), Some(r));
        for s in Register::ALL {
            if s != r {
                let s_end = s.offset() + s.width().bytes() as u64;
                assert!(
                    end <= s.offset() || s_end <= r.offset(),
                    "{r} (width {}) overlaps {s}",
                    r.width().bytes()
                );
            }
        }
    }
    // Offsets are unique.
    let mut offsets: Vec<u64> = Register::ALL.iter().map(|r| r.offset()).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), Register::ALL.len());
}

/// A bracket from 1970-01-01 to 2262-04-11 (round trip `i64::MAX`): the
/// edge of the arithmetic, where `(rtt + 1) / 2` used to overflow.
#[test]
fn full_range_bracket_error_bound() {
    let s = TimeSample {
        guest_before_ns: 0,
        host: HostTime { sec: 1, usec: 0 },
        guest_after_ns: i64::MAX,
    };
    assert!(s.error_bound_ns() > 0);
}
