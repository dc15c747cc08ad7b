//! A test file system that can lose power.
//!
//! A [`SimDisk`] watches one directory tree. The files stay real files (the
//! code under test reads and writes them as usual); the disk only keeps, on
//! the side, what a real disk would be sure to have:
//!
//! - per file, its content as of its last fsync (`sync_data`/`sync_all`);
//! - the directory entries as of the last fsync of their directory. Entry
//!   changes (create, rename, unlink) are kept in order, like a journaling
//!   file system commits them: fsyncing a directory makes every change up to
//!   its last change of that directory durable.
//!
//! [`SimDisk::power_loss`] then rewrites the tree to a state the disk could
//! really be in: a random prefix of the unsynced entry changes survives, and
//! each file keeps its synced content, or all of its unsynced changes, or a
//! random prefix of them (torn), or its new length with the unsynced tail
//! zeroed (size updated, data not). [`Outcome::Worst`] drops everything that
//! was not synced.
//!
//! It can also cut the power after a given number of mutating calls (every
//! later one fails and does nothing) and inject a failed write or `set_len`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::test_rng::Rng;

/// A mutating call on an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Sync,
    SetLen,
}

type Id = u64;
type Ino = (u64, u64);

/// One directory entry change, not yet known to be durable.
#[derive(Debug, Clone)]
enum Change {
    Create(PathBuf, Id),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

impl Change {
    fn touches(&self, dir: &Path) -> bool {
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        match self {
            Change::Create(p, _) | Change::Remove(p) => in_dir(p),
            Change::Rename(from, to) => in_dir(from) || in_dir(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Id>) {
        match self {
            Change::Create(p, id) => {
                names.insert(p.clone(), *id);
            }
            Change::Rename(from, to) => {
                if let Some(id) = names.remove(from) {
                    names.insert(to.clone(), id);
                }
            }
            Change::Remove(p) => {
                names.remove(p);
            }
        }
    }
}

#[derive(Debug)]
enum Fault {
    /// The next writes to the file take `after` more bytes, then one fails
    /// with ENOSPC.
    Write { id: Id, after: usize },
    /// The next `set_len` of the file fails.
    SetLen { id: Id },
}

/// What survives a power loss.
pub(crate) enum Outcome<'a> {
    /// Anything a disk could keep, drawn from the generator.
    Random(&'a mut Rng),
    /// Only what was synced.
    Worst,
}

#[derive(Debug, Default)]
struct Disk {
    root: PathBuf,
    next_id: Id,
    /// File content as of its last fsync (absent: never synced, i.e. empty).
    synced: HashMap<Id, Vec<u8>>,
    inos: HashMap<Ino, Id>,
    dirs: HashMap<Ino, PathBuf>,
    /// The entries as the running system sees them.
    current: BTreeMap<PathBuf, Id>,
    /// The entries sure to be on disk.
    durable: BTreeMap<PathBuf, Id>,
    /// Changes from `durable` to `current`, in order.
    pending: Vec<Change>,
    /// Mutating calls left before the power goes.
    budget: Option<u64>,
    dead: bool,
    faults: Vec<Fault>,
}

static DISKS: Mutex<Vec<Disk>> = Mutex::new(Vec::new());

fn disks() -> MutexGuard<'static, Vec<Disk>> {
    DISKS.lock().unwrap_or_else(|e| e.into_inner())
}

fn ino(m: &std::fs::Metadata) -> Ino {
    (m.dev(), m.ino())
}

fn power_off() -> io::Error {
    io::Error::other("simulated power loss")
}

impl Disk {
    fn scan(root: &Path) -> Disk {
        let mut disk = Disk {
            root: root.to_path_buf(),
            ..Disk::default()
        };
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let m = std::fs::metadata(&dir).expect("stat a watched directory");
            disk.dirs.insert(ino(&m), dir.clone());
            for entry in std::fs::read_dir(&dir).expect("list a watched directory") {
                let path = entry.expect("read a directory entry").path();
                let m = std::fs::symlink_metadata(&path).expect("stat a watched file");
                if m.is_dir() {
                    stack.push(path);
                } else {
                    disk.adopt(path, &m);
                }
            }
        }
        disk
    }

