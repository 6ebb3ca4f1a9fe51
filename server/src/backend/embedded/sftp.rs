//! The SFTP subsystem on the real filesystem, for `sftp`, `scp` (SFTP mode, OpenSSH >= 9) and
//! VS Code's fallback copies. Relative paths start at the home directory; the OpenSSH extensions
//! that clients use are advertised and served.

use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use russh_sftp::extensions::{self, HardlinkExtension, LimitsExtension, Statvfs};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;

/// Largest read or write we announce (OpenSSH's sftp-server announces the same): the client then
/// sends fewer, larger requests.
const MAX_IO: u64 = 255 * 1024;

/// Largest SFTP packet accepted (russh-sftp's default limit).
const MAX_PACKET: u64 = 256 * 1024;

/// Handles one client may hold open at once.
const MAX_HANDLES: usize = 512;

/// Directory entries returned per READDIR.
const DIR_BATCH: usize = 128;

/// An SFTP error: a status code and a message for the client.
#[derive(Debug)]
pub struct SftpError(StatusCode, String);

impl From<io::Error> for SftpError {
    fn from(e: io::Error) -> Self {
        let code = match e.kind() {
            io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            io::ErrorKind::Unsupported => StatusCode::OpUnsupported,
            _ => StatusCode::Failure,
        };
        SftpError(code, e.to_string())
    }
}

impl From<nix::Error> for SftpError {
    fn from(e: nix::Error) -> Self {
        io::Error::from(e).into()
    }
}

impl From<SftpError> for StatusReply {
    fn from(e: SftpError) -> Self {
        StatusReply::new(e.0).with_message(e.1)
    }
}

fn fail(code: StatusCode, msg: &str) -> SftpError {
    SftpError(code, msg.to_owned())
}

enum Open {
    File(File),
    Dir(Dir),
}

/// An open directory, read [`DIR_BATCH`] entries at a time as the client asks (a directory of
/// a million files is neither read nor held at once).
struct Dir {
    path: PathBuf,
    /// `.` and `..`, handed out first.
    dots: Vec<russh_sftp::protocol::File>,
    entries: fs::ReadDir,
}

/// The next entry of `entries`, or None at its end. A failed read (EIO on a network filesystem)
/// ends the listing, as for sftp-server: what was read goes out, and then the end.
fn next_entry(entries: &mut fs::ReadDir, path: &Path) -> Option<std::ffi::OsString> {
    match entries.next()? {
        Ok(entry) => Some(entry.file_name()),
        Err(e) => {
            tracing::debug!(%e, dir = %path.display(), "directory read failed: listing ends here");
            None
        }
    }
}

/// One client's SFTP state.
pub struct Sftp {
    home: PathBuf,
    handles: HashMap<String, Open>,
    next: u64,
}

impl Sftp {
    pub fn new(home: PathBuf) -> Self {
        Sftp {
            home,
            handles: HashMap::new(),
            next: 0,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        if p.is_empty() {
            self.home.clone()
        } else {
            self.home.join(p)
        }
    }

    fn insert(&mut self, open: Open) -> Result<String, SftpError> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(fail(StatusCode::Failure, "too many open handles"));
        }
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        Ok(handle)
    }

    fn file(&self, handle: &str) -> Result<&File, SftpError> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(fail(StatusCode::Failure, "invalid handle")),
        }
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Success".into(),
        language_tag: "en-US".into(),
    }
}

/// Runs filesystem work without stalling other tasks: inline on an SFTP session's own thread
/// (its current-thread runtime), through `block_in_place` on a shared multi-thread runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Attributes of a file, with its type bits as the mode says (not guessed).
fn attrs(meta: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(meta.len()),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        permissions: Some(meta.mode()),
        atime: u32::try_from(meta.atime()).ok(),
        mtime: u32::try_from(meta.mtime()).ok(),
        ..Default::default()
    }
}

/// Lexically normalised absolute path (`.` and `..` resolved), for paths that do not exist yet.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn name(id: u32, path: &Path) -> Name {
    Name {
        id,
        files: vec![russh_sftp::protocol::File::dummy(path.to_string_lossy())],
    }
}

fn set_attrs(path: &Path, a: &FileAttributes) -> Result<(), SftpError> {
    if let Some(size) = a.size {
        OpenOptions::new().write(true).open(path)?.set_len(size)?;
    }
    if let Some(mode) = a.permissions {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        std::os::unix::fs::chown(path, a.uid, a.gid)?;
    }
    if let (Some(atime), Some(mtime)) = (a.atime, a.mtime) {
        // By path, as sshd's utimes: opening the file would need read permission (a file just
        // made 0200 could not take its times).
        let t = |s: u32| nix::sys::time::TimeSpec::new(s.into(), 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t(atime),
            &t(mtime),
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )?;
    }
    Ok(())
}

