//! The Live Update Orchestrator: `/dev/liveupdate` and its sessions as a no_std state machine.
//!
//! A kernel wires [`LiveUpdate::ioctl`] to its device node and to every session fd. The
//! orchestrator applies Linux's extensible-struct rule, resolves fds through the kernel's
//! [`Kernel`] file table, drives the registered [`FileHandler`]s, and keeps the session and
//! file lifecycle of `shared/reference/luo.md` §2 — with the fixes of §5.1 (session-type checks,
//! name validation, double-preservation detection, sticky retrieve failures, FINISH's
//! reserved field, no state cleared on unfreeze).
//!
//! Outgoing sessions (created here, handed to the next kernel) need `alloc`. Incoming sessions
//! (from a validated [`Handover`]) use storage the kernel provides, sized from the image's
//! counts: retrieving and finishing allocate nothing in the orchestrator.

#[cfg(feature = "alloc")]
use alloc::collections::BTreeSet;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use zerocopy::{FromBytes, IntoBytes};

use crate::handler::FileHandler;
use crate::image::Handover;
#[cfg(feature = "alloc")]
use crate::image::build::{
    FileDraft, HandlerDraft, HandoverImage, ImageParts, SessionDraft, build_image,
};
use crate::image::schema::{MAX_HANDLERS, SessionName};
use crate::incoming::IncomingPages;
use crate::kernel::{INCOMING_BIT, SessionId};
use crate::memmap::FrameRun;
#[cfg(feature = "alloc")]
use crate::tracker::PreservationTracker;
use crate::uapi::*;

/// What the orchestrator needs from the embedding kernel: its file table, and a way to give
/// pages back as free memory.
pub trait Kernel<O> {
    /// The object behind a userspace fd, or `EBADF`.
    fn resolve(&mut self, fd: i32) -> Result<O, Errno>;
    /// Installs a new fd for a session (`EMFILE` when the table is full).
    fn install_session(&mut self, session: SessionId) -> Result<i32, Errno>;
    /// Installs a new fd for a restored file object.
    fn install_file(&mut self, object: O) -> Result<i32, Errno>;
    /// Returns preserved pages nobody retrieved to the kernel as free memory.
    fn release(&mut self, run: FrameRun);
}

/// Where an ioctl was issued: the device, or a session fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/dev/liveupdate` itself.
    Device,
    /// A session fd.
    Session(SessionId),
}

/// Capacity limits of the outgoing side (`ENOSPC` past them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Outgoing sessions at once.
    pub max_sessions: usize,
    /// Files in one outgoing session.
    pub max_files_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1 << 16,
            max_files_per_session: 1 << 16,
        }
    }
}

/// An ioctl's table entry: its number, its struct size, and the minimum size accepted.
struct Command {
    cmd: u32,
    known_size: usize,
    min_size: usize,
}

const DEVICE_COMMANDS: [Command; 2] = [
    Command {
        cmd: LIVEUPDATE_IOCTL_CREATE_SESSION,
        known_size: 72,
        min_size: 72,
    },
    Command {
        cmd: LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
        known_size: 72,
        min_size: 72,
    },
];

const SESSION_COMMANDS: [Command; 3] = [
    Command {
        cmd: LIVEUPDATE_SESSION_PRESERVE_FD,
        known_size: 16,
        min_size: 16,
    },
    Command {
        cmd: LIVEUPDATE_SESSION_RETRIEVE_FD,
        known_size: 16,
        min_size: 16,
    },
    Command {
        cmd: LIVEUPDATE_SESSION_FINISH,
        known_size: 8,
        min_size: 8,
    },
];

/// The largest argument struct (a multiple of 8).
const MAX_KNOWN_SIZE: usize = 72;

/// The state of one incoming session. Storage for [`Incoming`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncomingSessionState {
    /// Not retrieved yet.
    #[default]
    Available,
    /// Retrieved: its fd is open.
    Retrieved,
    /// Finished, fd still open.
    Finished,
    /// Finished and closed: gone.
    Gone,
    /// Closed without a successful finish: held until the next kexec.
    Held,
}

/// The state of one incoming file. Storage for [`Incoming`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingFileSlot<O> {
    /// Retrieve not attempted.
    NotRetrieved,
    /// Retrieved: the restored object.
    Retrieved(O),
    /// The retrieve failed; every later retrieve fails the same way.
    Failed(Errno),
    /// Finished.
    Finished,
}

impl<O> IncomingFileSlot<O> {
    /// A slot before any retrieve (for initialising storage in const context).
    pub const fn new() -> Self {
        IncomingFileSlot::NotRetrieved
    }
}

impl<O> Default for IncomingFileSlot<O> {
    fn default() -> Self {
        Self::new()
    }
}

