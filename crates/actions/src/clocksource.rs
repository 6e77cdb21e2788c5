//! What the guest kernel and the CPU say about the guest's clock: the clock
//! source files in sysfs, the TSC flags in /proc/cpuinfo, and CPUID's
//! hypervisor leaves (does the host offer kvm-clock?). Reading only.

use std::path::Path;

use vmmci_report::clocksource::ClockSource;

pub const SYSFS_CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0";
pub const PROC_CPUINFO: &str = "/proc/cpuinfo";

/// CPUID leaf 1, ECX bit 31: running under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;
/// Hypervisors put their signature at 0x40000000 and may offer another
/// interface every 0x100 leaves above it (Linux scans the same range).
const HYPERVISOR_BASES: std::ops::Range<u32> = 0x4000_0000..0x4001_0000;
const KVM_SIGNATURE: &str = "KVMKVMKVM";
/// KVM_FEATURE_CLOCKSOURCE and KVM_FEATURE_CLOCKSOURCE2 (leaf base + 1, EAX).
const KVM_CLOCK_FEATURES: u32 = 1 | 1 << 3;

/// One CPUID leaf: EAX, EBX, ECX, EDX. A trait so tests can be any CPU.
pub trait Cpuid {
    fn leaf(&self, leaf: u32) -> [u32; 4];
}

/// This CPU.
pub struct HostCpuid;

impl Cpuid for HostCpuid {
    #[cfg(target_arch = "x86_64")]
    fn leaf(&self, leaf: u32) -> [u32; 4] {
        // SAFETY: CPUID exists on every x86_64 CPU and has no side effects
        // beyond a VM exit under a hypervisor.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(leaf) };
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn leaf(&self, _leaf: u32) -> [u32; 4] {
        [0; 4]
    }
}

/// The hypervisor's signature and whether it offers kvm-clock. Costly in a
/// VM (each leaf is an exit): read once at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HypervisorFacts {
    pub signature: Option<String>,
    pub kvm_clock_offered: bool,
}

impl HypervisorFacts {
    pub fn read(cpuid: &dyn Cpuid) -> HypervisorFacts {
        if cpuid.leaf(1)[2] & HYPERVISOR_BIT == 0 {
            return HypervisorFacts::default();
        }
        let signature = |base: u32| {
            let [_, b, c, d] = cpuid.leaf(base);
            let bytes: Vec<u8> = [b, c, d].iter().flat_map(|w| w.to_le_bytes()).collect();
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim_end_matches('\0');
            (!text.is_empty() && text.chars().all(|ch| ch.is_ascii_graphic()))
                .then(|| text.to_string())
        };
        let kvm = HYPERVISOR_BASES
            .step_by(0x100)
            .find(|&base| signature(base).as_deref() == Some(KVM_SIGNATURE));
        let kvm_clock_offered = kvm.is_some_and(|base| {
            cpuid.leaf(base)[0] > base && cpuid.leaf(base + 1)[0] & KVM_CLOCK_FEATURES != 0
        });
        HypervisorFacts {
            signature: signature(HYPERVISOR_BASES.start),
            kvm_clock_offered,
        }
    }
}

/// The clock source facts, from sysfs and /proc/cpuinfo (cheap: read them
/// at every report) and the hypervisor facts read at start.
pub fn read(sysfs: &Path, cpuinfo: &Path, hypervisor: &HypervisorFacts) -> ClockSource {
    let file = |name: &str| std::fs::read_to_string(sysfs.join(name)).ok();
    let flags = std::fs::read_to_string(cpuinfo)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        })
        .unwrap_or_default();
    let has_flag = |f: &str| flags.iter().any(|x| x == f);
    ClockSource {
        current: file("current_clocksource").map(|s| s.trim().to_string()),
        available: file("available_clocksource")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        hypervisor: hypervisor.signature.clone(),
        kvm_clock_offered: hypervisor.kvm_clock_offered,
        tsc_constant: has_flag("constant_tsc"),
        tsc_nonstop: has_flag("nonstop_tsc"),
        ..ClockSource::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A CPU that answers the given leaves and zeros elsewhere.
    struct FakeCpuid(HashMap<u32, [u32; 4]>);

    impl Cpuid for FakeCpuid {
        fn leaf(&self, leaf: u32) -> [u32; 4] {
            self.0.get(&leaf).copied().unwrap_or([0; 4])
        }
    }

    fn sig(max: u32, text: &[u8; 12]) -> [u32; 4] {
        let w = |i: usize| u32::from_le_bytes(text[i..i + 4].try_into().unwrap());
        [max, w(0), w(4), w(8)]
    }

    fn vmm(kvm_at: Option<(u32, u32)>) -> FakeCpuid {
        let mut leaves = HashMap::from([
            (1, [0, 0, HYPERVISOR_BIT, 0]),
            (0x4000_0000, sig(0x4000_0000, b"OpenBSDVMM58")),
        ]);
        if let Some((base, features)) = kvm_at {
            leaves.insert(base, sig(base + 1, b"KVMKVMKVM\0\0\0"));
            leaves.insert(base + 1, [features, 0, 0, 0]);
        }
        FakeCpuid(leaves)
    }

    #[test]
    fn older_vmm_has_its_signature_and_no_kvm_clock() {
        let h = HypervisorFacts::read(&vmm(None));
        assert_eq!(h.signature.as_deref(), Some("OpenBSDVMM58"));
        assert!(!h.kvm_clock_offered);
    }

    #[test]
    fn recent_vmm_offers_kvm_clock_at_0x40000100() {
        let h = HypervisorFacts::read(&vmm(Some((0x4000_0100, 1 << 3))));
        assert_eq!(h.signature.as_deref(), Some("OpenBSDVMM58"));
        assert!(h.kvm_clock_offered);
        let no_clock = HypervisorFacts::read(&vmm(Some((0x4000_0100, 1 << 5))));
        assert!(
            !no_clock.kvm_clock_offered,
            "KVM leaves without the clock feature"
        );
    }

    #[test]
    fn bare_metal_reads_no_hypervisor_whatever_the_high_leaves_say() {
        let mut cpu = vmm(Some((0x4000_0000, 1)));
        cpu.0.insert(1, [0; 4]);
        assert_eq!(HypervisorFacts::read(&cpu), HypervisorFacts::default());
    }

    #[test]
    fn sysfs_and_cpuinfo_are_read_as_the_kernel_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("current_clocksource"), "tsc\n").unwrap();
        std::fs::write(
            dir.path().join("available_clocksource"),
            "tsc hpet acpi_pm \n",
        )
        .unwrap();
        let cpuinfo = dir.path().join("cpuinfo");
        std::fs::write(
            &cpuinfo,
            "processor\t: 0\nflags\t\t: fpu tsc constant_tsc rep_good nopl\n",
        )
        .unwrap();
        let h = HypervisorFacts {
            signature: Some("OpenBSDVMM58".into()),
            kvm_clock_offered: false,
        };
        let c = read(dir.path(), &cpuinfo, &h);
        assert_eq!(c.current.as_deref(), Some("tsc"));
        assert_eq!(c.available, vec!["tsc", "hpet", "acpi_pm"]);
        assert!(c.tsc_constant && !c.tsc_nonstop);
        assert_eq!(c.hypervisor.as_deref(), Some("OpenBSDVMM58"));
        let advice = c.advise(None).advice;
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(advice[0].contains("nonstop_tsc"));
        let missing = read(&dir.path().join("none"), &dir.path().join("none"), &h);
        assert_eq!(missing.current, None);
        assert!(missing.available.is_empty());
    }
}