    /// Registers an existing file as fully durable.
    fn adopt(&mut self, path: PathBuf, m: &std::fs::Metadata) -> Id {
        let id = self.new_id();
        let content = std::fs::read(&path).unwrap_or_default();
        self.synced.insert(id, content);
        self.inos.insert(ino(m), id);
        self.current.insert(path.clone(), id);
        self.durable.insert(path, id);
        id
    }

    fn new_id(&mut self) -> Id {
        self.next_id += 1;
        self.next_id
    }

    fn path_of(&self, id: Id) -> Option<&PathBuf> {
        self.current.iter().find(|(_, &i)| i == id).map(|(p, _)| p)
    }

    /// True if the file or directory with inode `i` is one of ours. Inode
    /// numbers are reused, so the number alone is not enough.
    fn owns(&self, i: Ino) -> bool {
        let path = match self.inos.get(&i) {
            Some(&id) => self.path_of(id),
            None => self.dirs.get(&i),
        };
        path.is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| ino(&m) == i))
    }

    /// Counts a mutating call; `Err` once the power is off.
    fn spend(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(power_off());
        }
        match &mut self.budget {
            Some(0) => {
                self.dead = true;
                Err(power_off())
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn dir_synced(&mut self, dir: &Path) {
        if let Some(last) = self.pending.iter().rposition(|c| c.touches(dir)) {
            for change in self.pending.drain(..=last) {
                change.apply(&mut self.durable);
            }
        }
    }

    /// The bytes a file holds after the power loss.
    fn survivor(&self, id: Id, outcome: &mut Outcome<'_>) -> Vec<u8> {
        let synced = self.synced.get(&id).cloned().unwrap_or_default();
        let current = match self.path_of(id) {
            Some(p) => std::fs::read(p).unwrap_or_else(|_| synced.clone()),
            None => synced.clone(),
        };
        if current == synced {
            return synced;
        }
        let rng = match outcome {
            Outcome::Worst => return synced,
            Outcome::Random(rng) => rng,
        };
        let common = synced
            .iter()
            .zip(&current)
            .take_while(|(a, b)| a == b)
            .count();
        let cut = rng.range(common as u64, current.len() as u64) as usize;
        match rng.below(4) {
            0 => synced,
            1 => current,
            2 => current[..cut].to_vec(),
            _ => {
                let mut c = current;
                c[cut..].fill(0);
                c
            }
        }
    }
}

/// Finds the disk watching `path`.
fn by_path<'a>(disks: &'a mut [Disk], path: &Path) -> Option<&'a mut Disk> {
    disks.iter_mut().find(|d| path.starts_with(&d.root))
}

/// Finds the disk holding the open file `file`, and its inode.
fn by_file<'a>(disks: &'a mut [Disk], file: &std::fs::File) -> Option<(&'a mut Disk, Ino)> {
    if disks.is_empty() {
        return None;
    }
    let i = ino(&file.metadata().ok()?);
    let disk = disks.iter_mut().find(|d| d.owns(i))?;
    Some((disk, i))
}

/// Counts a mutating call on `file`; `Ok(true)` if the file is watched.
pub(crate) fn before_mutation(file: &std::fs::File, op: Op) -> io::Result<bool> {
    let mut disks = disks();
    let Some((disk, i)) = by_file(&mut disks, file) else {
        return Ok(false);
    };
    disk.spend()?;
    if op == Op::SetLen {
        let id = disk.inos.get(&i).copied();
        if let Some(at) = disk
            .faults
            .iter()
            .position(|f| matches!(f, Fault::SetLen { id: f_id } if Some(*f_id) == id))
        {
            disk.faults.remove(at);
            return Err(io::Error::other("injected set_len failure"));
        }
    }
    Ok(true)
}