/// The incoming side: a validated handover, its pages, and per-session and per-file state.
pub struct Incoming<'i, O> {
    handover: Handover<'i>,
    pages: IncomingPages<'i>,
    sessions: &'i mut [IncomingSessionState],
    files: &'i mut [IncomingFileSlot<O>],
}

impl<'i, O> Incoming<'i, O> {
    /// Session and file slots needed for `handover`.
    pub fn storage_for(handover: &Handover<'_>) -> (usize, usize) {
        (handover.session_count(), handover.file_count())
    }

    /// The incoming side over kernel-provided storage (at least [`Incoming::storage_for`]).
    pub fn new(
        handover: Handover<'i>,
        pages: IncomingPages<'i>,
        sessions: &'i mut [IncomingSessionState],
        files: &'i mut [IncomingFileSlot<O>],
    ) -> Result<Incoming<'i, O>, Errno> {
        let (session_count, file_count) = Self::storage_for(&handover);
        let sessions = sessions.get_mut(..session_count).ok_or(Errno::ENOMEM)?;
        let files = files.get_mut(..file_count).ok_or(Errno::ENOMEM)?;
        sessions.fill(IncomingSessionState::Available);
        for slot in files.iter_mut() {
            *slot = IncomingFileSlot::NotRetrieved;
        }
        Ok(Incoming {
            handover,
            pages,
            sessions,
            files,
        })
    }

    /// The handover.
    pub fn handover(&self) -> &Handover<'i> {
        &self.handover
    }

    /// The incoming pages and their claims.
    pub fn pages(&self) -> &IncomingPages<'i> {
        &self.pages
    }

    /// Each session's state, in the handover's (name) order.
    pub fn session_states(&self) -> &[IncomingSessionState] {
        self.sessions
    }

    /// Whether every session has been finished: the image and its records are no longer
    /// needed, and the kernel may release [`Handover::image_range`]. (Sessions never retrieved,
    /// or closed while busy, keep it until the next kexec, which carries none of them.)
    pub fn is_complete(&self) -> bool {
        self.sessions.iter().all(|s| {
            matches!(
                s,
                IncomingSessionState::Finished | IncomingSessionState::Gone
            )
        })
    }
}

#[cfg(feature = "alloc")]
struct OutgoingFile<O> {
    token: u64,
    object: O,
    handler: usize,
    identity: u64,
}

#[cfg(feature = "alloc")]
struct OutgoingSession<O> {
    name: SessionName,
    /// Creation sequence number: the reboot step freezes sessions in this order.
    created: u64,
    files: Vec<OutgoingFile<O>>,
}

/// The outgoing sessions in creation order, the order the reboot step freezes them in (and
/// unfreezes them in reverse); slab slots are reused, so slot order is not creation order.
#[cfg(feature = "alloc")]
fn sessions_by_creation<O>(sessions: &Slab<OutgoingSession<O>>) -> Vec<&OutgoingSession<O>> {
    let mut by_creation: Vec<&OutgoingSession<O>> = sessions.values().collect();
    by_creation.sort_unstable_by_key(|s| s.created);
    by_creation
}

/// Sessions with fewer files than this find a duplicate token by scanning their files; larger
/// ones keep their tokens in the shared tree.
#[cfg(feature = "alloc")]
const SMALL_SESSION: usize = 16;

/// Bits of a [`SessionId`] that index the outgoing slab; the bits above hold the slot's
/// generation, so a stale id never reaches a session created later in the same slot.
#[cfg(feature = "alloc")]
const SLOT_BITS: u32 = 20;

/// Outgoing sessions in reusable slots: O(1) lookup by id, no per-session tree node.
#[cfg(feature = "alloc")]
struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

#[cfg(feature = "alloc")]
impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    fn len(&self) -> usize {
        self.live
    }

    /// Stores `value` and returns its id (`None` when every slot is taken).
    fn insert(&mut self, value: T) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&s| s < (1 << SLOT_BITS))?;
                self.slots.push((0, None));
                slot
            }
        };
        let entry = self.slots.get_mut(slot as usize)?;
        entry.1 = Some(value);
        self.live = self.live.wrapping_add(1);
        // Generations use the bits between the slot and the incoming flag.
        Some(((entry.0 & GENERATION_MASK) << SLOT_BITS) | slot)
    }

    fn locate(&self, id: u32) -> Option<usize> {
        let slot = (id & ((1 << SLOT_BITS) - 1)) as usize;
        let generation = id >> SLOT_BITS;
        let entry = self.slots.get(slot)?;
        (entry.0 & GENERATION_MASK == generation && entry.1.is_some()).then_some(slot)
    }

    fn get(&self, id: u32) -> Option<&T> {
        self.slots.get(self.locate(id)?)?.1.as_ref()
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        let slot = self.locate(id)?;
        self.slots.get_mut(slot)?.1.as_mut()
    }

    fn remove(&mut self, id: u32) -> Option<T> {
        let slot = self.locate(id)?;
        let entry = self.slots.get_mut(slot)?;
        let value = entry.1.take()?;
        entry.0 = entry.0.wrapping_add(1);
        self.free.push(slot as u32);
        self.live = self.live.wrapping_sub(1);
        Some(value)
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|(_, value)| value.as_ref())
    }
}

