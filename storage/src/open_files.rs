//! Segment and index files opened on use, within a process-wide budget of
//! descriptors.
//!
//! A broker may host more partitions than it may hold open files (100,000
//! partitions against a hard limit of 20,000 descriptors): keeping every
//! `.log` open would fail at start-up. A [`LazyFile`] opens its file when it
//! is first read or written and keeps it open; once more files are open
//! than the budget allows, the least recently used ones are closed (a
//! "second chance" clock: a file used since the clock last passed it stays
//! open one more round). A closed file is opened again on its next use.
//!
//! Closing loses nothing: data written through one descriptor is in the page
//! cache, and an fsync through any later descriptor of the same file makes it
//! durable. A reader that holds the handle while it is evicted keeps it open
//! until it is done, so the budget can be exceeded briefly, never by much.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::fs::{File, OpenOptions};

/// Until [`set_budget`] is called: enough for tests and small brokers, far
/// below any usual open-file limit.
const DEFAULT_BUDGET: usize = 4096;

/// How many files may be open, and which are, oldest first.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    open: AtomicUsize,
    /// Open files in the order they were opened: the clock's hand is the front.
    clock: Mutex<VecDeque<Weak<Slot>>>,
}

/// The budget every segment and index file of the process shares.
static PROCESS: Budget = Budget::new(DEFAULT_BUDGET);

/// Sets how many segment and index files the process keeps open at most
/// (a server gives them a share of its open-file limit).
pub fn set_budget(files: usize) {
    PROCESS.limit.store(files.max(1), Ordering::Relaxed);
}

/// Segment and index files the process has open right now.
pub fn open_count() -> usize {
    PROCESS.open_count()
}

impl Budget {
    pub const fn new(limit: usize) -> Self {
        Budget {
            limit: AtomicUsize::new(limit),
            open: AtomicUsize::new(0),
            clock: Mutex::new(VecDeque::new()),
        }
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Puts a just-opened slot on the clock, then closes files from the
    /// hand until the budget holds.
    fn admit(&self, slot: &Arc<Slot>) {
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        clock.push_back(Arc::downgrade(slot));
        // Every slot is looked at most twice (once to spare it, once to close it).
        let mut looks = 2 * clock.len();
        while self.open_count() > self.limit.load(Ordering::Relaxed) && looks > 0 {
            looks -= 1;
            let Some(weak) = clock.pop_front() else { break };
            let Some(candidate) = weak.upgrade() else {
                continue; // Its file is gone already.
            };
            if candidate.used.swap(false, Ordering::Relaxed)
                || candidate.pinned.load(Ordering::Relaxed)
            {
                clock.push_back(weak);
                continue;
            }
            // A slot locked right now is in use: spare it.
            let closed = match candidate.file.try_lock() {
                Ok(mut file) => {
                    candidate.close(&mut file);
                    true
                }
                Err(_) => false,
            };
            if !closed {
                clock.push_back(weak);
            }
        }
        // Entries of dropped or closed slots pile up while nothing is evicted.
        if clock.len() > 2 * self.open_count() + 1024 {
            clock.retain(|w| w.upgrade().is_some_and(|s| s.lock().is_some()));
        }
    }
}

#[derive(Debug)]
struct Slot {
    budget: &'static Budget,
    file: Mutex<Option<Arc<File>>>,
    /// Used since the clock last passed: spared once.
    used: AtomicBool,
    /// Never closed by the clock (see [`LazyFile::pin`]).
    pinned: AtomicBool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<File>>> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, file: &mut Option<Arc<File>>) {
        if file.take().is_some() {
            self.budget.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn keep(&self, file: &mut Option<Arc<File>>, opened: Arc<File>) {
        *file = Some(opened);
        self.used.store(true, Ordering::Relaxed);
        self.budget.open.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.close(&mut self.lock());
    }
}

/// A file that exists on disk, opened (read + append) when used.
#[derive(Debug)]
pub struct LazyFile {
    path: PathBuf,
    slot: Arc<Slot>,
}

impl LazyFile {
    /// The file at `path`, not opened yet, in the process's budget.
    pub fn closed(path: PathBuf) -> Self {
        Self::closed_in(path, &PROCESS)
    }

    pub fn closed_in(path: PathBuf, budget: &'static Budget) -> Self {
        LazyFile {
            path,
            slot: Arc::new(Slot {
                budget,
                file: Mutex::new(None),
                used: AtomicBool::new(false),
                pinned: AtomicBool::new(false),
            }),
        }
    }

    /// The file at `path` with a handle just opened on it (read + append),
    /// kept as if this had opened it.
    pub fn opened(path: PathBuf, file: File) -> Self {
        let lazy = Self::closed(path);
        lazy.slot.keep(&mut lazy.slot.lock(), Arc::new(file));
        lazy.slot.budget.admit(&lazy.slot);
        lazy
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_open(&self) -> bool {
        self.slot.lock().is_some()
    }

    /// The open file, opened now if it is not.
    pub fn get(&self) -> io::Result<Arc<File>> {
        let mut slot = self.slot.lock();
        self.slot.used.store(true, Ordering::Relaxed);
        if let Some(file) = &*slot {
            return Ok(file.clone());
        }
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.path)?,
        );
        self.slot.keep(&mut slot, file.clone());
        drop(slot);
        self.slot.budget.admit(&self.slot);
        Ok(file)
    }

    /// Opens the file if it is closed and keeps it open from now on: its
    /// path is about to name another file (a cleaned segment renamed over
    /// it), and this one must go on reading what it has open.
    pub fn pin(&self) -> io::Result<()> {
        self.get()?;
        self.slot.pinned.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the descriptor now (before the file is removed or renamed).
    pub fn close(&self) {
        self.slot.close(&mut self.slot.lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn budget(limit: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::new(limit)))
    }

    fn files(dir: &Path, n: usize, budget: &'static Budget) -> Vec<LazyFile> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("f{i}"));
                std::fs::write(&path, format!("file {i}")).unwrap();
                LazyFile::closed_in(path, budget)
            })
            .collect()
    }

