//! The state the QEMU scenarios carry across kexecs: sessions of memfd files with deterministic
//! contents of several shapes (dense, sparse, multi-MiB, one byte, empty), sealed or not, with a
//! file position. The loader creates them; every next kernel checks each byte, each size,
//! position and seal, and how many pages are populated (a sparse file stays sparse).
//!
//! A chain of kernels *stamps* the files: hop `j` writes 8 bytes into page `j` of each file
//! (populating it if it was a hole), so hop `h` expects the stamps of hops `1..h`.
//!
//! Pure (`alloc`): host-tested against `handover::sim`.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use handover::PAGE_SIZE;
use handover::fdtable::{FdTable, agent};
use handover::kernel::{FrameAllocator, PhysMemory};
use handover::luo::LiveUpdate;
use handover::memfd::{F_SEAL_SHRINK, Memfd, MemfdFile};
use handover::uapi::Errno;

/// Which pages of a file hold data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every page.
    Dense,
    /// Pages whose index is a multiple of `every`; the others are holes.
    Sparse {
        /// The stride, at least 1.
        every: u64,
    },
}

/// One file of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// The token it is preserved with.
    pub token: u64,
    /// Its size.
    pub size_bytes: u64,
    /// Which pages hold data.
    pub layout: Layout,
    /// Seeds its contents.
    pub seed: u64,
}

/// One session of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSpec {
    /// Its name (arbitrary bytes).
    pub name: Vec<u8>,
    /// Its files.
    pub files: Vec<FileSpec>,
}

/// Where a file does not hold what it should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// What differs (`byte`, `size`, `position`, `seals`, `populated pages`).
    pub what: &'static str,
    /// The byte offset, for a byte.
    pub offset: u64,
    /// The expected value.
    pub expected: u64,
    /// The value found.
    pub found: u64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {:#x}: expected {:#x}, found {:#x}",
            self.what, self.offset, self.expected, self.found
        )
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes of a file's stamp from hop `j` (at offset `j * PAGE_SIZE + 8`).
const STAMP_OFFSET: u64 = 8;
const STAMP_LEN: u64 = 8;
/// Verification reads this much at a time.
const CHUNK: usize = 16 * 1024;

impl FileSpec {
    /// The file position it is left at.
    pub fn position(&self) -> u64 {
        self.size_bytes / 2
    }

    /// Its seals: odd tokens are sealed against shrinking.
    pub fn seals(&self) -> u32 {
        if self.token % 2 == 1 {
            F_SEAL_SHRINK
        } else {
            0
        }
    }

    fn page_count(&self) -> u64 {
        self.size_bytes.div_ceil(PAGE_SIZE)
    }

    fn holds_data(&self, page: u64) -> bool {
        match self.layout {
            Layout::Dense => true,
            Layout::Sparse { every } => page.is_multiple_of(every.max(1)),
        }
    }

    /// Whether hop `hop` stamps this file (the stamp fits inside it).
    fn stamped_by(&self, hop: u64) -> bool {
        hop >= 1 && hop * PAGE_SIZE + STAMP_OFFSET + STAMP_LEN <= self.size_bytes
    }

    fn stamp_value(&self, hop: u64) -> u64 {
        self.seed.rotate_left((hop % 64) as u32) ^ hop
    }

    /// The original pattern word `index` (8 bytes from byte `8 * index`).
    fn word(&self, index: u64) -> u64 {
        splitmix(self.seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ index)
    }

    /// Writes the expected bytes of `[offset, offset + out.len())` after `stamps` hops.
    fn expected(&self, offset: u64, out: &mut [u8], stamps: u64) {
        for (i, byte) in out.iter_mut().enumerate() {
            let at = offset + i as u64;
            let page = at / PAGE_SIZE;
            *byte = if self.holds_data(page) {
                (self.word(at / 8) >> (8 * (at % 8))) as u8
            } else {
                0
            };
        }
        let first_page = offset / PAGE_SIZE;
        let last_page = (offset + out.len() as u64).div_ceil(PAGE_SIZE);
        for hop in first_page.max(1)..last_page.min(stamps + 1) {
            if !self.stamped_by(hop) {
                continue;
            }
            let stamp = self.stamp_value(hop).to_le_bytes();
            for (k, value) in stamp.iter().enumerate() {
                let at = hop * PAGE_SIZE + STAMP_OFFSET + k as u64;
                if at >= offset && at < offset + out.len() as u64 {
                    out[(at - offset) as usize] = *value;
                }
            }
        }
    }

