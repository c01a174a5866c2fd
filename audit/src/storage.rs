//! File access, behind a trait: the real directory, and (in tests) a directory that loses or
//! tears what was not synced when it "crashes".

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A file the log appends to.
pub trait AppendFile: Send + 'static {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
}

/// The directory the log lives in.
pub trait Storage: Send + Sync + 'static {
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// `len` bytes at `offset`.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Creates `name` (empty; an existing file is an error).
    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>>;
    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>>;
    /// Cuts `name` to `len` bytes, durably.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Writes a whole new file durably (kept-aside bytes, keys).
    fn write_new(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes the directory's entries durable (after a create or rename).
    fn sync_dir(&self) -> io::Result<()>;
}

/// The real thing: a directory on disk.
#[derive(Debug, Clone)]
pub struct DiskStorage {
    dir: PathBuf,
}

impl DiskStorage {
    pub fn open(dir: &Path) -> io::Result<DiskStorage> {
        std::fs::create_dir_all(dir)?;
        Ok(DiskStorage {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

pub struct DiskFile(File);

impl AppendFile for DiskFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts
}

impl Storage for DiskStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_file()
                && let Some(n) = e.file_name().to_str()
            {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(name))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.dir.join(name))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        let f = private(OpenOptions::new().append(true).create_new(true)).open(self.dir.join(name))?;
        Ok(Box::new(DiskFile(f)))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(DiskFile(
            OpenOptions::new().append(true).open(self.dir.join(name))?,
        )))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(self.dir.join(name))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn write_new(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = private(OpenOptions::new().write(true).create(true).truncate(true)).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}
