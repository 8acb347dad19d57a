//! A node's files under the data dir: each job's input and MP3 in `jobs/<id>/`, uploads in
//! flight in `tmp/`, resumable uploads in `uploads/`.
//!
//! Every file is written to a temporary name, fsynced, renamed, and the directory fsynced,
//! so after a crash a file is either complete or absent.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::JobId;

/// An uploaded input staged in `tmp/`, owned from the moment it is created until a job
/// adopts it ([`StagedInput::adopt`]); on every other path (a refused request, an
/// idempotent retry, a failed call, a node shutting down) dropping it deletes the file.
#[derive(Debug)]
pub struct StagedInput(Option<PathBuf>);

impl StagedInput {
    /// Takes charge of the file at `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        StagedInput(Some(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Moves it into place as job `id`'s input: the job owns it from here. On failure it
    /// stays in charge, and is deleted when dropped.
    pub fn adopt(&mut self, files: &Files, id: &JobId) -> io::Result<()> {
        files.adopt_input(id, self.path())?;
        self.0 = None;
        Ok(())
    }
}

impl Drop for StagedInput {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // A small unlink; dropped off the async runtime's hot paths in practice.
            let _ = fs::remove_file(path);
        }
    }
}

/// The file layout of one data dir.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

impl Files {
    /// The layout under `data_dir`; creates its directories.
    pub fn new(data_dir: &Path) -> io::Result<Self> {
        let files = Files::at(data_dir);
        fs::create_dir_all(files.tmp_dir())?;
        fs::create_dir_all(files.root.join("jobs"))?;
        fs::create_dir_all(files.root.join("uploads"))?;
        Ok(files)
    }

    /// The layout under `data_dir`, whose directories the node made at start (`new`).
    pub fn at(data_dir: &Path) -> Self {
        Files {
            root: data_dir.to_path_buf(),
        }
    }