#[cfg(feature = "alloc")]
const GENERATION_MASK: u32 = (INCOMING_BIT >> SLOT_BITS) - 1;

/// The outgoing side: sessions created in this kernel.
#[cfg(feature = "alloc")]
struct Outgoing<O> {
    tracker: PreservationTracker,
    sessions: Slab<OutgoingSession<O>>,
    next_created: u64,
    names: BTreeSet<SessionName>,
    /// (session id, token) of every file of sessions with at least [`SMALL_SESSION`] files.
    tokens: BTreeSet<(u32, u64)>,
    /// (handler, identity) of every preserved object.
    identities: BTreeSet<(usize, u64)>,
    frozen: bool,
}

/// Everything the reboot step captured: the frozen sessions, ready for the image builder.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
pub struct RebootPlan {
    /// The frozen sessions (in creation order), each naming its range of `files`.
    pub sessions: Vec<SessionDraft>,
    /// Every file, session by session, in preservation order.
    pub files: Vec<FileDraft>,
    /// Every record, back to back.
    pub records: Vec<u8>,
    /// The handlers the records belong to (indexed by [`FileDraft::handler`]).
    pub handlers: Vec<HandlerDraft<'static>>,
}

/// `/dev/liveupdate`: handlers, outgoing sessions and the incoming handover.
pub struct LiveUpdate<'h, 'i, O> {
    handlers: [Option<&'h dyn FileHandler<O>>; MAX_HANDLERS],
    /// For each handler node of the incoming handover, the registered handler that reads it.
    node_handlers: [Option<&'h dyn FileHandler<O>>; MAX_HANDLERS],
    // Only the outgoing side (alloc) enforces limits.
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    limits: Limits,
    device_open: bool,
    #[cfg(feature = "alloc")]
    outgoing: Option<Outgoing<O>>,
    incoming: Option<Incoming<'i, O>>,
}

impl<'h, 'i, O: Clone> LiveUpdate<'h, 'i, O> {
    /// An orchestrator with no outgoing side (a receive-only kernel, or no `alloc`).
    pub fn new(limits: Limits) -> Self {
        LiveUpdate {
            handlers: [None; MAX_HANDLERS],
            node_handlers: [None; MAX_HANDLERS],
            limits,
            device_open: false,
            #[cfg(feature = "alloc")]
            outgoing: None,
            incoming: None,
        }
    }

    /// An orchestrator that can build a handover, preserving pages in `tracker`.
    #[cfg(feature = "alloc")]
    pub fn with_tracker(limits: Limits, tracker: PreservationTracker) -> Self {
        let mut luo = Self::new(limits);
        luo.outgoing = Some(Outgoing {
            tracker,
            sessions: Slab::new(),
            next_created: 0,
            names: BTreeSet::new(),
            tokens: BTreeSet::new(),
            identities: BTreeSet::new(),
            frozen: false,
        });
        luo
    }

    /// Registers a file handler. `EEXIST` if one with the same name is registered, `ENOSPC`
    /// past [`MAX_HANDLERS`]. Handlers are asked `can_preserve` in registration order.
    pub fn register_handler(&mut self, handler: &'h dyn FileHandler<O>) -> Result<(), Errno> {
        let name = handler.compatible().name;
        if self
            .handlers
            .iter()
            .flatten()
            .any(|h| h.compatible().name == name)
        {
            return Err(Errno::EEXIST);
        }
        let slot = self
            .handlers
            .iter_mut()
            .find(|h| h.is_none())
            .ok_or(Errno::ENOSPC)?;
        *slot = Some(handler);
        self.resolve_node_handlers();
        Ok(())
    }

    /// Attaches the incoming side (once, at boot, after intake).
    pub fn attach_incoming(&mut self, incoming: Incoming<'i, O>) {
        self.incoming = Some(incoming);
        self.resolve_node_handlers();
    }

    /// Matches each handler node of the incoming handover (name, record version) with the
    /// registered handler that reads it: same name, version between its oldest readable and
    /// its own.
    fn resolve_node_handlers(&mut self) {
        self.node_handlers = [None; MAX_HANDLERS];
        let Some(incoming) = &self.incoming else {
            return;
        };
        for (node, data) in self
            .node_handlers
            .iter_mut()
            .zip(incoming.handover.handlers())
        {
            *node = self.handlers.iter().flatten().copied().find(|h| {
                let compatible = h.compatible();
                compatible.name == data.name
                    && (h.oldest_readable_version()..=compatible.version).contains(&data.version)
            });
        }
    }

    /// The incoming side, if any.
    pub fn incoming(&self) -> Option<&Incoming<'i, O>> {
        self.incoming.as_ref()
    }

    /// The outgoing page tracker (other subsystems preserve memory through it too).
    #[cfg(feature = "alloc")]
    pub fn tracker(&self) -> Option<&PreservationTracker> {
        self.outgoing.as_ref().map(|o| &o.tracker)
    }

    /// The outgoing page tracker, mutable.
    #[cfg(feature = "alloc")]
    pub fn tracker_mut(&mut self) -> Option<&mut PreservationTracker> {
        self.outgoing.as_mut().map(|o| &mut o.tracker)
    }

    /// `open("/dev/liveupdate")`: one owner at a time (`EBUSY`).
    pub fn open_device(&mut self) -> Result<(), Errno> {
        if self.device_open {
            return Err(Errno::EBUSY);
        }
        self.device_open = true;
        Ok(())
    }

    /// Closing the device fd. Sessions live on with their own fds.
    pub fn close_device(&mut self) {
        self.device_open = false;
    }

    /// Number of open outgoing sessions.
    pub fn outgoing_session_count(&self) -> usize {
        #[cfg(feature = "alloc")]
        if let Some(outgoing) = &self.outgoing {
            return outgoing.sessions.len();
        }
        0
    }

    /// The one ioctl entry point, for the device and for every session fd. `arg` is the
    /// caller's argument buffer; replies are written back into it.
    pub fn ioctl(
        &mut self,
        target: Target,
        cmd: u32,
        arg: &mut [u8],
        kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        let nr = ioc_nr(cmd);
        let (table, base): (&[Command], u32) = match target {
            Target::Device => (&DEVICE_COMMANDS, LIVEUPDATE_CMD_BASE),
            Target::Session(_) => (&SESSION_COMMANDS, LIVEUPDATE_CMD_SESSION_BASE),
        };
        // 1. A number outside the table.
        let entry = nr
            .checked_sub(base)
            .and_then(|i| table.get(i as usize))
            .ok_or(Errno::EINVAL)?;
        // 2. The size field must be readable.
        let size = arg
            .get(..4)
            .and_then(|b| u32::read_from_bytes(b).ok())
            .ok_or(Errno::EFAULT)? as usize;
        // 3. Type, direction or size bits that do not match.
        if cmd != entry.cmd {
            return Err(Errno::ENOTTY);
        }
        // 4. The command must suit the session's kind.
        if let Target::Session(session) = target {
            self.check_session_kind(session, cmd)?;
        }
        // 5. Shorter than the minimum.
        if size < entry.min_size {
            return Err(Errno::EINVAL);
        }
        // 6. Longer than the buffer, or non-zero bytes past the known struct.
        let user = arg.get(..size).ok_or(Errno::EFAULT)?;
        if user
            .get(entry.known_size..)
            .is_some_and(|tail| tail.iter().any(|&b| b != 0))
        {
            return Err(Errno::E2BIG);
        }
        let copy_len = size.min(entry.known_size);
        // The kernel's copy of the struct, 8-byte aligned so the typed views below are valid
        // whatever the caller's buffer alignment (the uapi structs need up to 8).
        let mut kernel_words = [0u64; MAX_KNOWN_SIZE / 8];
        let kernel_struct = kernel_words.as_mut_bytes();
        let (Some(dst), Some(src)) = (kernel_struct.get_mut(..copy_len), user.get(..copy_len))
        else {
            return Err(Errno::EFAULT);
        };
        dst.copy_from_slice(src);
        let args = kernel_struct
            .get_mut(..entry.known_size)
            .ok_or(Errno::EFAULT)?;
        // 7. Run it, then copy back min(size, known size) bytes.
        match (target, cmd) {
            (Target::Device, LIVEUPDATE_IOCTL_CREATE_SESSION) => {
                self.create_session(args, kernel)?
            }
            (Target::Device, LIVEUPDATE_IOCTL_RETRIEVE_SESSION) => {
                self.retrieve_session(args, kernel)?
            }
            (Target::Session(s), LIVEUPDATE_SESSION_PRESERVE_FD) => {
                self.preserve_fd(s, args, kernel)?
            }
            (Target::Session(s), LIVEUPDATE_SESSION_RETRIEVE_FD) => {
                self.retrieve_fd(s, args, kernel)?
            }
            (Target::Session(s), LIVEUPDATE_SESSION_FINISH) => self.finish(s, args, kernel)?,
            _ => return Err(Errno::ENOTTY),
        }
        let (Some(reply), Some(out)) = (kernel_struct.get(..copy_len), arg.get_mut(..copy_len))
        else {
            return Err(Errno::EFAULT);
        };
        out.copy_from_slice(reply);
        Ok(())
    }

    /// PRESERVE_FD only on outgoing sessions; RETRIEVE_FD and FINISH only on retrieved
    /// incoming ones (Linux commit 507e3b479f9c).
    fn check_session_kind(&self, session: SessionId, cmd: u32) -> Result<(), Errno> {
        if session.is_incoming() {
            let state = self.incoming_state(session).ok_or(Errno::EBADF)?;
            if cmd == LIVEUPDATE_SESSION_PRESERVE_FD
                || !matches!(
                    state,
                    IncomingSessionState::Retrieved | IncomingSessionState::Finished
                )
            {
                return Err(Errno::EINVAL);
            }
            return Ok(());
        }
        #[cfg(feature = "alloc")]
        if self
            .outgoing
            .as_ref()
            .is_some_and(|o| o.sessions.get(session.0).is_some())
        {
            return if cmd == LIVEUPDATE_SESSION_PRESERVE_FD {
                Ok(())
            } else {
                Err(Errno::EINVAL)
            };
        }
        Err(Errno::EBADF)
    }

    fn incoming_state(&self, session: SessionId) -> Option<IncomingSessionState> {
        let index = (session.0 & !INCOMING_BIT) as usize;
        self.incoming.as_ref()?.sessions.get(index).copied()
    }

    #[cfg(not(feature = "alloc"))]
    fn create_session(
        &mut self,
        _args: &mut [u8],
        _kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        Err(Errno::ENOMEM)
    }

    #[cfg(feature = "alloc")]
    fn create_session(&mut self, args: &mut [u8], kernel: &mut dyn Kernel<O>) -> Result<(), Errno> {
        let request =
            LiveupdateIoctlCreateSession::mut_from_bytes(args).map_err(|_| Errno::EFAULT)?;
        let outgoing = self.outgoing.as_mut().ok_or(Errno::ENOMEM)?;
        if outgoing.frozen {
            return Err(Errno::EBUSY);
        }
        let name = SessionName::from_field(&request.name).ok_or(Errno::EINVAL)?;
        if outgoing.sessions.len() >= self.limits.max_sessions {
            return Err(Errno::ENOSPC);
        }
        // One tree walk: the insert is the duplicate check.
        if !outgoing.names.insert(name) {
            return Err(Errno::EEXIST);
        }
        let created = outgoing.next_created;
        let Some(id) = outgoing.sessions.insert(OutgoingSession {
            name,
            created,
            files: Vec::new(),
        }) else {
            outgoing.names.remove(&name);
            return Err(Errno::ENOSPC);
        };
        match kernel.install_session(SessionId(id)) {
            Ok(fd) => {
                outgoing.next_created = created.wrapping_add(1);
                request.fd = fd;
                Ok(())
            }
            Err(errno) => {
                outgoing.sessions.remove(id);
                outgoing.names.remove(&name);
                Err(errno)
            }
        }
    }

    fn retrieve_session(
        &mut self,
        args: &mut [u8],
        kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        let request =
            LiveupdateIoctlRetrieveSession::mut_from_bytes(args).map_err(|_| Errno::EFAULT)?;
        let name = SessionName::from_field(&request.name).ok_or(Errno::EINVAL)?;
        let incoming = self.incoming.as_mut().ok_or(Errno::ENOENT)?;
        let index = incoming
            .handover
            .find_session(name.as_bytes())
            .ok_or(Errno::ENOENT)?
            .index();
        let state = incoming.sessions.get_mut(index).ok_or(Errno::ENOENT)?;
        match *state {
            IncomingSessionState::Available => {}
            IncomingSessionState::Gone => return Err(Errno::ENOENT),
            _ => return Err(Errno::EINVAL),
        }
        let id = SessionId(INCOMING_BIT | index as u32);
        request.fd = kernel.install_session(id)?;
        *state = IncomingSessionState::Retrieved;
        Ok(())
    }

    #[cfg(not(feature = "alloc"))]
    fn preserve_fd(
        &mut self,
        _s: SessionId,
        _args: &mut [u8],
        _k: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }

    #[cfg(feature = "alloc")]
    fn preserve_fd(
        &mut self,
        session: SessionId,
        args: &mut [u8],
        kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        let request =
            LiveupdateSessionPreserveFd::mut_from_bytes(args).map_err(|_| Errno::EFAULT)?;
        let handlers = &self.handlers;
        let outgoing = self.outgoing.as_mut().ok_or(Errno::EINVAL)?;
        if outgoing.frozen {
            return Err(Errno::EBUSY);
        }
        let entry = outgoing.sessions.get_mut(session.0).ok_or(Errno::EBADF)?;
        // Small sessions are scanned (their files are at hand); large ones use the tree.
        let taken = if entry.files.len() < SMALL_SESSION {
            entry.files.iter().any(|f| f.token == request.token)
        } else {
            outgoing.tokens.contains(&(session.0, request.token))
        };
        if taken {
            return Err(Errno::EEXIST);
        }
        if entry.files.len() >= self.limits.max_files_per_session {
            return Err(Errno::ENOSPC);
        }
        let object = kernel.resolve(request.fd)?;
        let (handler_index, handler) = handlers
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.filter(|h| h.can_preserve(&object)).map(|h| (i, h)))
            .ok_or(Errno::ENOENT)?;
        let identity = handler.identity(&object);
        // The insert is the duplicate check; it is undone if the handler refuses.
        if !outgoing.identities.insert((handler_index, identity)) {
            return Err(Errno::EBUSY);
        }
        if let Err(errno) = handler.preserve(&object, &mut outgoing.tracker) {
            outgoing.identities.remove(&(handler_index, identity));
            return Err(errno);
        }
        match entry.files.len() {
            n if n.wrapping_add(1) == SMALL_SESSION => {
                let id = session.0;
                outgoing
                    .tokens
                    .extend(entry.files.iter().map(|f| (id, f.token)));
                outgoing.tokens.insert((id, request.token));
            }
            n if n >= SMALL_SESSION => {
                outgoing.tokens.insert((session.0, request.token));
            }
            _ => {}
        }
        entry.files.push(OutgoingFile {
            token: request.token,
            object,
            handler: handler_index,
            identity,
        });
        Ok(())
    }