/// How many of `len` bytes a write may take (`Err` for none).
pub(crate) fn before_write(file: &std::fs::File, len: usize) -> io::Result<usize> {
    let mut disks = disks();
    let Some((disk, i)) = by_file(&mut disks, file) else {
        return Ok(len);
    };
    disk.spend()?;
    let id = disk.inos.get(&i).copied();
    let Some(at) = disk
        .faults
        .iter()
        .position(|f| matches!(f, Fault::Write { id: f_id, .. } if Some(*f_id) == id))
    else {
        return Ok(len);
    };
    let Fault::Write { after, .. } = &mut disk.faults[at] else {
        unreachable!("found a write fault");
    };
    if *after == 0 {
        disk.faults.remove(at);
        return Err(io::Error::from_raw_os_error(28)); // ENOSPC
    }
    let n = len.min(*after);
    *after -= n;
    Ok(n)
}

pub(crate) fn before_path_mutation(path: &Path) -> io::Result<()> {
    match by_path(&mut disks(), path) {
        Some(disk) => disk.spend(),
        None => Ok(()),
    }
}

pub(crate) fn opened(path: &Path, file: &std::fs::File, create: bool) {
    let mut disks = disks();
    let Some(disk) = by_path(&mut disks, path) else {
        return;
    };
    let Ok(m) = file.metadata() else { return };
    if m.is_dir() {
        disk.dirs.insert(ino(&m), path.to_path_buf());
        return;
    }
    match disk.current.get(path) {
        Some(&id) => {
            disk.inos.insert(ino(&m), id);
        }
        None if create => {
            let id = disk.new_id();
            disk.inos.insert(ino(&m), id);
            disk.current.insert(path.to_path_buf(), id);
            disk.pending.push(Change::Create(path.to_path_buf(), id));
        }
        // Put there behind the disk's back (a test damaging a file).
        None => {
            disk.adopt(path.to_path_buf(), &m);
        }
    }
}

pub(crate) fn synced(file: &std::fs::File) {
    let mut disks = disks();
    let Some((disk, i)) = by_file(&mut disks, file) else {
        return;
    };
    if let Some(dir) = disk.dirs.get(&i).cloned() {
        disk.dir_synced(&dir);
    } else if let Some(&id) = disk.inos.get(&i) {
        if let Some(content) = disk.path_of(id).and_then(|p| std::fs::read(p).ok()) {
            disk.synced.insert(id, content);
        }
    }
}

pub(crate) fn renamed(from: &Path, to: &Path) {
    let mut disks = disks();
    let Some(disk) = by_path(&mut disks, from) else {
        return;
    };
    if let Some(id) = disk.current.remove(from) {
        disk.current.insert(to.to_path_buf(), id);
        disk.pending
            .push(Change::Rename(from.to_path_buf(), to.to_path_buf()));
    }
}

/// A file, or a whole tree, was removed.
pub(crate) fn removed(path: &Path) {
    let mut disks = disks();
    let Some(disk) = by_path(&mut disks, path) else {
        return;
    };
    let gone: Vec<PathBuf> = disk
        .current
        .keys()
        .filter(|p| p.starts_with(path))
        .cloned()
        .collect();
    for p in gone {
        disk.current.remove(&p);
        disk.pending.push(Change::Remove(p));
    }
}

/// A temporary directory for tests on the simulated disk, in memory
/// (`/dev/shm`) where there is one: the real disk's durability does not
/// matter to them, and on a busy disk ext4's implicit flushes (truncate,
/// rename over a file) make them slow.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("create a temporary directory")
}

/// Watches the tree at `root` (created if missing) until dropped. What is
/// there already counts as durable.
#[derive(Debug)]
pub(crate) struct SimDisk {
    root: PathBuf,
}