fn file_times(atime: u32, mtime: u32) -> fs::FileTimes {
    let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s));
    fs::FileTimes::new()
        .set_accessed(t(atime))
        .set_modified(t(mtime))
}

fn extended_reply<T: serde::Serialize>(id: u32, value: &T) -> Result<Packet, SftpError> {
    let data: Bytes =
        russh_sftp::ser::to_bytes(value).map_err(|e| fail(StatusCode::Failure, &e.to_string()))?;
    Ok(Packet::ExtendedReply(ExtendedReply {
        id,
        data: data.to_vec(),
    }))
}

fn decode<T: serde::de::DeserializeOwned>(data: Vec<u8>) -> Result<T, SftpError> {
    russh_sftp::de::from_bytes(&mut Bytes::from(data))
        .map_err(|e| fail(StatusCode::BadMessage, &e.to_string()))
}

impl russh_sftp::server::Handler for Sftp {
    type Error = SftpError;

    fn unimplemented(&self) -> Self::Error {
        fail(StatusCode::OpUnsupported, "operation not supported")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut version = Version::new();
        for (ext, v) in [
            (extensions::LIMITS, "1"),
            ("posix-rename@openssh.com", "1"),
            (extensions::STATVFS, "2"),
            (extensions::FSYNC, "1"),
            (extensions::HARDLINK, "1"),
            (extensions::EXPAND_PATH, "1"),
        ] {
            version.extensions.insert(ext.into(), v.into());
        }
        Ok(version)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename);
        let file = blocking(|| {
            let mut o = OpenOptions::new();
            o.read(flags.contains(OpenFlags::READ))
                .write(flags.contains(OpenFlags::WRITE))
                .append(flags.contains(OpenFlags::APPEND));
            if flags.contains(OpenFlags::CREATE) {
                if flags.contains(OpenFlags::EXCLUDE) {
                    o.create_new(true);
                } else {
                    o.create(true);
                }
            }
            if flags.contains(OpenFlags::TRUNCATE) {
                o.truncate(true);
            }
            o.mode(attrs.permissions.map_or(0o666, |p| p & 0o7777));
            o.open(&path)
        })?;
        Ok(Handle {
            id,
            handle: self.insert(Open::File(file))?,
        })
    }

    /// A file's close is checked, as sftp-server does: some file systems (NFS, a full quota)
    /// report a failed write only there, and the client must hear of it.
    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::File(file)) => {
                let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
                blocking(|| nix::unistd::close(fd))?;
                Ok(ok(id))
            }
            Some(Open::Dir(_)) => Ok(ok(id)),
            None => Err(fail(StatusCode::Failure, "invalid handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let len = (len as u64).min(MAX_IO) as usize;
        let data = blocking(|| {
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })?;
        if data.is_empty() && len > 0 {
            return Err(fail(StatusCode::Eof, "end of file"));
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        blocking(|| file.write_all_at(&data, offset))?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = blocking(|| fs::symlink_metadata(self.path(&path)))?;
        Ok(Attrs {
            id,
            attrs: attrs(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = blocking(|| fs::metadata(self.path(&path)))?;
        Ok(Attrs {
            id,
            attrs: attrs(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let meta = self.file(&handle)?.metadata()?;
        Ok(Attrs {
            id,
            attrs: attrs(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        a: FileAttributes,
    ) -> Result<Status, Self::Error> {
        blocking(|| set_attrs(&self.path(&path), &a))?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        a: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        blocking(|| -> Result<(), SftpError> {
            if let Some(size) = a.size {
                file.set_len(size)?;
            }
            if let Some(mode) = a.permissions {
                file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if let (Some(atime), Some(mtime)) = (a.atime, a.mtime) {
                file.set_times(file_times(atime, mtime))?;
            }
            if a.uid.is_some() || a.gid.is_some() {
                std::os::unix::fs::fchown(file, a.uid, a.gid)?;
            }
            Ok(())
        })?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.path(&path);
        let dir = blocking(|| -> io::Result<Dir> {
            let entries = fs::read_dir(&path)?;
            let dots = [".", ".."]
                .into_iter()
                .filter_map(|name| {
                    let meta = fs::metadata(path.join(name)).ok()?;
                    Some(russh_sftp::protocol::File::new(name, attrs(&meta)))
                })
                .collect();
            Ok(Dir {
                path,
                dots,
                entries,
            })
        })?;
        Ok(Handle {
            id,
            handle: self.insert(Open::Dir(dir))?,
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir(dir)) = self.handles.get_mut(&handle) else {
            return Err(fail(StatusCode::Failure, "invalid handle"));
        };
        let mut files = std::mem::take(&mut dir.dots);
        blocking(|| {
            while files.len() < DIR_BATCH {
                let Some(name) = next_entry(&mut dir.entries, &dir.path) else {
                    break;
                };
                // Gone since it was listed, or unreadable: left out, as by sftp-server.
                if let Ok(meta) = fs::symlink_metadata(dir.path.join(&name)) {
                    files.push(russh_sftp::protocol::File::new(
                        name.to_string_lossy(),
                        attrs(&meta),
                    ));
                }
            }
        });
        if files.is_empty() {
            return Err(fail(StatusCode::Eof, "end of directory"));
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        blocking(|| fs::remove_file(self.path(&filename)))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        a: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let mode = a.permissions.map_or(0o777, |p| p & 0o7777);
        blocking(|| fs::DirBuilder::new().mode(mode).create(self.path(&path)))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        blocking(|| fs::remove_dir(self.path(&path)))?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let full = self.path(&path);
        let real = blocking(|| fs::canonicalize(&full)).unwrap_or_else(|_| normalise(&full));
        Ok(name(id, &real))
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (self.path(&oldpath), self.path(&newpath));
        blocking(|| -> Result<(), SftpError> {
            // SFTP v3 rename never replaces an existing file (OpenSSH's sftp-server agrees);
            // posix-rename@openssh.com does.
            if fs::symlink_metadata(&to).is_ok() {
                return Err(fail(StatusCode::Failure, "target exists"));
            }
            Ok(fs::rename(&from, &to)?)
        })?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = blocking(|| fs::read_link(self.path(&path)))?;
        Ok(name(id, &target))
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH clients send the target first and the new link second (the reverse of the
        // draft's order), and russh-sftp names the fields by the draft: the first is the target.
        let (target, link) = (linkpath, self.path(&targetpath));
        blocking(|| std::os::unix::fs::symlink(&target, &link))?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        match request.as_str() {
            extensions::LIMITS => extended_reply(
                id,
                &LimitsExtension {
                    max_packet_len: MAX_PACKET,
                    max_read_len: MAX_IO,
                    max_write_len: MAX_IO,
                    max_open_handles: MAX_HANDLES as u64,
                },
            ),
            "posix-rename@openssh.com" => {
                let names: HardlinkExtension = decode(data)?;
                blocking(|| fs::rename(self.path(&names.oldpath), self.path(&names.newpath)))?;
                Ok(Packet::Status(ok(id)))
            }
            extensions::HARDLINK => {
                let names: HardlinkExtension = decode(data)?;
                blocking(|| fs::hard_link(self.path(&names.oldpath), self.path(&names.newpath)))?;
                Ok(Packet::Status(ok(id)))
            }
            extensions::FSYNC => {
                let ext: extensions::FsyncExtension = decode(data)?;
                let file = self.file(&ext.handle)?;
                blocking(|| file.sync_all())?;
                Ok(Packet::Status(ok(id)))
            }
            extensions::STATVFS => {
                let ext: extensions::StatvfsExtension = decode(data)?;
                let st = blocking(|| nix::sys::statvfs::statvfs(&self.path(&ext.path)))?;
                extended_reply(
                    id,
                    &Statvfs {
                        block_size: st.block_size(),
                        fragment_size: st.fragment_size(),
                        blocks: st.blocks(),
                        blocks_free: st.blocks_free(),
                        blocks_avail: st.blocks_available(),
                        inodes: st.files(),
                        inodes_free: st.files_free(),
                        inodes_avail: st.files_available(),
                        fs_id: st.filesystem_id(),
                        flags: st.flags().bits(),
                        name_max: st.name_max(),
                    },
                )
            }
            extensions::EXPAND_PATH => {
                let ext: extensions::ExpandPathExtension = decode(data)?;
                let p = ext.path;
                let expanded = match p.strip_prefix('~') {
                    Some("") => self.home.clone(),
                    Some(rest) if rest.starts_with('/') => {
                        self.home.join(rest.trim_start_matches('/'))
                    }
                    Some(_) => {
                        return Err(fail(
                            StatusCode::OpUnsupported,
                            "~user paths are not supported",
                        ))
                    }
                    None => self.path(&p),
                };
                let real = blocking(|| fs::canonicalize(&expanded))
                    .unwrap_or_else(|_| normalise(&expanded));
                Ok(Packet::Name(name(id, &real)))
            }
            _ => Err(self.unimplemented()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_resolves_dots() {
        assert_eq!(
            normalise(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalise(Path::new("/..")), PathBuf::from("/"));
    }

    #[test]
    fn io_errors_map_to_sftp_codes() {
        let code = |k| SftpError::from(io::Error::from(k)).0;
        assert_eq!(code(io::ErrorKind::NotFound), StatusCode::NoSuchFile);
        assert_eq!(
            code(io::ErrorKind::PermissionDenied),
            StatusCode::PermissionDenied
        );
        assert_eq!(code(io::ErrorKind::Other), StatusCode::Failure);
    }
}
