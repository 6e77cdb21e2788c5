//! Unit tests of the image pieces.

use super::cpio::Cpio;
use super::kernel::{modinfo_field, module_name_of};

#[test]
fn cpio_layout() {
    let mut c = Cpio::new();
    c.file("etc/x", 0o644, b"hello");
    c.symlink("bin/sh", "/bin/busybox");
    let data = c.finish();
    assert!(data.starts_with(b"070701"));
    assert_eq!(data.len() % 512, 0);
    let s = String::from_utf8_lossy(&data);
    assert!(s.contains("etc\0"));
    assert!(s.contains("etc/x\0"));
    assert!(s.contains("hello"));
    assert!(s.contains("TRAILER!!!"));
    // Every header starts 4-aligned.
    for (i, _) in s.match_indices("070701") {
        assert_eq!(i % 4, 0);
    }
}

#[test]
fn module_names_and_modinfo() {
    assert_eq!(
        module_name_of("kernel/fs/ext4/ext4.ko").as_deref(),
        Some("ext4")
    );
    assert_eq!(
        module_name_of("virtio_blk.ko.xz").as_deref(),
        Some("virtio_blk")
    );
    assert_eq!(
        module_name_of("crc32c-generic.ko").as_deref(),
        Some("crc32c_generic")
    );
    assert_eq!(module_name_of("foo.txt"), None);
    let blob = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
    assert_eq!(modinfo_field(blob, "depends"), "virtio,virtio_ring");
    assert_eq!(modinfo_field(blob, "softdep"), "");
}
