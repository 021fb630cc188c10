//! The `/dev/liveupdate` userspace ABI, byte-exact with Linux's `include/uapi/linux/liveupdate.h`.
//!
//! Constants keep the header's names; structs are the header's names in CamelCase with the
//! header's field names, sizes, alignment and offsets. Every struct is `#[repr(C)]` and
//! zerocopy-derived so that the dispatch code reads and writes argument bytes without `unsafe`.
//! The errno values the orchestrator returns are here too, as [`Errno`] constants.

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The ioctl type byte, documented in Linux's `ioctl-number.rst`.
pub const LIVEUPDATE_IOCTL_TYPE: u32 = 0xBA;
/// The maximum length of a session name, including the terminating NUL.
pub const LIVEUPDATE_SESSION_NAME_LENGTH: usize = 64;

/// First command number of the device (`/dev/liveupdate`) table.
pub const LIVEUPDATE_CMD_BASE: u32 = 0x00;
/// Command number of [`LIVEUPDATE_IOCTL_CREATE_SESSION`].
pub const LIVEUPDATE_CMD_CREATE_SESSION: u32 = LIVEUPDATE_CMD_BASE;
/// Command number of [`LIVEUPDATE_IOCTL_RETRIEVE_SESSION`].
pub const LIVEUPDATE_CMD_RETRIEVE_SESSION: u32 = 0x01;

/// First command number of the session table.
pub const LIVEUPDATE_CMD_SESSION_BASE: u32 = 0x40;
/// Command number of [`LIVEUPDATE_SESSION_PRESERVE_FD`].
pub const LIVEUPDATE_CMD_SESSION_PRESERVE_FD: u32 = LIVEUPDATE_CMD_SESSION_BASE;
/// Command number of [`LIVEUPDATE_SESSION_RETRIEVE_FD`].
pub const LIVEUPDATE_CMD_SESSION_RETRIEVE_FD: u32 = 0x41;
/// Command number of [`LIVEUPDATE_SESSION_FINISH`].
pub const LIVEUPDATE_CMD_SESSION_FINISH: u32 = 0x42;

// Linux's generic ioctl number layout (asm-generic/ioctl.h): nr in bits 0..8, type in 8..16,
// size in 16..30, direction in 30..32.
const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
/// `_IOC_NONE`: no data transfer encoded in the number.
pub const IOC_NONE: u32 = 0;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    (dir << IOC_DIRSHIFT) | (ty << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) | (size << IOC_SIZESHIFT)
}

/// `_IO(type, nr)`: the form every LUO ioctl uses (no size or direction bits).
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOC_NR(cmd)`.
pub const fn ioc_nr(cmd: u32) -> u32 {
    (cmd >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1)
}

/// `LIVEUPDATE_IOCTL_CREATE_SESSION` = `_IO(0xBA, 0x00)`.
pub const LIVEUPDATE_IOCTL_CREATE_SESSION: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_CREATE_SESSION);
/// `LIVEUPDATE_IOCTL_RETRIEVE_SESSION` = `_IO(0xBA, 0x01)`.
pub const LIVEUPDATE_IOCTL_RETRIEVE_SESSION: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_RETRIEVE_SESSION);
/// `LIVEUPDATE_SESSION_PRESERVE_FD` = `_IO(0xBA, 0x40)`.
pub const LIVEUPDATE_SESSION_PRESERVE_FD: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_PRESERVE_FD);
/// `LIVEUPDATE_SESSION_RETRIEVE_FD` = `_IO(0xBA, 0x41)`.
pub const LIVEUPDATE_SESSION_RETRIEVE_FD: u32 =
    io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_RETRIEVE_FD);
/// `LIVEUPDATE_SESSION_FINISH` = `_IO(0xBA, 0x42)`.
pub const LIVEUPDATE_SESSION_FINISH: u32 = io(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_FINISH);

/// `struct liveupdate_ioctl_create_session` (72 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LiveupdateIoctlCreateSession {
    /// Input: `sizeof(struct liveupdate_ioctl_create_session)`.
    pub size: u32,
    /// Output: the new session's file descriptor.
    pub fd: i32,
    /// Input: the session name, NUL-terminated within 64 bytes.
    pub name: [u8; LIVEUPDATE_SESSION_NAME_LENGTH],
}

/// `struct liveupdate_ioctl_retrieve_session` (72 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LiveupdateIoctlRetrieveSession {
    /// Input: `sizeof(struct liveupdate_ioctl_retrieve_session)`.
    pub size: u32,
    /// Output: the retrieved session's file descriptor.
    pub fd: i32,
    /// Input: the exact name the session was created with.
    pub name: [u8; LIVEUPDATE_SESSION_NAME_LENGTH],
}

/// `struct liveupdate_session_preserve_fd` (16 bytes; `token` is `__aligned_u64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LiveupdateSessionPreserveFd {
    /// Input: `sizeof(struct liveupdate_session_preserve_fd)`.
    pub size: u32,
    /// Input: the file descriptor to preserve.
    pub fd: i32,
    /// Input: the caller's token for the file, unique in its session.
    pub token: u64,
}

