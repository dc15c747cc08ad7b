//! Every file operation of the partition log goes through here.
//!
//! In a normal build these are thin wrappers over `std::fs` with the same
//! names and signatures (`File`, `OpenOptions`, `rename`, ...), so code can
//! switch between the two by changing an import, and nothing changes at run
//! time. In the crate's test build the same calls also report to [`sim`],
//! which remembers what has been fsynced and can reset a directory to what a
//! disk could hold after a power loss, or make a write or `set_len` fail.
//!
//! A directory is fsynced the POSIX way: `File::open(dir)?.sync_all()`.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use std::fs::{
    create_dir, create_dir_all, metadata, read, read_dir, read_to_string, remove_dir, DirEntry,
    Metadata,
};

#[cfg(test)]
pub(crate) mod sim;

/// `std::fs::File`, with fsyncs, writes and `set_len` visible to the test
/// file system.
#[derive(Debug)]
pub struct File {
    inner: std::fs::File,
}

impl File {
    pub fn open<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new().read(true).open(path)
    }

    pub fn create<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    pub fn sync_all(&self) -> io::Result<()> {
        // A watched file's durability is simulated: skip the slow real fsync.
        #[cfg(test)]
        if sim::before_mutation(&self.inner, sim::Op::Sync)? {
            sim::synced(&self.inner);
            return Ok(());
        }
        self.inner.sync_all()?;
        #[cfg(test)]
        sim::synced(&self.inner);
        Ok(())
    }

    pub fn sync_data(&self) -> io::Result<()> {
        #[cfg(test)]
        if sim::before_mutation(&self.inner, sim::Op::Sync)? {
            sim::synced(&self.inner);
            return Ok(());
        }
        self.inner.sync_data()?;
        #[cfg(test)]
        sim::synced(&self.inner);
        Ok(())
    }

    pub fn set_len(&self, size: u64) -> io::Result<()> {
        #[cfg(test)]
        sim::before_mutation(&self.inner, sim::Op::SetLen)?;
        self.inner.set_len(size)
    }

    pub fn metadata(&self) -> io::Result<Metadata> {
        self.inner.metadata()
    }

    /// Another handle on the same open file: an fsync through it syncs the
    /// file, so it can run where the original's owner is not locked.
    pub fn try_clone(&self) -> io::Result<File> {
        Ok(File {
            inner: self.inner.try_clone()?,
        })
    }
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(test)]
        let buf = &buf[..sim::before_write(&self.inner, buf.len())?];
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes through a shared handle (an `Arc<File>` of a lazily opened file);
/// `write(2)` needs no exclusive access.
impl Write for &File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(test)]
        let buf = &buf[..sim::before_write(&self.inner, buf.len())?];
        (&self.inner).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&self.inner).flush()
    }
}

impl Seek for File {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl FileExt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        #[cfg(test)]
        let buf = &buf[..sim::before_write(&self.inner, buf.len())?];
        self.inner.write_at(buf, offset)
    }
}

/// `std::fs::OpenOptions`; opening with `create` is visible to the test file
/// system.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    inner: std::fs::OpenOptions,
    create: bool,
    create_new: bool,
}

impl OpenOptions {
    pub fn new() -> Self {
        OpenOptions {
            inner: std::fs::OpenOptions::new(),
            create: false,
            create_new: false,
        }
    }

    pub fn read(&mut self, read: bool) -> &mut Self {
        self.inner.read(read);
        self
    }

    pub fn write(&mut self, write: bool) -> &mut Self {
        self.inner.write(write);
        self
    }

    pub fn append(&mut self, append: bool) -> &mut Self {
        self.inner.append(append);
        self
    }

    pub fn truncate(&mut self, truncate: bool) -> &mut Self {
        self.inner.truncate(truncate);
        self
    }

    pub fn create(&mut self, create: bool) -> &mut Self {
        self.inner.create(create);
        self.create = create;
        self
    }

    pub fn create_new(&mut self, create_new: bool) -> &mut Self {
        self.inner.create_new(create_new);
        self.create_new = create_new;
        self
    }

    pub fn open<P: AsRef<Path>>(&self, path: P) -> io::Result<File> {
        let path = path.as_ref();
        #[cfg(test)]
        let create = self.create || self.create_new;
        #[cfg(test)]
        if create {
            sim::before_path_mutation(path)?;
        }
        let inner = self.inner.open(path)?;
        #[cfg(test)]
        sim::opened(path, &inner, create);
        Ok(File { inner })
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

pub fn rename<P: AsRef<Path>, Q: AsRef<Path>>(from: P, to: Q) -> io::Result<()> {
    #[cfg(test)]
    sim::before_path_mutation(from.as_ref())?;
    std::fs::rename(&from, &to)?;
    #[cfg(test)]
    sim::renamed(from.as_ref(), to.as_ref());
    Ok(())
}

pub fn remove_file<P: AsRef<Path>>(path: P) -> io::Result<()> {
    #[cfg(test)]
    sim::before_path_mutation(path.as_ref())?;
    std::fs::remove_file(&path)?;
    #[cfg(test)]
    sim::removed(path.as_ref());
    Ok(())
}

pub fn remove_dir_all<P: AsRef<Path>>(path: P) -> io::Result<()> {
    #[cfg(test)]
    sim::before_path_mutation(path.as_ref())?;
    std::fs::remove_dir_all(&path)?;
    #[cfg(test)]
    sim::removed(path.as_ref());
    Ok(())
}
