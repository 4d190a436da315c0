//! The status file (`DATABASE_LOCKS_STATUS_FILE`): `0` idle, `1` acquiring, `2` holding,
//! as the seed writes it, for a liveness probe or a dashboard to read.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// Where a handle's status goes, and what it last wrote there.
#[derive(Debug, Default)]
pub(crate) struct StatusFile {
    path: Mutex<Option<PathBuf>>,
    last: Mutex<Option<u8>>,
}

impl StatusFile {
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        StatusFile {
            path: Mutex::new(path),
            last: Mutex::new(None),
        }
    }

    /// A new file (or none): the next update writes it whatever it shows.
    pub(crate) fn set_path(&self, path: Option<PathBuf>) {
        *self.path.lock() = path;
        *self.last.lock() = None;
    }

    /// Writes the status as it is now (`current`, read under the writers' turn). Writers
    /// take turns, and each writes what the state is when its turn comes, so the last
    /// write always shows the last state (a writer that computed its status before
    /// another thread changed the state cannot overwrite the newer one). Each write
    /// replaces the file whole (a temporary file renamed over it), so a reader never sees
    /// it half written.
    pub(crate) fn update(&self, current: impl FnOnce() -> u8) {
        let Some(path) = self.path.lock().clone() else {
            return;
        };
        let mut last = self.last.lock();
        let status = current();
        if *last == Some(status) {
            return;
        }
        match write_atomically(&path, status) {
            Ok(()) => *last = Some(status),
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot write the lock status file: {err}")
            }
        }
    }
}

/// Writes `status` to a temporary file beside `path` and renames it over `path`.
fn write_atomically(path: &Path, status: u8) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, status.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
