//! The guest's side of `vmmci_io()`: raw port accesses, decode, violations.

use crate::device::test_vmd::*;

#[test]
fn handshake_in_order_with_no_violations() {
    let (v, _) = ready();
    assert_eq!(v.status_writes(), &[0, 1, 3, 7]);
    assert_eq!(v.device_status(), 7);
    assert_eq!(v.guest_features(), 7);
    assert!(v.violations().is_empty(), "{:?}", v.violations());
    assert_eq!(v.accesses(), 6);
    assert!(v.events().is_empty());
}

#[test]
fn status_writes_carry_their_time() {
    let (mut v, c) = sim();
    c.advance(secs(1.5));
    handshake(&mut v, 0x7);
    let at: Vec<(Duration, u8)> = v.status_writes_at().to_vec();
    assert_eq!(
        at,
        [0u8, 1, 3, 7].map(|s| (secs(1.5), s)).to_vec(),
        "times since Vmd::new, the values as status_writes()"
    );
}

#[test]
fn every_command_write_is_recorded_even_none() {
    let (mut v, c) = ready();
    c.advance(secs(2.0));
    ack(&mut v, NONE);
    ack(&mut v, 9);
    v.request_syncrtc();
    ack(&mut v, SYNCRTC);
    assert_eq!(
        v.command_writes(),
        &[(secs(2.0), NONE), (secs(2.0), 9), (secs(2.0), SYNCRTC)]
    );
}

#[test]
fn snapshot_is_taken_only_by_the_time_sec_read() {
    let (mut v, c) = ready();
    // Nothing before the first snapshot.
    assert_eq!(v.bar_read(Reg::TIME_USEC_LOW, 4), 0);
    let sec = v.bar_read(Reg::TIME_SEC_LOW, 4);
    assert_eq!(i64::from(sec), T0 / S);
    c.advance(secs(0.5));
    // Still the first snapshot's µs (truncated, not rounded).
    assert_eq!(v.bar_read(Reg::TIME_USEC_LOW, 4), 123_456);
    assert_eq!(v.bar_read(Reg::TIME_USEC_LOW, 4), 123_456);
    let sec2 = v.bar_read(Reg::TIME_SEC_LOW, 4);
    assert_eq!(sec2, sec);
    assert_eq!(v.bar_read(Reg::TIME_USEC_LOW, 4), 623_456);
}

#[test]
fn high_words_read_zero() {
    let (mut v, _) = ready();
    v.bar_read(Reg::TIME_SEC_LOW, 4);
    assert_eq!(v.bar_read(Reg::TIME_SEC_HIGH, 4), 0);
    assert_eq!(v.bar_read(Reg::TIME_USEC_HIGH, 4), 0);
}

#[test]
fn seconds_are_the_low_32_bits_and_include_the_host_offset() {
    let (mut v, _) = ready();
    let to_2106 = (1_i64 << 32) * S + 5 * S - T0;
    v.jump_host_clock(to_2106);
    assert_eq!(v.bar_read(Reg::TIME_SEC_LOW, 4), 5);
    assert_eq!(v.bar_read(Reg::TIME_SEC_HIGH, 4), 0);
}

#[test]
fn undecoded_offsets_return_the_previous_read_and_are_flagged() {
    let (mut v, _) = ready();
    let sec = v.bar_read(Reg::TIME_SEC_LOW, 4);
    assert_eq!(v.bar_read(0x15, 4), sec);
    assert_eq!(v.bar_read(0x16, 1), sec & 0xff);
    let bad = v.violations();
    assert_eq!(bad.len(), 2);
    assert_eq!((bad[0].offset, bad[0].size, bad[0].write), (0x15, 4, false));
    assert_eq!(bad[0].reason, ViolationReason::Undecoded);
    // Byte-wise assembly of TIME_SEC, what Linux's legacy accessors do,
    // gives junk in bytes 1-3.
    let b0 = v.bar_read(Reg::TIME_SEC_LOW, 1);
    let b1 = v.bar_read(Reg::TIME_SEC_LOW + 1, 1);
    assert_eq!(b0, sec & 0xff);
    assert_eq!(b1, b0);
    // Undecoded writes do nothing, but are flagged too.
    v.bar_write(0x28, 4, 0x1234);
    assert_eq!(last_violation(&v), ViolationReason::Undecoded);
    v.bar_write(0x1000, 4, 0);
    assert_eq!(last_violation(&v), ViolationReason::OutsideBar);
    v.bar_read(Reg::COMMAND, 3);
    assert_eq!(last_violation(&v), ViolationReason::BadSize);
}

