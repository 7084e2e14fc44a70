//! Creating the userfaultfd with raw syscalls, then handing it to the `userfaultfd` crate.
//!
//! The crate cannot ask for `WP_UNPOPULATED` (write-protect never-touched anonymous pages) and its
//! builder defaults to `UFFD_USER_MODE_ONLY`, under which a KVM_RUN that writes a protected page gets
//! EFAULT instead of waiting for us. Creating the descriptor ourselves fixes both; every later
//! operation goes through the crate.

use std::io;
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use userfaultfd::Uffd;

const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFD_API: u64 = 0xaa;
pub(super) const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub(super) const FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub(super) const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

fn open_raw() -> io::Result<libc::c_int> {
    // No UFFD_USER_MODE_ONLY: faults taken inside the kernel (KVM's GUP, copy_to_user) must reach us.
    // SAFETY: plain syscall with flag arguments; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    libc::c_int::try_from(fd)
        .map_err(|_| io::Error::other("userfaultfd returned an out-of-range fd"))
}

fn handshake(fd: libc::c_int, features: u64) -> io::Result<u64> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes exactly one `UffdioApi`, which lives on this stack frame.
    let rc = unsafe { libc::ioctl(fd, UFFDIO_API, &mut api as *mut UffdioApi) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(api.features)
}

/// Features this kernel supports (asked once per process; the probe descriptor is closed).
pub(super) fn supported_features() -> io::Result<u64> {
    static SUPPORTED: OnceLock<Result<u64, i32>> = OnceLock::new();
    let probed = SUPPORTED.get_or_init(|| {
        let fd = open_raw().map_err(|err| err.raw_os_error().unwrap_or(libc::EIO))?;
        let features = handshake(fd, 0).map_err(|err| err.raw_os_error().unwrap_or(libc::EIO));
        // SAFETY: `fd` was opened above and is closed exactly once, here.
        unsafe { libc::close(fd) };
        features
    });
    probed.map_err(io::Error::from_raw_os_error)
}

/// A non-blocking userfaultfd that sees kernel-mode faults, with `features` enabled.
pub(super) fn create(features: u64) -> io::Result<Uffd> {
    let fd = open_raw()?;
    if let Err(err) = handshake(fd, features) {
        // SAFETY: `fd` is ours and not yet wrapped; closed exactly once.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    // SAFETY: `fd` is an initialised userfaultfd that nothing else owns; `Uffd` closes it on drop.
    Ok(unsafe { Uffd::from_raw_fd(fd) })
}