    /// Pages that hold data after `stamps` hops.
    pub fn populated_pages(&self, stamps: u64) -> u64 {
        let pages = self.page_count();
        let data = (0..pages).filter(|&p| self.holds_data(p)).count() as u64;
        let stamped_holes = (1..=stamps)
            .filter(|&h| self.stamped_by(h) && !self.holds_data(h))
            .count() as u64;
        data + stamped_holes
    }

    /// Creates the file: writes the pages that hold data, then sets size, position and seals.
    pub fn create(
        &self,
        frames: &mut dyn FrameAllocator,
        memory: &mut dyn PhysMemory,
    ) -> Result<Memfd, Errno> {
        let mut memfd = Memfd::new();
        let mut buffer = vec![0u8; CHUNK];
        for page in (0..self.page_count()).filter(|&p| self.holds_data(p)) {
            // Dense files are written a chunk at a time, sparse ones a page at a time.
            let start = page * PAGE_SIZE;
            let end = match self.layout {
                Layout::Dense if page % (CHUNK as u64 / PAGE_SIZE) != 0 => continue,
                Layout::Dense => (start + CHUNK as u64).min(self.size_bytes),
                Layout::Sparse { .. } => (start + PAGE_SIZE).min(self.size_bytes),
            };
            let chunk = &mut buffer[..(end - start) as usize];
            self.expected(start, chunk, 0);
            memfd.write_at(start, chunk, frames, memory)?;
        }
        memfd.set_size(self.size_bytes, frames, memory)?;
        memfd.seek(self.position());
        memfd.add_seals(self.seals())?;
        Ok(memfd)
    }

    /// Hop `hop`'s change: its stamp, written into page `hop` (if it fits).
    pub fn stamp(
        &self,
        memfd: &mut Memfd,
        hop: u64,
        frames: &mut dyn FrameAllocator,
        memory: &mut dyn PhysMemory,
    ) -> Result<(), Errno> {
        if !self.stamped_by(hop) {
            return Ok(());
        }
        memfd.write_at(
            hop * PAGE_SIZE + STAMP_OFFSET,
            &self.stamp_value(hop).to_le_bytes(),
            frames,
            memory,
        )
    }

    /// Checks the file against the spec after `stamps` hops: size, position, seals, populated
    /// pages, and every byte.
    pub fn verify(
        &self,
        memfd: &Memfd,
        memory: &dyn PhysMemory,
        stamps: u64,
    ) -> Result<(), Mismatch> {
        let mismatch = |what, expected: u64, found: u64| Mismatch {
            what,
            offset: 0,
            expected,
            found,
        };
        if memfd.size() != self.size_bytes {
            return Err(mismatch("size", self.size_bytes, memfd.size()));
        }
        if memfd.position() != self.position() {
            return Err(mismatch("position", self.position(), memfd.position()));
        }
        if memfd.seals() != self.seals() {
            return Err(mismatch(
                "seals",
                u64::from(self.seals()),
                u64::from(memfd.seals()),
            ));
        }
        let pages = memfd.populated_pages() as u64;
        if pages != self.populated_pages(stamps) {
            return Err(mismatch(
                "populated pages",
                self.populated_pages(stamps),
                pages,
            ));
        }
        let mut found = vec![0u8; CHUNK];
        let mut expected = vec![0u8; CHUNK];
        let mut offset = 0u64;
        while offset < self.size_bytes {
            let len = (self.size_bytes - offset).min(CHUNK as u64) as usize;
            let read = memfd.read_at(offset, &mut found[..len], memory);
            if read != len {
                return Err(Mismatch {
                    what: "read length",
                    offset,
                    expected: len as u64,
                    found: read as u64,
                });
            }
            self.expected(offset, &mut expected[..len], stamps);
            if let Some(i) = (0..len).find(|&i| found[i] != expected[i]) {
                return Err(Mismatch {
                    what: "byte",
                    offset: offset + i as u64,
                    expected: u64::from(expected[i]),
                    found: u64::from(found[i]),
                });
            }
            offset += len as u64;
        }
        Ok(())
    }
}

