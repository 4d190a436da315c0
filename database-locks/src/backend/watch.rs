//! SQLite: sleeping until the database's files are written, rather than looking at
//! `PRAGMA data_version` every millisecond.
//!
//! Every process on one SQLite file shares one host, so the kernel can say when another
//! process writes the file: on Linux an inotify watch on the database file and its
//! write-ahead log. A commit writes its pages to the log (`-wal`) and then marks them
//! committed in shared memory, which inotify does not see; so a write wakes the listener a
//! moment before the commit is visible. The listener therefore keeps looking every
//! millisecond for a few milliseconds after each write ([`HOT`]), and never blocks longer
//! than the timeout its caller gives (50 ms while somebody waits, `notify.rs`): a commit
//! whose writer stalls between the two steps is found at the next look, never lost.
//!
//! Elsewhere (no inotify), or when a watch cannot be set up (a file on a network
//! filesystem, the per-user watch limit reached), the listener looks every millisecond as
//! before; waiting works the same, it only costs more.

use std::path::Path;
use std::time::Duration;

/// How long the listener keeps looking every millisecond after a write: longer than the
/// gap between a commit's write to the log and its mark in shared memory, which is
/// microseconds on an idle machine.
pub(crate) const HOT: Duration = Duration::from_millis(5);

/// A watch on the writes to one SQLite database's files.
pub(crate) struct FileWatch {
    #[cfg(all(target_os = "linux", feature = "sqlite"))]
    inner: linux::Inotify,
}

impl FileWatch {
    /// Watches the database file `db` and its write-ahead log; `None` where that cannot
    /// be done.
    pub(crate) fn new(db: &Path) -> Option<Self> {
        #[cfg(all(target_os = "linux", feature = "sqlite"))]
        {
            match linux::Inotify::new(db) {
                Ok(inner) => Some(FileWatch { inner }),
                Err(err) => {
                    tracing::debug!(
                        "cannot watch {} for writes ({err}); looking every millisecond",
                        db.display()
                    );
                    None
                }
            }
        }
        #[cfg(not(all(target_os = "linux", feature = "sqlite")))]
        {
            let _ = db;
            None
        }
    }

    /// Waits at most `timeout` for a write to the watched files: `Ok(true)` once one was
    /// written (also for writes made before this call that were not yet reported),
    /// `Ok(false)` when the time ran out. An error means the watch is no use any more (a
    /// watched file was deleted or replaced): look every millisecond instead.
    pub(crate) fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
        #[cfg(all(target_os = "linux", feature = "sqlite"))]
        {
            self.inner.wait(timeout)
        }
        #[cfg(not(all(target_os = "linux", feature = "sqlite")))]
        {
            let _ = timeout;
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }
}

#[cfg(all(target_os = "linux", feature = "sqlite"))]
mod linux {
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::time::Duration;

    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    pub(super) struct Inotify {
        fd: OwnedFd,
        buf: Vec<MaybeUninit<u8>>,
    }

    impl Inotify {
        pub(super) fn new(db: &Path) -> std::io::Result<Self> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            let flags = WatchFlags::MODIFY | WatchFlags::DELETE_SELF | WatchFlags::MOVE_SELF;
            inotify::add_watch(&fd, db, flags)?;
            // In WAL mode the log exists while any connection is open, and the listener
            // keeps one open. Without it (another journal mode) commits write the file.
            let mut wal = db.as_os_str().to_owned();
            wal.push("-wal");
            match inotify::add_watch(&fd, Path::new(&wal), flags) {
                Ok(_) | Err(Errno::NOENT) => {}
                Err(err) => return Err(err.into()),
            }
            Ok(Inotify {
                fd,
                // Events carry no names (files, not a directory, are watched): 16 bytes each.
                buf: vec![MaybeUninit::uninit(); 1024],
            })
        }

        /// Reads every event queued: whether any was a write. An error when a watched
        /// file is gone.
        fn drain(&mut self) -> std::io::Result<bool> {
            let mut written = false;
            let mut reader = inotify::Reader::new(&self.fd, &mut self.buf);
            loop {
                match reader.next() {
                    Ok(event) => {
                        let flags = event.events();
                        if flags.intersects(
                            ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::IGNORED,
                        ) {
                            return Err(std::io::Error::other("a watched file is gone"));
                        }
                        // Overflowed while nobody read (the listener reads only while
                        // somebody waits): writes were made, which ones does not matter.
                        written |= flags.intersects(ReadFlags::MODIFY | ReadFlags::QUEUE_OVERFLOW);
                    }
                    Err(Errno::WOULDBLOCK) => return Ok(written),
                    Err(Errno::INTR) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }

        pub(super) fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
            if self.drain()? {
                return Ok(true);
            }
            let timeout = Timespec::try_from(timeout).map_err(std::io::Error::other)?;
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Ok(false),
                Ok(_) | Err(Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
            self.drain()
        }
    }
}

#[cfg(all(test, target_os = "linux", feature = "sqlite"))]
mod tests {
    use super::FileWatch;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn a_write_by_another_handle_wakes_the_watch_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("locks.db");
        std::fs::write(&db, b"").unwrap();
        let mut watch = FileWatch::new(&db).expect("inotify works here");
        assert!(
            !watch.wait(Duration::from_millis(20)).unwrap(),
            "nothing written yet"
        );
        // Reading, and writing a neighbour, wake nothing.
        let _ = std::fs::read(&db).unwrap();
        std::fs::write(dir.path().join("other.db"), b"x").unwrap();
        assert!(!watch.wait(Duration::from_millis(20)).unwrap());
        let writer = std::thread::spawn({
            let db = db.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut file = std::fs::OpenOptions::new().append(true).open(db).unwrap();
                file.write_all(b"page").unwrap();
            }
        });
        // Woken by the write, well before this 60 s timeout.
        assert!(watch.wait(Duration::from_secs(60)).unwrap());
        writer.join().unwrap();
        // Reported once.
        assert!(!watch.wait(Duration::ZERO).unwrap());
    }

    #[test]
    fn a_deleted_file_ends_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("locks.db");
        std::fs::write(&db, b"").unwrap();
        let mut watch = FileWatch::new(&db).expect("a file without -wal can be watched");
        std::fs::remove_file(&db).unwrap();
        assert!(watch.wait(Duration::from_secs(60)).is_err());
    }

    #[test]
    fn a_missing_file_cannot_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileWatch::new(&dir.path().join("absent.db")).is_none());
    }
}