    fn read(file: &LazyFile) -> String {
        let mut buf = vec![0u8; 64];
        let n = file.get().unwrap().read_at(&mut buf, 0).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn files_beyond_the_budget_are_closed_and_reopened_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let budget = budget(3);
        let files = files(dir.path(), 10, budget);
        for (i, f) in files.iter().enumerate() {
            assert_eq!(read(f), format!("file {i}"));
            assert!(budget.open_count() <= 3, "{} open", budget.open_count());
        }
        assert!(files[9].is_open(), "the newest stays open");
        assert!(!files[0].is_open());
        // Writes through a reopened handle land in the same file.
        (&*files[0].get().unwrap()).write_all(b"!").unwrap();
        assert_eq!(read(&files[0]), "file 0!");
        drop(files);
        assert_eq!(budget.open_count(), 0);
    }

    #[test]
    fn a_file_used_since_the_clock_passed_outlives_an_idle_one() {
        let dir = tempfile::tempdir().unwrap();
        let budget = budget(2);
        let files = files(dir.path(), 4, budget);
        let [a, b, c, d] = &files[..] else {
            unreachable!()
        };
        read(a);
        read(b);
        // Over budget: the clock spares a, b, c once each, then closes a.
        read(c);
        assert!(!a.is_open() && b.is_open() && c.is_open());
        // b is used again, c is not: the next file closes c.
        read(b);
        read(d);
        assert!(b.is_open() && !c.is_open() && d.is_open());
    }

    #[test]
    fn a_pinned_file_stays_open_on_its_path_whatever_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let budget = budget(1);
        let files = files(dir.path(), 3, budget);
        files[0].pin().unwrap();
        std::fs::rename(files[2].path(), files[0].path()).unwrap();
        read(&files[1]);
        assert!(files[0].is_open());
        assert_eq!(
            read(&files[0]),
            "file 0",
            "the pinned file, not the one renamed over it"
        );
    }

    #[test]
    fn a_handle_in_use_outlives_its_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let budget = budget(1);
        let files = files(dir.path(), 2, budget);
        let held = files[0].get().unwrap();
        read(&files[1]);
        assert!(!files[0].is_open());
        let mut buf = [0u8; 6];
        held.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"file 0");
    }
}