impl SimDisk {
    pub(crate) fn new(root: &Path) -> SimDisk {
        std::fs::create_dir_all(root).expect("create the watched directory");
        let mut disks = disks();
        assert!(
            disks
                .iter()
                .all(|d| !d.root.starts_with(root) && !root.starts_with(&d.root)),
            "{} is already watched",
            root.display()
        );
        disks.push(Disk::scan(root));
        SimDisk {
            root: root.to_path_buf(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Disk) -> T) -> T {
        let mut disks = disks();
        let disk = disks
            .iter_mut()
            .find(|d| d.root == self.root)
            .expect("the disk is registered while its handle lives");
        f(disk)
    }

    /// Cuts the power after `calls` more mutating calls: from then on every
    /// write, `set_len`, fsync, create, rename and unlink fails and does
    /// nothing, until [`SimDisk::power_loss`].
    pub(crate) fn crash_after(&self, calls: u64) {
        self.with(|d| d.budget = Some(calls));
    }

    /// True once the power was cut by [`SimDisk::crash_after`].
    pub(crate) fn is_dead(&self) -> bool {
        self.with(|d| d.dead)
    }

    /// The next writes to `path` take `after` more bytes, then one fails with
    /// ENOSPC (once).
    pub(crate) fn fail_write(&self, path: &Path, after: usize) {
        self.with(|d| {
            let id = *d.current.get(path).expect("a watched file");
            d.faults.push(Fault::Write { id, after });
        });
    }

    /// The next `set_len` of `path` fails (once).
    pub(crate) fn fail_set_len(&self, path: &Path) {
        self.with(|d| {
            let id = *d.current.get(path).expect("a watched file");
            d.faults.push(Fault::SetLen { id });
        });
    }

    /// Resets the tree to what the disk holds after a power loss. Everything
    /// that used the files must be dropped first. Afterwards all that is
    /// there counts as durable, and the power is back on.
    pub(crate) fn power_loss(&self, mut outcome: Outcome<'_>) {
        let mut disks = disks();
        let disk = disks
            .iter_mut()
            .find(|d| d.root == self.root)
            .expect("the disk is registered while its handle lives");
        let keep = match &mut outcome {
            Outcome::Worst => 0,
            Outcome::Random(rng) => rng.below(disk.pending.len() as u64 + 1) as usize,
        };
        let mut names = disk.durable.clone();
        for change in &disk.pending[..keep] {
            change.apply(&mut names);
        }
        let files: Vec<(PathBuf, Vec<u8>)> = names
            .iter()
            .map(|(p, &id)| (p.clone(), disk.survivor(id, &mut outcome)))
            .collect();
        for p in disk.current.keys() {
            if let Err(e) = std::fs::remove_file(p) {
                assert_eq!(e.kind(), io::ErrorKind::NotFound, "{}", p.display());
            }
        }
        for (p, content) in files {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("recreate a directory");
            }
            std::fs::write(&p, content).expect("write a surviving file");
        }
        *disk = Disk::scan(&self.root);
    }
}