#[test]
fn wrong_widths_work_like_vmd_but_are_flagged() {
    let (mut v, _) = stop_posted();
    // 4 bytes at status: vmd returns the status byte.
    assert_eq!(v.bar_read(Reg::DEVICE_STATUS, 4), 7);
    // 1 byte of COMMAND: the low byte.
    assert_eq!(v.bar_read(Reg::COMMAND, 1), 2);
    let bad = v.violations();
    assert_eq!(bad.len(), 2);
    assert_eq!(
        bad[0].reason,
        ViolationReason::WrongWidth {
            reg: Reg::DeviceStatus,
            natural: 1
        }
    );
    assert_eq!(
        bad[1].reason,
        ViolationReason::WrongWidth {
            reg: Reg::Command,
            natural: 4
        }
    );
    // vmd passes the whole EAX on a write: junk above the byte counts.
    v.bar_write(Reg::COMMAND, 1, 0x0000_0102);
    assert_logged(&v, "illegal request 258");
    assert_eq!(timer_kind(&v), Some(TimerKind::Ack));
    // A wide status write keeps the low byte (uint8_t in vmd).
    v.bar_write(Reg::DEVICE_STATUS, 4, 0x0203_0407);
    assert_eq!(v.device_status(), 7);
}

#[test]
fn status_zero_keeps_pending_command_isr_and_timer() {
    let (mut v, c) = stop_posted();
    v.bar_write(Reg::DEVICE_STATUS, 1, 0);
    assert_eq!(v.device_status(), 0);
    assert_eq!(v.pending_command(), REBOOT);
    assert_eq!(v.isr(), ISR_CONFIG_CHANGE);
    assert_eq!(v.guest_features(), 7);
    assert_logged(
        &v,
        "guest wrote status 0; no real reset, pending command 0x2",
    );
    // A restarting driver still sees the command.
    handshake(&mut v, 7);
    assert_eq!(read_cmd(&mut v), REBOOT);
    assert_ended_after(&mut v, &c, 3.0, VmEnd::AckTimeout);
}

#[test]
fn a_dead_device_reads_ones_and_records_nothing() {
    let (mut v, _) = ready();
    v.vmctl_stop_force();
    let (n, events) = (v.accesses(), v.events().len());
    assert_eq!(v.bar_read(Reg::COMMAND, 4), 0xffff_ffff);
    assert_eq!(v.bar_read(Reg::ISR, 1), 0xff);
    v.bar_write(Reg::DEVICE_STATUS, 1, 0);
    v.bar_write(Reg::QUEUE_ADDRESS, 4, 1);
    v.bar_write(0x15, 4, 1);
    assert_eq!(v.accesses(), n);
    assert_eq!(v.events().len(), events);
    assert!(v.violations().is_empty());
    assert!(v.probe_writes().is_empty());
    assert_eq!(v.status_writes(), &[0, 1, 3, 7]);
    assert!(!v.request_syncrtc());
}

#[test]
fn plain_registers() {
    let (mut v, _) = ready();
    assert_eq!(v.bar_read(Reg::DEVICE_FEATURES, 4), 7);
    v.bar_write(Reg::DEVICE_FEATURES, 4, 0xff);
    assert_eq!(v.bar_read(Reg::DEVICE_FEATURES, 4), 7);
    assert_logged(&v, "vmmci: illegal write 0xff to DEVICE_FEATURES");
    v.bar_write(Reg::QUEUE_SIZE, 2, 16);
    assert_eq!(v.bar_read(Reg::QUEUE_SIZE, 2), 0);
    v.bar_write(Reg::ISR, 1, 2);
    assert_eq!(v.bar_read(Reg::ISR, 1), 0);
    assert_logged(&v, "illegal write 0x2 to ISR");
    v.bar_write(Reg::QUEUE_SELECT, 2, 0x1_0003);
    assert_eq!(v.bar_read(Reg::QUEUE_SELECT, 2), 3);
    v.bar_write(Reg::QUEUE_NOTIFY, 2, 9);
    assert_eq!(v.bar_read(Reg::QUEUE_NOTIFY, 2), 9);
    v.bar_write(Reg::TIME_SEC_LOW, 4, 1);
    assert_logged(&v, "write 0x1 to TIME_SEC ignored");
    let (mut custom, _) = sim_with(VmdConfig {
        features: 0x3,
        ..VmdConfig::default()
    });
    assert_eq!(custom.bar_read(Reg::DEVICE_FEATURES, 4), 3);
}

#[test]
fn probe_writes_carry_the_host_time() {
    let (mut v, c) = ready();
    v.jump_host_clock(-2 * S);
    c.advance(secs(0.25));
    v.bar_write(Reg::QUEUE_ADDRESS, 4, 0xabcd);
    assert_eq!(v.probe_writes(), &[(T0 - 2 * S + S / 4, 0xabcd)]);
    assert_eq!(v.bar_read(Reg::QUEUE_ADDRESS, 4), 0xabcd);
}

#[test]
fn an_undecoded_in_gives_the_guest_its_own_eax_back() {
    let (mut v, _) = ready();
    // vmmci_io() has no case for 0x15: *data keeps what the guest had.
    assert_eq!(v.bar_in(0x15, 4, 0x1234_5678), 0x1234_5678);
    assert_eq!(v.bar_in(0x15, 1, 0x1234_5678), 0x78);
    // A decoded register replaces it.
    assert_eq!(v.bar_in(Reg::DEVICE_FEATURES, 4, 0xdead_beef), 7);
    assert_eq!(v.violations().len(), 2);
    v.vmctl_stop_force();
    assert_eq!(v.bar_in(Reg::DEVICE_FEATURES, 4, 0), u32::MAX);
}
