//! A ready-made file table and the userspace agent's side of the ioctls.
//!
//! The orchestrator resolves fds through the embedding kernel's [`Kernel`] trait. A kernel with
//! its own file table implements it; a small kernel (the QEMU images of this project, the host
//! tests) can use [`FdTable`], an array indexed by fd that records the pages finishes release.
//! The `agent` functions issue the ioctls the way a userspace agent does: argument structs as
//! bytes through [`LiveUpdate::ioctl`].

use alloc::vec::Vec;

use zerocopy::IntoBytes;

use crate::kernel::SessionId;
use crate::luo::{Kernel, LiveUpdate, Target};
use crate::memmap::FrameRun;
use crate::uapi::*;

/// An open fd: a session, or a file object.
#[derive(Clone, Debug)]
pub enum Fd<O> {
    /// A session fd.
    Session(SessionId),
    /// A file.
    Object(O),
}

/// A file table indexed by fd (0 to 2 are never handed out), recording released pages.
#[derive(Debug)]
pub struct FdTable<O> {
    slots: Vec<Option<Fd<O>>>,
    open: usize,
    /// Largest number of open fds (`EMFILE` past it); 0 means unlimited.
    pub max_fds: usize,
    /// Runs of pages finishes gave back, in order, for the kernel to free.
    pub released: Vec<FrameRun>,
}

impl<O> Default for FdTable<O> {
    fn default() -> Self {
        FdTable {
            slots: Vec::new(),
            open: 0,
            max_fds: 0,
            released: Vec::new(),
        }
    }
}

impl<O: Clone> FdTable<O> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of open fds.
    pub fn len(&self) -> usize {
        self.open
    }

    /// Whether no fd is open.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// The entry of an fd.
    pub fn get(&self, fd: i32) -> Option<&Fd<O>> {
        self.slots.get(usize::try_from(fd).ok()?)?.as_ref()
    }

    /// Opens an fd for an object.
    pub fn open(&mut self, object: O) -> i32 {
        self.insert(Fd::Object(object))
    }

    /// Closes an fd, returning what it held.
    pub fn close(&mut self, fd: i32) -> Option<Fd<O>> {
        let entry = self.slots.get_mut(usize::try_from(fd).ok()?)?.take();
        if entry.is_some() {
            self.open = self.open.saturating_sub(1);
        }
        entry
    }

    /// The session behind an fd.
    pub fn session(&self, fd: i32) -> Option<SessionId> {
        match self.get(fd) {
            Some(Fd::Session(id)) => Some(*id),
            _ => None,
        }
    }

    /// The object behind an fd.
    pub fn object(&self, fd: i32) -> Option<&O> {
        match self.get(fd) {
            Some(Fd::Object(object)) => Some(object),
            _ => None,
        }
    }

    fn insert(&mut self, entry: Fd<O>) -> i32 {
        if self.slots.len() < 3 {
            self.slots.resize_with(3, || None);
        }
        self.slots.push(Some(entry));
        self.open = self.open.saturating_add(1);
        i32::try_from(self.slots.len().saturating_sub(1)).unwrap_or(i32::MAX)
    }

    fn install(&mut self, entry: Fd<O>) -> Result<i32, Errno> {
        if self.max_fds != 0 && self.open >= self.max_fds {
            return Err(Errno::EMFILE);
        }
        Ok(self.insert(entry))
    }
}

impl<O: Clone> Kernel<O> for FdTable<O> {
    fn resolve(&mut self, fd: i32) -> Result<O, Errno> {
        self.object(fd).cloned().ok_or(Errno::EBADF)
    }

    fn install_session(&mut self, session: SessionId) -> Result<i32, Errno> {
        self.install(Fd::Session(session))
    }

    fn install_file(&mut self, object: O) -> Result<i32, Errno> {
        self.install(Fd::Object(object))
    }

    fn release(&mut self, run: FrameRun) {
        self.released.push(run);
    }
}

/// The userspace agent's ioctls, issued as argument bytes.
pub mod agent {
    use super::*;

