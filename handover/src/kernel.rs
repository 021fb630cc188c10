//! What the embedding kernel provides: physical memory access, a page allocator and its file
//! table. The core never touches hardware or global state; it reaches the kernel only through
//! these traits, which the host tests implement over simulated RAM.

use crate::addr::PhysAddr;
use crate::uapi::Errno;

/// Byte access to physical memory (an identity or direct map on bare metal).
///
/// Callers only pass ranges they own (pages of their own files), so the methods cannot fail;
/// an implementation may panic on an address it does not map, which is a caller bug.
pub trait PhysMemory {
    /// Copies `buf.len()` bytes starting at `addr` into `buf`.
    fn read(&self, addr: PhysAddr, buf: &mut [u8]);
    /// Copies `data` to physical memory starting at `addr`.
    fn write(&mut self, addr: PhysAddr, data: &[u8]);
    /// Sets `len_bytes` bytes starting at `addr` to zero.
    fn zero(&mut self, addr: PhysAddr, len_bytes: usize) {
        const ZEROS: [u8; 256] = [0; 256];
        let mut done = 0usize;
        while done < len_bytes {
            let step = (len_bytes.wrapping_sub(done)).min(ZEROS.len());
            let at = PhysAddr::new(addr.as_u64().wrapping_add(done as u64));
            self.write(at, ZEROS.get(..step).unwrap_or(&[]));
            done = done.wrapping_add(step);
        }
    }
}

/// The kernel's allocator of 4 KiB physical pages for file contents. Pages it returns must lie
/// outside scratch (they may be preserved).
pub trait FrameAllocator {
    /// A free page, or `None` when memory is exhausted.
    fn allocate_page(&mut self) -> Option<PhysAddr>;
    /// Returns a page to the free pool.
    fn free_page(&mut self, addr: PhysAddr);
}

/// Identifies a session for the kernel's file table: the kernel installs an fd for it and
/// hands it back with every session ioctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub(crate) u32);

impl SessionId {
    /// The raw identifier (stable for the session's life).
    pub fn as_u32(self) -> u32 {
        self.0
    }

    /// Whether the session came from the previous kernel.
    pub fn is_incoming(self) -> bool {
        self.0 & INCOMING_BIT != 0
    }
}

pub(crate) const INCOMING_BIT: u32 = 1 << 31;

/// The kernel's file table, as the orchestrator needs it. `O` is the kernel's handle to an
/// open file object (cheap to clone: a reference count or an index).
pub trait FileTable<O> {
    /// The object behind a userspace fd, or `EBADF`.
    fn resolve(&mut self, fd: i32) -> Result<O, Errno>;
    /// Installs a new fd for a session (`EMFILE` when the table is full).
    fn install_session(&mut self, session: SessionId) -> Result<i32, Errno>;
    /// Installs a new fd for a restored file object.
    fn install_file(&mut self, object: O) -> Result<i32, Errno>;
}