/// A kernel's file table of memfds.
pub type Files = FdTable<MemfdFile>;

/// What went wrong with a session of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadError {
    /// The session.
    pub session: Vec<u8>,
    /// The file's token, if a file.
    pub token: Option<u64>,
    /// What failed.
    pub cause: Cause,
}

/// Why a session or file failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// An ioctl or file operation returned this errno.
    Errno(Errno),
    /// A restored file differs from what was preserved.
    Mismatch(Mismatch),
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session \"{}\"", self.session.escape_ascii())?;
        if let Some(token) = self.token {
            write!(f, " file {token:#x}")?;
        }
        match self.cause {
            Cause::Errno(errno) => write!(f, ": {errno}"),
            Cause::Mismatch(mismatch) => write!(f, ": {mismatch}"),
        }
    }
}

fn failed(session: &SessionSpec, token: Option<u64>, cause: Cause) -> WorkloadError {
    WorkloadError {
        session: session.name.clone(),
        token,
        cause,
    }
}

/// Creates the sessions and files of `specs` through `/dev/liveupdate` and preserves every
/// file, as a userspace agent would. Returns each session's fds.
pub fn create_and_preserve(
    specs: &[SessionSpec],
    luo: &mut LiveUpdate<'_, '_, MemfdFile>,
    files: &mut Files,
    pages: &mut dyn FrameAllocator,
    memory: &mut dyn PhysMemory,
) -> Result<Vec<SessionFds>, WorkloadError> {
    let mut created = Vec::with_capacity(specs.len());
    for session in specs {
        let session_fd = agent::create_session(luo, files, &session.name)
            .map_err(|e| failed(session, None, Cause::Errno(e)))?;
        let mut file_fds = Vec::with_capacity(session.files.len());
        for spec in &session.files {
            let memfd = spec
                .create(pages, memory)
                .map_err(|e| failed(session, Some(spec.token), Cause::Errno(e)))?;
            let fd = files.open(MemfdFile::new(memfd));
            agent::preserve_fd(luo, files, session_fd, fd, spec.token)
                .map_err(|e| failed(session, Some(spec.token), Cause::Errno(e)))?;
            file_fds.push(fd);
        }
        created.push(SessionFds {
            session_fd,
            file_fds,
        });
    }
    Ok(created)
}

/// Preserves files this kernel already holds (restored from the previous one) in a new
/// outgoing session of the same name and tokens.
pub fn preserve_again(
    session: &SessionSpec,
    file_fds: &[i32],
    luo: &mut LiveUpdate<'_, '_, MemfdFile>,
    files: &mut Files,
) -> Result<i32, WorkloadError> {
    let session_fd = agent::create_session(luo, files, &session.name)
        .map_err(|e| failed(session, None, Cause::Errno(e)))?;
    for (spec, &fd) in session.files.iter().zip(file_fds) {
        agent::preserve_fd(luo, files, session_fd, fd, spec.token)
            .map_err(|e| failed(session, Some(spec.token), Cause::Errno(e)))?;
    }
    Ok(session_fd)
}