    fn name_field(name: &[u8]) -> [u8; LIVEUPDATE_SESSION_NAME_LENGTH] {
        let mut field = [0u8; LIVEUPDATE_SESSION_NAME_LENGTH];
        for (dst, src) in field.iter_mut().zip(name) {
            *dst = *src;
        }
        field
    }

    fn session<O: Clone>(files: &FdTable<O>, session_fd: i32) -> Result<Target, Errno> {
        files
            .session(session_fd)
            .map(Target::Session)
            .ok_or(Errno::EBADF)
    }

    /// `LIVEUPDATE_IOCTL_CREATE_SESSION`: the new session's fd.
    pub fn create_session<O: Clone>(
        luo: &mut LiveUpdate<'_, '_, O>,
        files: &mut FdTable<O>,
        name: &[u8],
    ) -> Result<i32, Errno> {
        let mut arg = LiveupdateIoctlCreateSession {
            size: 72,
            fd: -1,
            name: name_field(name),
        };
        luo.ioctl(
            Target::Device,
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            arg.as_mut_bytes(),
            files,
        )?;
        Ok(arg.fd)
    }

    /// `LIVEUPDATE_IOCTL_RETRIEVE_SESSION`: the retrieved session's fd.
    pub fn retrieve_session<O: Clone>(
        luo: &mut LiveUpdate<'_, '_, O>,
        files: &mut FdTable<O>,
        name: &[u8],
    ) -> Result<i32, Errno> {
        let mut arg = LiveupdateIoctlRetrieveSession {
            size: 72,
            fd: -1,
            name: name_field(name),
        };
        luo.ioctl(
            Target::Device,
            LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            arg.as_mut_bytes(),
            files,
        )?;
        Ok(arg.fd)
    }

    /// `LIVEUPDATE_SESSION_PRESERVE_FD`.
    pub fn preserve_fd<O: Clone>(
        luo: &mut LiveUpdate<'_, '_, O>,
        files: &mut FdTable<O>,
        session_fd: i32,
        fd: i32,
        token: u64,
    ) -> Result<(), Errno> {
        let target = session(files, session_fd)?;
        let mut arg = LiveupdateSessionPreserveFd {
            size: 16,
            fd,
            token,
        };
        luo.ioctl(
            target,
            LIVEUPDATE_SESSION_PRESERVE_FD,
            arg.as_mut_bytes(),
            files,
        )
    }

    /// `LIVEUPDATE_SESSION_RETRIEVE_FD`: the restored file's fd.
    pub fn retrieve_fd<O: Clone>(
        luo: &mut LiveUpdate<'_, '_, O>,
        files: &mut FdTable<O>,
        session_fd: i32,
        token: u64,
    ) -> Result<i32, Errno> {
        let target = session(files, session_fd)?;
        let mut arg = LiveupdateSessionRetrieveFd {
            size: 16,
            fd: -1,
            token,
        };
        luo.ioctl(
            target,
            LIVEUPDATE_SESSION_RETRIEVE_FD,
            arg.as_mut_bytes(),
            files,
        )?;
        Ok(arg.fd)
    }

    /// `LIVEUPDATE_SESSION_FINISH` with `reserved` as given.
    pub fn finish<O: Clone>(
        luo: &mut LiveUpdate<'_, '_, O>,
        files: &mut FdTable<O>,
        session_fd: i32,
        reserved: u32,
    ) -> Result<(), Errno> {
        let target = session(files, session_fd)?;
        let mut arg = LiveupdateSessionFinish { size: 8, reserved };
        luo.ioctl(target, LIVEUPDATE_SESSION_FINISH, arg.as_mut_bytes(), files)
    }

    /// Closes a session fd (the orchestrator's `close_session`, then the table's fd).
    pub fn close_session<O: Clone>(
        luo: &mut LiveUpdate<'_, '_, O>,
        files: &mut FdTable<O>,
        session_fd: i32,
    ) -> Result<(), Errno> {
        let id = files.session(session_fd).ok_or(Errno::EBADF)?;
        files.close(session_fd);
        luo.close_session(id, files)
    }
}
