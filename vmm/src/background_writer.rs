//! Writes runs of bytes into a file on a thread of its own, so that the thread producing them
//! (decoding a QEMU stream) and the kernel's copy into the file (a memfd: page allocation and
//! copy) run at the same time, on two cores.
//!
//! The producer fills buffers of up to [`RUN_CAP`] bytes, each one contiguous run of the file, and
//! hands them over with [`BackgroundWriter::write_at`]; at most [`BUFFERS`] are in flight, so the
//! memory used is bounded whatever the input. [`BackgroundWriter::sync`] waits until everything
//! handed over is in the file and reports the first write error.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Largest run written with one call.
pub const RUN_CAP: usize = 2 << 20;
/// Buffers in flight between the producer and the writer thread.
const BUFFERS: usize = 4;

enum Job {
    Write {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Answer once every earlier write is done, with the first error if one failed.
    Sync(SyncSender<Option<io::Error>>),
}

/// A file written by a thread of its own; dropping it waits for the thread.
pub struct BackgroundWriter {
    jobs: Option<SyncSender<Job>>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundWriter {
    /// Starts the writer thread for `file`.
    pub fn new(file: File) -> io::Result<Self> {
        let (jobs, job_queue) = mpsc::sync_channel::<Job>(BUFFERS);
        let (spare_tx, spare) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            // Cannot fail: the channel holds BUFFERS and its receiver is alive.
            let _ = spare_tx.send(Vec::with_capacity(RUN_CAP));
        }
        let thread = std::thread::Builder::new()
            .name("ram-writer".into())
            .spawn(move || write_jobs(&file, &job_queue, &spare_tx))?;
        Ok(Self {
            jobs: Some(jobs),
            spare,
            thread: Some(thread),
        })
    }

    /// An empty buffer of capacity [`RUN_CAP`] to fill (waits while all are in flight).
    pub fn buffer(&self) -> io::Result<Vec<u8>> {
        self.spare.recv().map_err(|_| stopped())
    }

    /// Hands over `bytes` (from [`Self::buffer`]) to be written at `offset`.
    pub fn write_at(&self, offset: u64, bytes: Vec<u8>) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Job::Write { offset, bytes })
            .map_err(|_| stopped())
    }

    /// Waits until everything handed over is written; the first error of any write.
    pub fn sync(&self) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        let (answer_tx, answer) = mpsc::sync_channel(1);
        jobs.send(Job::Sync(answer_tx)).map_err(|_| stopped())?;
        match answer.recv().map_err(|_| stopped())? {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what it holds.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("the RAM writer thread stopped")
}

/// The writer thread: writes each run, gives its buffer back, remembers the first error.
fn write_jobs(file: &File, jobs: &Receiver<Job>, spare: &SyncSender<Vec<u8>>) {
    let mut failure: Option<io::Error> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Write { offset, mut bytes } => {
                if failure.is_none() {
                    failure = file.write_all_at(&bytes, offset).err();
                }
                bytes.clear();
                // The producer may be gone (it gave up); the buffer is then just dropped.
                let _ = spare.try_send(bytes);
            }
            Job::Sync(answer) => {
                let _ = answer.send(failure.take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn runs_land_at_their_offsets_and_sync_waits_for_them() {
        let file = tempfile_in_memory();
        let writer = BackgroundWriter::new(file.try_clone().unwrap()).unwrap();
        for run in 0..10u8 {
            let mut buffer = writer.buffer().unwrap();
            buffer.extend(std::iter::repeat_n(run + 1, 4096));
            writer.write_at(u64::from(9 - run) * 4096, buffer).unwrap();
        }
        writer.sync().unwrap();
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 10 * 4096);
        for run in 0..10usize {
            assert!(bytes[(9 - run) * 4096..][..4096]
                .iter()
                .all(|&b| b == run as u8 + 1));
        }
    }

    #[test]
    fn a_failed_write_is_reported_by_sync() {
        let read_only = File::open("/proc/self/cmdline").unwrap();
        let writer = BackgroundWriter::new(read_only).unwrap();
        let mut buffer = writer.buffer().unwrap();
        buffer.push(1);
        writer.write_at(0, buffer).unwrap();
        assert!(writer.sync().is_err());
    }

    fn tempfile_in_memory() -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: a valid NUL-terminated name; the descriptor is checked and then owned.
        let fd = unsafe { libc::memfd_create(c"background-writer-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { File::from_raw_fd(fd) }
    }
}