impl Drop for SimDisk {
    fn drop(&mut self) {
        disks().retain(|d| d.root != self.root);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::fs;

    fn write_new(path: &Path, bytes: &[u8]) -> fs::File {
        let mut f = fs::File::create(path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn sync_dir(dir: &Path) {
        fs::File::open(dir).unwrap().sync_all().unwrap();
    }

    #[test]
    fn a_write_never_fsynced_can_vanish() {
        let root = scratch_dir();
        let disk = SimDisk::new(root.path());
        let path = root.path().join("f");
        let mut f = write_new(&path, b"synced ");
        f.sync_all().unwrap();
        sync_dir(root.path());
        f.write_all(b"not synced").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced not synced");
        disk.power_loss(Outcome::Worst);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced ");

        // With random outcomes: sometimes all, sometimes none, sometimes torn.
        drop(disk);
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            std::fs::write(&path, b"synced ").unwrap();
            let disk = SimDisk::new(root.path());
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(b"tail").unwrap();
            drop(f);
            disk.power_loss(Outcome::Random(&mut rng));
            let got = std::fs::read(&path).unwrap();
            assert!(got.starts_with(b"synced "), "{got:?}");
            seen.insert(got[7..].to_vec());
        }
        for want in [&b""[..], b"tail", b"ta", b"\0\0\0\0"] {
            assert!(seen.contains(want), "{want:?} never survived: {seen:?}");
        }
    }

    #[test]
    fn a_file_created_without_a_directory_fsync_can_vanish() {
        let root = scratch_dir();
        let disk = SimDisk::new(root.path());
        let path = root.path().join("new");
        write_new(&path, b"data").sync_all().unwrap();
        disk.power_loss(Outcome::Worst);
        assert!(!path.exists());

        write_new(&path, b"data").sync_all().unwrap();
        sync_dir(root.path());
        disk.power_loss(Outcome::Worst);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_rename_without_a_directory_fsync_can_be_undone() {
        let root = scratch_dir();
        let disk = SimDisk::new(root.path());
        let (old, tmp) = (root.path().join("marker"), root.path().join("marker.tmp"));
        write_new(&old, b"old").sync_all().unwrap();
        sync_dir(root.path());

        write_new(&tmp, b"new").sync_all().unwrap();
        fs::rename(&tmp, &old).unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"new");
        disk.power_loss(Outcome::Worst);
        assert_eq!(std::fs::read(&old).unwrap(), b"old");
        assert!(!tmp.exists());

        // A rename of a file whose data was never synced: the name can
        // survive with nothing in it. That is what write_atomic's fsync of
        // the file prevents.
        let mut rng = Rng::new(7);
        let mut empty_seen = false;
        for _ in 0..100 {
            write_new(&tmp, b"new");
            fs::rename(&tmp, &old).unwrap();
            sync_dir(root.path());
            disk.power_loss(Outcome::Random(&mut rng));
            let got = std::fs::read(&old).unwrap();
            empty_seen |= got.is_empty();
            let kept = got.iter().take_while(|&&b| b != 0).count();
            assert!(
                got.len() <= 3 && b"new".starts_with(&got[..kept]),
                "{got:?}"
            );
            assert!(got[kept..].iter().all(|&b| b == 0), "{got:?}");
        }
        assert!(empty_seen);
    }

    #[test]
    fn an_unlink_without_a_directory_fsync_can_be_undone() {
        let root = scratch_dir();
        let disk = SimDisk::new(root.path());
        let path = root.path().join("f");
        write_new(&path, b"kept").sync_all().unwrap();
        sync_dir(root.path());
        fs::remove_file(&path).unwrap();
        disk.power_loss(Outcome::Worst);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        fs::remove_file(&path).unwrap();
        sync_dir(root.path());
        disk.power_loss(Outcome::Worst);
        assert!(!path.exists());
    }

    #[test]
    fn the_power_can_be_cut_after_some_calls() {
        let root = scratch_dir();
        let disk = SimDisk::new(root.path());
        let path = root.path().join("f");
        let mut f = write_new(&path, b"a");
        disk.crash_after(1);
        f.write_all(b"b").unwrap();
        assert!(f.write_all(b"c").is_err());
        assert!(f.sync_all().is_err());
        assert!(disk.is_dead());
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        disk.power_loss(Outcome::Worst);
        assert!(!path.exists());
        assert!(!disk.is_dead());
    }

    #[test]
    fn injected_write_failure_after_some_bytes() {
        let root = scratch_dir();
        let disk = SimDisk::new(root.path());
        let path = root.path().join("f");
        let mut f = write_new(&path, b"");
        disk.fail_write(&path, 3);
        let e = f.write_all(b"abcdef").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        f.write_all(b"gh").unwrap();
        disk.fail_set_len(&path);
        assert!(f.set_len(0).is_err());
        f.set_len(0).unwrap();
    }
}