    /// Where uploads and downloads stream before they belong to a job.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A resumable upload's file while it arrives (it becomes its job's input).
    pub fn upload(&self, id: &JobId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    /// Where copies of other nodes' MP3s are kept (`actors/request/copies.rs`).
    pub fn copies_dir(&self) -> PathBuf {
        self.root.join("copies")
    }

    /// This node's copy of another node's job `id`'s MP3.
    pub fn copy(&self, id: &JobId) -> PathBuf {
        self.copies_dir().join(format!("{}.mp3", id.as_str()))
    }

    /// A job's directory.
    pub fn job_dir(&self, id: &JobId) -> PathBuf {
        self.root.join("jobs").join(id.as_str())
    }

    /// A job's MP4.
    pub fn input(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join("input.mp4")
    }

    /// A job's MP3.
    pub fn output(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join("output.mp3")
    }

    /// Moves a completely written (and fsynced) staged file into place as the job's input.
    pub fn adopt_input(&self, id: &JobId, staged: &Path) -> io::Result<()> {
        self.adopt(id, staged, self.input(id))
    }

    /// Moves a completely written (and fsynced) MP3 into place as the job's output.
    pub fn adopt_output(&self, id: &JobId, staged: &Path) -> io::Result<()> {
        self.adopt(id, staged, self.output(id))
    }

    fn adopt(&self, id: &JobId, staged: &Path, to: PathBuf) -> io::Result<()> {
        let dir = self.job_dir(id);
        fs::create_dir_all(&dir)?;
        fs::rename(staged, to)?;
        sync_dir(&dir)
    }

    /// Deletes a job's files (nothing to do if they are gone already).
    pub fn remove_job(&self, id: &JobId) -> io::Result<()> {
        match fs::remove_dir_all(self.job_dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes held by job inputs, MP3s and unfinished uploads (blocking: a walk of the
    /// data dir, one `stat` per file).
    pub fn stored_bytes(&self) -> io::Result<(u64, u64, u64)> {
        let (mut inputs, mut mp3s, mut uploads) = (0, 0, 0);
        for job in fs::read_dir(self.root.join("jobs"))? {
            let dir = job?.path();
            let size = |name: &str| fs::metadata(dir.join(name)).map_or(0, |m| m.len());
            inputs += size("input.mp4");
            mp3s += size("output.mp3");
        }
        for upload in fs::read_dir(self.root.join("uploads"))? {
            uploads += upload?.metadata().map_or(0, |m| m.len());
        }
        Ok((inputs, mp3s, uploads))
    }

    /// Bytes free for us on the data volume (blocking: a `statvfs`).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stats = rustix::fs::statvfs(self.tmp_dir()).map_err(io::Error::from)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Empties `tmp/` and removes the `*.part` files in job and copy directories: whatever
    /// is there was in flight when the node stopped.
    pub fn clear_tmp(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.tmp_dir())? {
            let path = entry?.path();
            if path.is_file() {
                fs::remove_file(path)?;
            }
        }
        // A conversion's output while it is written (`*.part` beside the MP3) and a copy's
        // pull: what a kill -9 left (nothing converts or pulls yet at start).
        let copies = self.copies_dir();
        let dirs = fs::read_dir(self.root.join("jobs"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .chain(copies.is_dir().then_some(copies));
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "part") && path.is_file() {
                    fs::remove_file(path)?;
                }
            }
        }
        Ok(())
    }
}

/// Fsyncs a directory, so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_clears_what_a_kill_left_in_flight_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path()).unwrap();
        let id = JobId::new("n-0");
        fs::create_dir_all(files.job_dir(&id)).unwrap();
        fs::create_dir_all(files.copies_dir()).unwrap();
        fs::write(files.output(&id), b"mp3").unwrap();
        fs::write(files.job_dir(&id).join(".tmpAbC123.part"), b"half").unwrap();
        fs::write(files.copies_dir().join("x.part"), b"half").unwrap();
        fs::write(files.copy(&id), b"copy").unwrap();
        fs::write(files.tmp_dir().join("staged"), b"x").unwrap();
        files.clear_tmp().unwrap();
        let left = |d: PathBuf| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(left(files.job_dir(&id)), ["output.mp3"]);
        assert_eq!(left(files.copies_dir()), [format!("{id}.mp3")]);
        assert!(left(files.tmp_dir()).is_empty());
    }

    #[test]
    fn a_staged_input_is_deleted_on_every_path_but_adoption() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path()).unwrap();
        let staged_at = |name: &str| {
            let path = files.tmp_dir().join(name);
            fs::write(&path, b"mp4").unwrap();
            (StagedInput::new(path.clone()), path)
        };
        // Dropped (a refusal, a retry, a failed call): gone.
        let (input, path) = staged_at("refused");
        drop(input);
        assert!(!path.exists());
        // Adopted: the job's input, and dropping the guard afterwards deletes nothing.
        let (mut input, path) = staged_at("adopted");
        let id = JobId::new("n1");
        input.adopt(&files, &id).unwrap();
        drop(input);
        assert!(!path.exists());
        assert_eq!(fs::read(files.input(&id)).unwrap(), b"mp4");
        // An adoption that fails (a file where the job's directory must go) leaves it in
        // charge: dropped, it is deleted.
        let (mut input, path) = staged_at("failed");
        let blocked = JobId::new("n2");
        fs::write(files.job_dir(&blocked), b"not a directory").unwrap();
        assert!(input.adopt(&files, &blocked).is_err());
        assert!(path.exists(), "still staged after a failed adoption");
        drop(input);
        assert!(!path.exists());
    }

    #[test]
    fn staged_inputs_are_adopted_and_removed_with_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path()).unwrap();
        let id = JobId::new("n1");
        let staged = files.tmp_dir().join("upload");
        fs::write(&staged, b"mp4").unwrap();
        files.adopt_input(&id, &staged).unwrap();
        assert_eq!(fs::read(files.input(&id)).unwrap(), b"mp4");
        assert!(!staged.exists());
        files.remove_job(&id).unwrap();
        assert!(!files.job_dir(&id).exists());
        files.remove_job(&id).unwrap();
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp files left");
    }
}