    /// The registered handler that reads files of handler node `node` of the handover.
    fn node_handler(&self, node: usize) -> Option<&'h dyn FileHandler<O>> {
        self.node_handlers.get(node).copied().flatten()
    }

    fn retrieve_fd(
        &mut self,
        session: SessionId,
        args: &mut [u8],
        kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        let request =
            LiveupdateSessionRetrieveFd::mut_from_bytes(args).map_err(|_| Errno::EFAULT)?;
        let index = (session.0 & !INCOMING_BIT) as usize;
        let incoming = self.incoming.as_ref().ok_or(Errno::EINVAL)?;
        if incoming.sessions.get(index) != Some(&IncomingSessionState::Retrieved) {
            // Finished sessions have no files left to retrieve.
            return Err(Errno::ENOENT);
        }
        // The view is `Copy` and borrows the image, not `self`.
        let handover = incoming.handover;
        let view = handover.session(index).ok_or(Errno::ENOENT)?;
        let file = view.find_file(request.token).ok_or(Errno::ENOENT)?;
        let (file_index, record, handler_node, version) = (
            file.index,
            file.record,
            file.handler_index,
            file.handler.version,
        );
        let handler = self.node_handler(handler_node);
        let incoming = self.incoming.as_mut().ok_or(Errno::EINVAL)?;
        let slot = incoming.files.get_mut(file_index).ok_or(Errno::ENOENT)?;
        let object = match slot {
            IncomingFileSlot::Retrieved(object) => object.clone(),
            IncomingFileSlot::Failed(errno) => return Err(*errno),
            IncomingFileSlot::Finished => return Err(Errno::ENOENT),
            IncomingFileSlot::NotRetrieved => {
                let outcome = match handler {
                    Some(handler) => handler.retrieve(record, version, &mut incoming.pages),
                    None => Err(Errno::EOPNOTSUPP),
                };
                match outcome {
                    Ok(object) => {
                        *slot = IncomingFileSlot::Retrieved(object.clone());
                        object
                    }
                    Err(errno) => {
                        *slot = IncomingFileSlot::Failed(errno);
                        return Err(errno);
                    }
                }
            }
        };
        request.fd = kernel.install_file(object)?;
        Ok(())
    }

    fn finish(
        &mut self,
        session: SessionId,
        args: &mut [u8],
        kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        let request = LiveupdateSessionFinish::mut_from_bytes(args).map_err(|_| Errno::EFAULT)?;
        if request.reserved != 0 {
            return Err(Errno::EINVAL);
        }
        self.finish_session((session.0 & !INCOMING_BIT) as usize, kernel)
    }

    /// Finishes incoming session `index`: all files or none.
    fn finish_session(&mut self, index: usize, kernel: &mut dyn Kernel<O>) -> Result<(), Errno> {
        let node_handlers = self.node_handlers;
        let resolve = |node: usize| node_handlers.get(node).copied().flatten();
        let incoming = self.incoming.as_mut().ok_or(Errno::EINVAL)?;
        match incoming.sessions.get(index) {
            Some(IncomingSessionState::Retrieved) => {}
            Some(IncomingSessionState::Finished) => return Ok(()),
            _ => return Err(Errno::EINVAL),
        }
        let view = incoming.handover.session(index).ok_or(Errno::EINVAL)?;
        let first = view.first_file();
        let count = view.file_count();
        // All or nothing: ask every file first.
        for file in view.files() {
            let slot = incoming.files.get(file.index);
            let retrieved = match slot {
                Some(IncomingFileSlot::Retrieved(object)) => Some(object),
                _ => None,
            };
            let ready = resolve(file.handler_index)
                .is_none_or(|h| h.can_finish(file.record, file.handler.version, retrieved));
            if !ready {
                return Err(Errno::EBUSY);
            }
        }
        // Then finish each, last file first.
        let handover = incoming.handover;
        for file_index in (first..first.wrapping_add(count)).rev() {
            let Some(file) = handover.file(file_index) else {
                continue;
            };
            let Some(slot) = incoming.files.get_mut(file_index) else {
                continue;
            };
            let previous = core::mem::replace(slot, IncomingFileSlot::Finished);
            let retrieved = match &previous {
                IncomingFileSlot::Retrieved(object) => Some(object),
                _ => None,
            };
            if let Some(handler) = resolve(file.handler_index) {
                let mut release = |run: FrameRun| kernel.release(run);
                handler.finish(
                    file.record,
                    file.handler.version,
                    retrieved,
                    &mut incoming.pages,
                    &mut release,
                );
            }
        }
        if let Some(state) = incoming.sessions.get_mut(index) {
            *state = IncomingSessionState::Finished;
        }
        Ok(())
    }

    /// Closing a session fd. An outgoing session unpreserves its files, last first, and is
    /// destroyed. A retrieved incoming session is finished; if a file cannot finish yet the fd
    /// closes anyway, the session is held until the next kexec, and `EBUSY` is returned.
    pub fn close_session(
        &mut self,
        session: SessionId,
        kernel: &mut dyn Kernel<O>,
    ) -> Result<(), Errno> {
        if session.is_incoming() {
            let index = (session.0 & !INCOMING_BIT) as usize;
            let outcome = self.finish_session(index, kernel);
            let incoming = self.incoming.as_mut().ok_or(Errno::EBADF)?;
            let state = incoming.sessions.get_mut(index).ok_or(Errno::EBADF)?;
            return match (outcome, *state) {
                (Ok(()), _) => {
                    *state = IncomingSessionState::Gone;
                    Ok(())
                }
                (Err(errno), IncomingSessionState::Retrieved) => {
                    *state = IncomingSessionState::Held;
                    Err(errno)
                }
                (Err(errno), _) => Err(errno),
            };
        }
        #[cfg(feature = "alloc")]
        {
            let handlers = self.handlers;
            let outgoing = self.outgoing.as_mut().ok_or(Errno::EBADF)?;
            if outgoing.frozen {
                return Err(Errno::EBUSY);
            }
            let removed = outgoing.sessions.remove(session.0).ok_or(Errno::EBADF)?;
            for file in removed.files.iter().rev() {
                if let Some(Some(handler)) = handlers.get(file.handler) {
                    handler.unpreserve(&file.object, &mut outgoing.tracker);
                }
                outgoing.identities.remove(&(file.handler, file.identity));
                if removed.files.len() >= SMALL_SESSION {
                    outgoing.tokens.remove(&(session.0, file.token));
                }
            }
            outgoing.names.remove(&removed.name);
            Ok(())
        }
        #[cfg(not(feature = "alloc"))]
        {
            let _ = kernel;
            Err(Errno::EBADF)
        }
    }

    /// The reboot step: freezes every outgoing file (sessions in creation order, files in
    /// preservation order) and captures their records. On any failure everything frozen so far
    /// is unfrozen, in reverse, and the errno is returned with nothing changed. On success the
    /// sessions stay frozen (no ioctl may change them) until [`LiveUpdate::abort_reboot`].
    #[cfg(feature = "alloc")]
    pub fn prepare_reboot(&mut self) -> Result<RebootPlan, Errno> {
        let handlers = self.handlers;
        let outgoing = self.outgoing.as_mut().ok_or(Errno::EINVAL)?;
        if outgoing.frozen {
            return Err(Errno::EBUSY);
        }
        let by_creation = sessions_by_creation(&outgoing.sessions);
        let all_files: Vec<(&OutgoingFile<O>, &dyn FileHandler<O>)> = by_creation
            .iter()
            .flat_map(|s| s.files.iter())
            .filter_map(|f| handlers.get(f.handler).copied().flatten().map(|h| (f, h)))
            .collect();
        for (done, (file, handler)) in all_files.iter().enumerate() {
            if let Err(errno) = handler.freeze(&file.object, &mut outgoing.tracker) {
                for (file, handler) in all_files.get(..done).unwrap_or(&[]).iter().rev() {
                    handler.unfreeze(&file.object, &mut outgoing.tracker);
                }
                return Err(errno);
            }
        }
        let mut plan = RebootPlan {
            sessions: Vec::new(),
            files: Vec::new(),
            records: Vec::new(),
            handlers: Vec::new(),
        };
        let mut draft_of = [0usize; MAX_HANDLERS];
        for (slot, handler) in handlers.iter().enumerate() {
            let (Some(handler), Some(draft)) = (handler, draft_of.get_mut(slot)) else {
                continue;
            };
            *draft = plan.handlers.len();
            let c = handler.compatible();
            plan.handlers.push(HandlerDraft {
                name: c.name,
                version: c.version,
            });
        }
        let mut failure = None;
        'sessions: for session in &by_creation {
            let first = plan.files.len();
            for file in &session.files {
                let start = plan.records.len();
                let outcome = match handlers.get(file.handler).copied().flatten() {
                    Some(handler) => handler.serialize(&file.object, &mut plan.records),
                    None => Err(Errno::EINVAL),
                };
                if let Err(errno) = outcome {
                    failure = Some(errno);
                    break 'sessions;
                }
                let handler = draft_of.get(file.handler).copied().unwrap_or(0);
                plan.files.push(FileDraft {
                    token: file.token,
                    handler,
                    record: start..plan.records.len(),
                });
            }
            plan.sessions.push(SessionDraft {
                name: session.name,
                files: first..plan.files.len(),
            });
        }
        if let Some(errno) = failure {
            for (file, handler) in all_files.iter().rev() {
                handler.unfreeze(&file.object, &mut outgoing.tracker);
            }
            return Err(errno);
        }
        outgoing.frozen = true;
        Ok(plan)
    }

    /// Undoes a successful [`LiveUpdate::prepare_reboot`] when a later step (building or
    /// placing the image, verifying the next kernel) fails: unfreezes every file, last first,
    /// and reopens the sessions, state intact.
    #[cfg(feature = "alloc")]
    pub fn abort_reboot(&mut self) {
        let handlers = self.handlers;
        let Some(outgoing) = self.outgoing.as_mut() else {
            return;
        };
        if !outgoing.frozen {
            return;
        }
        let by_creation = sessions_by_creation(&outgoing.sessions);
        for session in by_creation.iter().rev() {
            for file in session.files.iter().rev() {
                if let Some(Some(handler)) = handlers.get(file.handler) {
                    handler.unfreeze(&file.object, &mut outgoing.tracker);
                }
            }
        }
        outgoing.frozen = false;
    }

    /// Whether the reboot step has run (and not been aborted).
    #[cfg(feature = "alloc")]
    pub fn is_frozen(&self) -> bool {
        self.outgoing.as_ref().is_some_and(|o| o.frozen)
    }

    /// Builds and seals the handover image from a [`RebootPlan`]: the tracker's runs, its RAM
    /// and scratch, and the sessions. The generation follows the incoming handover's.
    /// `place` chooses where the image goes (see [`build_image`]).
    #[cfg(feature = "alloc")]
    pub fn build_image(
        &self,
        plan: &RebootPlan,
        place: impl FnOnce(u64) -> Option<crate::addr::PhysAddr>,
    ) -> Result<HandoverImage, crate::image::build::BuildError> {
        let generation = self
            .incoming
            .as_ref()
            .map_or(0, |i| i.handover.generation())
            .wrapping_add(1);
        let Some(outgoing) = self.outgoing.as_ref() else {
            return Err(crate::image::build::BuildError::BadLayout);
        };
        let runs = outgoing.tracker.runs();
        let parts = ImageParts {
            generation,
            ram: outgoing.tracker.ram(),
            scratch: outgoing.tracker.scratch(),
            runs: &runs,
            handlers: &plan.handlers,
            sessions: &plan.sessions,
            files: &plan.files,
            records: &plan.records,
        };
        build_image(&parts, place)
    }
}