/// A small state file a chain of kernels passes along: one session named `name` with one
/// memfd (token 0) holding little-endian words.
pub fn preserve_state(
    name: &[u8],
    words: &[u64],
    luo: &mut LiveUpdate<'_, '_, MemfdFile>,
    files: &mut Files,
    pages: &mut dyn FrameAllocator,
    memory: &mut dyn PhysMemory,
) -> Result<i32, WorkloadError> {
    let session = SessionSpec {
        name: name.to_vec(),
        files: Vec::new(),
    };
    let errno = |e| failed(&session, Some(0), Cause::Errno(e));
    let mut bytes = Vec::with_capacity(words.len() * 8);
    for word in words {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let mut memfd = Memfd::new();
    memfd.write_at(0, &bytes, pages, memory).map_err(errno)?;
    let session_fd = agent::create_session(luo, files, name)
        .map_err(|e| failed(&session, None, Cause::Errno(e)))?;
    let fd = files.open(MemfdFile::new(memfd));
    agent::preserve_fd(luo, files, session_fd, fd, 0).map_err(errno)?;
    Ok(fd)
}

/// Retrieves a state file of [`preserve_state`], finishes its session, and returns its words
/// and its fd.
pub fn retrieve_state(
    name: &[u8],
    luo: &mut LiveUpdate<'_, '_, MemfdFile>,
    files: &mut Files,
    memory: &dyn PhysMemory,
) -> Result<(Vec<u64>, i32), WorkloadError> {
    let session = SessionSpec {
        name: name.to_vec(),
        files: Vec::new(),
    };
    let errno = |e| failed(&session, Some(0), Cause::Errno(e));
    let session_fd = agent::retrieve_session(luo, files, name)
        .map_err(|e| failed(&session, None, Cause::Errno(e)))?;
    let fd = agent::retrieve_fd(luo, files, session_fd, 0).map_err(errno)?;
    let file = files.object(fd).cloned().ok_or(errno(Errno::EBADF))?;
    let words = file
        .with(|memfd| {
            let mut bytes = vec![0u8; memfd.size() as usize];
            memfd.read_at(0, &mut bytes, memory);
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        })
        .ok_or(errno(Errno::EBUSY))?;
    agent::finish(luo, files, session_fd, 0).map_err(errno)?;
    agent::close_session(luo, files, session_fd).map_err(errno)?;
    Ok((words, fd))
}

/// A session's fds: the session and each file, in spec order.
#[derive(Clone, Debug)]
pub struct SessionFds {
    /// The session fd.
    pub session_fd: i32,
    /// The restored files' fds.
    pub file_fds: Vec<i32>,
}

/// Retrieves `session` by name and every file by token, and checks each byte (after `stamps`
/// hops of a chain).
pub fn retrieve_and_verify(
    session: &SessionSpec,
    luo: &mut LiveUpdate<'_, '_, MemfdFile>,
    files: &mut Files,
    memory: &dyn PhysMemory,
    stamps: u64,
) -> Result<SessionFds, WorkloadError> {
    let session_fd = agent::retrieve_session(luo, files, &session.name)
        .map_err(|e| failed(session, None, Cause::Errno(e)))?;
    let mut file_fds = Vec::with_capacity(session.files.len());
    for spec in &session.files {
        let fd = agent::retrieve_fd(luo, files, session_fd, spec.token)
            .map_err(|e| failed(session, Some(spec.token), Cause::Errno(e)))?;
        file_fds.push(fd);
    }
    verify_held(session, &file_fds, files, memory, stamps)?;
    Ok(SessionFds {
        session_fd,
        file_fds,
    })
}

/// Checks the files of a session still held by this kernel (after a refused kexec, say).
pub fn verify_held(
    session: &SessionSpec,
    file_fds: &[i32],
    files: &Files,
    memory: &dyn PhysMemory,
    stamps: u64,
) -> Result<(), WorkloadError> {
    for (spec, &fd) in session.files.iter().zip(file_fds) {
        let file = files.object(fd).ok_or(failed(
            session,
            Some(spec.token),
            Cause::Errno(Errno::EBADF),
        ))?;
        file.with(|memfd| spec.verify(memfd, memory, stamps))
            .ok_or(failed(
                session,
                Some(spec.token),
                Cause::Errno(Errno::EBUSY),
            ))?
            .map_err(|m| failed(session, Some(spec.token), Cause::Mismatch(m)))?;
    }
    Ok(())
}

/// Pages held by the memfds of a file table (what a kernel owns as file contents).
pub fn file_pages(files: &Files, fds: impl IntoIterator<Item = i32>) -> u64 {
    fds.into_iter()
        .filter_map(|fd| files.object(fd))
        .map(|file| file.with(|m| m.populated_pages() as u64).unwrap_or(0))
        .sum()
}

/// Total bytes of a workload's files.
pub fn total_bytes(sessions: &[SessionSpec]) -> u64 {
    sessions
        .iter()
        .flat_map(|s| &s.files)
        .map(|f| f.size_bytes)
        .sum()
}

fn file(token: u64, size_bytes: u64, layout: Layout) -> FileSpec {
    FileSpec {
        token,
        size_bytes,
        layout,
        seed: splitmix(token ^ size_bytes),
    }
}

/// `basic`: several sessions with several files, about 10 MiB: multi-MiB dense files, sparse
/// files, a one-byte file, an empty file, and a session name that is not UTF-8.
pub fn basic() -> Vec<SessionSpec> {
    vec![
        SessionSpec {
            name: b"vm-1/guest-ram".to_vec(),
            files: vec![
                file(1, 4 * 1024 * 1024 + 123, Layout::Dense),
                file(2, 2 * 1024 * 1024, Layout::Sparse { every: 5 }),
                file(3, 1, Layout::Dense),
            ],
        },
        SessionSpec {
            name: b"vm-2/devices".to_vec(),
            files: vec![
                file(10, 100 * 1024, Layout::Dense),
                file(11, 0, Layout::Dense),
                file(12, 3 * 1024 * 1024, Layout::Dense),
            ],
        },
        SessionSpec {
            name: vec![0xC3, 0x28, b' ', b'a', b'g', b'e', b'n', b't', 0x01],
            files: vec![
                file(u64::MAX, 13, Layout::Dense),
                file(0, 1024 * 1024, Layout::Sparse { every: 16 }),
            ],
        },
    ]
}

/// `many`: 300 sessions of two files each, about 40 MiB, a tenth of them sparse.
pub fn many() -> Vec<SessionSpec> {
    (0..300u64)
        .map(|s| SessionSpec {
            name: alloc::format!("many-{s:03}").into_bytes(),
            files: (0..2u64)
                .map(|f| {
                    let index = 2 * s + f;
                    let size = PAGE_SIZE * (1 + (index * 7) % 31) + index;
                    let layout = if index % 10 == 3 {
                        Layout::Sparse { every: 3 }
                    } else {
                        Layout::Dense
                    };
                    file(100 + f, size, layout)
                })
                .collect(),
        })
        .collect()
}

/// The session name of the `chain` scenario's state file: `[hop, baseline page count]`.
pub const CHAIN_STATE: &[u8] = b"chain/state";
/// The session name of the `unfinished` scenario's state file: the abandoned pages.
pub const UNFINISHED_STATE: &[u8] = b"unfinished/state";
/// How many kexecs the `chain` scenario makes.
pub const CHAIN_LENGTH: u64 = 10;

/// The spec of a state file's one file (token 0): what `preserve_again` needs to preserve it
/// once more.
pub fn state_file() -> FileSpec {
    FileSpec {
        token: 0,
        size_bytes: 16,
        layout: Layout::Dense,
        seed: 0,
    }
}

/// `chain`: the files ten kernels carry forward, stamping each hop.
pub fn chain() -> Vec<SessionSpec> {
    vec![
        SessionSpec {
            name: b"chain/a".to_vec(),
            files: vec![
                file(1, 256 * 1024, Layout::Dense),
                file(2, 1024 * 1024, Layout::Sparse { every: 3 }),
            ],
        },
        SessionSpec {
            name: b"chain/b".to_vec(),
            files: vec![file(7, 12 * 1024 + 5, Layout::Dense)],
        },
    ]
}

/// `unfinished`: a session kernel 2 keeps and one it never retrieves.
pub fn unfinished() -> (SessionSpec, SessionSpec) {
    (
        SessionSpec {
            name: b"kept".to_vec(),
            files: vec![
                file(1, 64 * 1024, Layout::Dense),
                file(2, 512 * 1024, Layout::Sparse { every: 4 }),
            ],
        },
        SessionSpec {
            name: b"abandoned".to_vec(),
            files: vec![
                file(1, 2 * 1024 * 1024, Layout::Dense),
                file(2, 8 * 1024, Layout::Dense),
            ],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover::sim::{SimFrames, SimRam};
    use handover::{PhysAddr, PhysRange};

    fn machine() -> (SimRam, SimFrames) {
        let ram = PhysRange::new(PhysAddr::new(1 << 20), 15 << 20).unwrap();
        (SimRam::new(&[ram]), SimFrames::new(ram))
    }

    #[test]
    fn files_verify_and_detect_damage() {
        let (mut ram, mut frames) = machine();
        for spec in basic().iter().flat_map(|s| &s.files) {
            let memfd = spec.create(&mut frames, &mut ram).unwrap();
            spec.verify(&memfd, &ram, 0).unwrap();
            assert_eq!(memfd.populated_pages() as u64, spec.populated_pages(0));
            if spec.size_bytes > 1 {
                // One changed byte is found, at its offset.
                let (_, page) = memfd.pages().last().unwrap();
                let mut byte = [0u8];
                handover::kernel::PhysMemory::read(&ram, page, &mut byte);
                handover::kernel::PhysMemory::write(&mut ram, page, &[byte[0] ^ 1]);
                let error = spec.verify(&memfd, &ram, 0).unwrap_err();
                assert_eq!(error.what, "byte");
            }
        }
    }

    #[test]
    fn stamps_accumulate_and_populate_holes() {
        let (mut ram, mut frames) = machine();
        let spec = &chain()[0].files[1];
        let mut memfd = spec.create(&mut frames, &mut ram).unwrap();
        for hop in 1..=10 {
            spec.stamp(&mut memfd, hop, &mut frames, &mut ram).unwrap();
            spec.verify(&memfd, &ram, hop).unwrap();
            assert!(spec.verify(&memfd, &ram, hop - 1).is_err());
        }
        // Pages 1, 2, 4, 5, 7, 8, 10 were holes the stamps populated.
        assert_eq!(memfd.populated_pages() as u64, spec.populated_pages(0) + 7);
    }

    #[test]
    fn sessions_round_trip_through_the_core() {
        use handover::luo::Limits;
        use handover::memfd::MemfdHandler;
        use handover::tracker::PreservationTracker;
        static MEMFD: MemfdHandler = MemfdHandler::new();
        let (mut ram, mut frames) = machine();
        let ranges = ram.ranges();
        let mut luo = LiveUpdate::with_tracker(
            Limits::default(),
            PreservationTracker::new(&ranges, &[]).unwrap(),
        );
        luo.register_handler(&MEMFD).unwrap();
        let mut files = Files::new();
        let specs = chain();
        let created =
            create_and_preserve(&specs, &mut luo, &mut files, &mut frames, &mut ram).unwrap();
        let expected: u64 = specs
            .iter()
            .flat_map(|s| &s.files)
            .map(|f| f.populated_pages(0))
            .sum();
        assert_eq!(luo.tracker().unwrap().page_count(), expected);
        let fds = created.iter().flat_map(|s| s.file_fds.iter().copied());
        assert_eq!(file_pages(&files, fds), expected);
        for (session, fds) in specs.iter().zip(&created) {
            verify_held(session, &fds.file_fds, &files, &ram, 0).unwrap();
        }
        preserve_state(
            b"state",
            &[7, 9],
            &mut luo,
            &mut files,
            &mut frames,
            &mut ram,
        )
        .unwrap();
        assert_eq!(luo.tracker().unwrap().page_count(), expected + 1);
    }

    #[test]
    fn many_is_tens_of_mib() {
        let total = total_bytes(&many());
        assert!((20 << 20..60 << 20).contains(&total), "{total}");
        assert_eq!(many().iter().map(|s| s.files.len()).sum::<usize>(), 600);
    }
}
