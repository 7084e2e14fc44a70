use std::time::Duration;

use super::*;
use crate::test_support::{make_fifo, within};

const DEADLINE: Duration = Duration::from_secs(5);

#[test]
fn fifo_without_writer_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("kernel");
    make_fifo(&fifo);
    let opened = within(DEADLINE, move || open_regular(&fifo, "kernel"));
    match opened {
        Err(HostFileError::NotRegular { kind, .. }) => assert_eq!(kind, "a FIFO"),
        other => panic!("a FIFO gave {other:?}"),
    }
    let fifo = dir.path().join("kernel");
    let read = within(DEADLINE, move || read_capped(&fifo, "initrd", 1 << 20));
    let err = read.unwrap_err();
    assert!(
        err.to_string().contains("is a FIFO, not a regular file"),
        "{err}"
    );
}

#[test]
fn dev_zero_is_refused_instead_of_read_without_bound() {
    let read = within(DEADLINE, || {
        read_capped(Path::new("/dev/zero"), "kernel", 64 << 20)
    });
    match read {
        Err(HostFileError::NotRegular { kind, .. }) => assert_eq!(kind, "a character device"),
        other => panic!("/dev/zero gave {:?}", other.map(|bytes| bytes.len())),
    }
}

#[test]
fn directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_regular(dir.path(), "kernel").unwrap_err();
    assert!(
        matches!(
            err,
            HostFileError::NotRegular {
                kind: "a directory",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_regular(&dir.path().join("absent"), "initrd").unwrap_err();
    assert!(matches!(err, HostFileError::Io { .. }), "{err:?}");
}

#[test]
fn regular_file_is_read_and_left_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernel");
    std::fs::write(&path, b"0123456789").unwrap();
    let file = open_regular(&path, "kernel").unwrap();
    // SAFETY: F_GETFL on a descriptor owned by `file`.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK left set");
    assert_eq!(read_capped(&path, "kernel", 10).unwrap(), b"0123456789");
    assert!(matches!(
        read_capped(&path, "kernel", 9),
        Err(HostFileError::TooLarge { limit: 9, .. })
    ));
    let (_, len) = open_regular_capped(&path, "initrd", 10).unwrap();
    assert_eq!(len, 10);
}

#[test]
fn cap_applies_to_bytes_read_not_to_reported_length() {
    // procfs files report length 0 but hold more.
    let path = Path::new("/proc/self/maps");
    assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
    assert!(matches!(
        read_capped(path, "kernel", 16),
        Err(HostFileError::TooLarge { limit: 16, .. })
    ));
    assert!(read_capped(path, "kernel", 1 << 20).unwrap().len() > 16);
}