/// `struct liveupdate_session_retrieve_fd` (16 bytes; `token` is `__aligned_u64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LiveupdateSessionRetrieveFd {
    /// Input: `sizeof(struct liveupdate_session_retrieve_fd)`.
    pub size: u32,
    /// Output: a file descriptor for the restored file.
    pub fd: i32,
    /// Input: the token the file was preserved with.
    pub token: u64,
}

/// `struct liveupdate_session_finish` (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LiveupdateSessionFinish {
    /// Input: `sizeof(struct liveupdate_session_finish)`.
    pub size: u32,
    /// Input: must be zero.
    pub reserved: u32,
}

/// A positive Linux errno value, as the ioctls return it (negated by the syscall layer).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file, session or token.
    pub const ENOENT: Errno = Errno(2);
    /// I/O error: the incoming state could not be read.
    pub const EIO: Errno = Errno(5);
    /// Argument list too long: non-zero bytes past the known struct.
    pub const E2BIG: Errno = Errno(7);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno(9);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Bad address: the argument buffer is shorter than it claims.
    pub const EFAULT: Errno = Errno(14);
    /// Busy: already preserved, already open, frozen, or a file cannot finish yet.
    pub const EBUSY: Errno = Errno(16);
    /// Already exists: a session name or token in use.
    pub const EEXIST: Errno = Errno(17);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// Too many open files.
    pub const EMFILE: Errno = Errno(24);
    /// Not a typewriter: the ioctl number is malformed for this device.
    pub const ENOTTY: Errno = Errno(25);
    /// File too large.
    pub const EFBIG: Errno = Errno(27);
    /// No space left: a capacity limit was reached.
    pub const ENOSPC: Errno = Errno(28);
    /// Value too large / arithmetic overflow.
    pub const EOVERFLOW: Errno = Errno(75);
    /// Operation not supported: a known field has a value this kernel does not support.
    pub const EOPNOTSUPP: Errno = Errno(95);

    /// The symbolic name, or `"E?"` for a value this crate never produces.
    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            5 => "EIO",
            7 => "E2BIG",
            9 => "EBADF",
            12 => "ENOMEM",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            22 => "EINVAL",
            24 => "EMFILE",
            25 => "ENOTTY",
            27 => "EFBIG",
            28 => "ENOSPC",
            75 => "EOVERFLOW",
            95 => "EOPNOTSUPP",
            _ => "E?",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn ioctl_numbers_match_the_header() {
        assert_eq!(LIVEUPDATE_IOCTL_CREATE_SESSION, 0xBA00);
        assert_eq!(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, 0xBA01);
        assert_eq!(LIVEUPDATE_SESSION_PRESERVE_FD, 0xBA40);
        assert_eq!(LIVEUPDATE_SESSION_RETRIEVE_FD, 0xBA41);
        assert_eq!(LIVEUPDATE_SESSION_FINISH, 0xBA42);
        assert_eq!(ioc_nr(LIVEUPDATE_SESSION_FINISH), 0x42);
        // A `_IOWR` form of the same number differs only in direction and size bits.
        assert_eq!(ioc(3, 0xBA, 0x40, 16), 0xC010_BA40);
    }

    #[test]
    fn struct_layouts_match_the_header() {
        assert_eq!(size_of::<LiveupdateIoctlCreateSession>(), 72);
        assert_eq!(offset_of!(LiveupdateIoctlCreateSession, size), 0);
        assert_eq!(offset_of!(LiveupdateIoctlCreateSession, fd), 4);
        assert_eq!(offset_of!(LiveupdateIoctlCreateSession, name), 8);
        assert_eq!(align_of::<LiveupdateIoctlCreateSession>(), 4);

        assert_eq!(size_of::<LiveupdateIoctlRetrieveSession>(), 72);
        assert_eq!(offset_of!(LiveupdateIoctlRetrieveSession, fd), 4);
        assert_eq!(offset_of!(LiveupdateIoctlRetrieveSession, name), 8);

        assert_eq!(size_of::<LiveupdateSessionPreserveFd>(), 16);
        assert_eq!(offset_of!(LiveupdateSessionPreserveFd, fd), 4);
        assert_eq!(offset_of!(LiveupdateSessionPreserveFd, token), 8);
        assert_eq!(align_of::<LiveupdateSessionPreserveFd>(), 8);

        assert_eq!(size_of::<LiveupdateSessionRetrieveFd>(), 16);
        assert_eq!(offset_of!(LiveupdateSessionRetrieveFd, token), 8);
        assert_eq!(align_of::<LiveupdateSessionRetrieveFd>(), 8);

        assert_eq!(size_of::<LiveupdateSessionFinish>(), 8);
        assert_eq!(offset_of!(LiveupdateSessionFinish, reserved), 4);
    }

    #[test]
    fn errno_values_are_linux_x86_64() {
        assert_eq!(Errno::ENOENT.0, 2);
        assert_eq!(Errno::EINVAL.0, 22);
        assert_eq!(Errno::ENOTTY.0, 25);
        assert_eq!(Errno::EOPNOTSUPP.0, 95);
        assert_eq!(Errno::E2BIG.name(), "E2BIG");
    }
}
