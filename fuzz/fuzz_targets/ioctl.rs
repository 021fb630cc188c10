//! The ioctl dispatch as userspace drives it: random command numbers and argument bytes, and
//! sequences of calls, against a live orchestrator with an outgoing side and an incoming
//! handover. A rejected call leaves the observable state unchanged (a failed retrieve's sticky
//! errno is recorded inside the file's slot, which the snapshot does not compare); and the
//! tracker always holds exactly the pages of the memfds preserved in open sessions: nothing
//! lost or leaked.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use handover::image::build::HandoverImage;
use handover::incoming::IncomingStorage;
use handover::luo::{Incoming, IncomingFileSlot, IncomingSessionState, Limits, LiveUpdate, Target};
use handover::memfd::{Memfd, MemfdFile, MemfdHandler};
use handover::sim::{SimFrames, SimKernel, SimObject, SimRam};
use handover::tracker::PreservationTracker;
use handover::uapi::*;
use handover::{Handover, PhysAddr, PhysRange};
use libfuzzer_sys::fuzz_target;
use zerocopy::IntoBytes;

static MEMFD: MemfdHandler = MemfdHandler::new();
const MIB: u64 = 1 << 20;

fn layout() -> ([PhysRange; 1], [PhysRange; 1], PhysRange) {
    let ram = PhysRange::new(PhysAddr::new(MIB), 3 * MIB).unwrap();
    let scratch = PhysRange::new(PhysAddr::new(MIB), MIB).unwrap();
    let files = PhysRange::new(PhysAddr::new(2 * MIB), 2 * MIB).unwrap();
    ([ram], [scratch], files)
}

/// The incoming handover, built once by a simulated previous kernel: sessions "a" (tokens 1,
/// 2, 3) and "b" (token 7) of memfds, in the same layout.
fn incoming_image() -> &'static HandoverImage {
    static IMAGE: OnceLock<HandoverImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (ram, scratch, area) = layout();
        let mut memory = SimRam::new(&ram);
        let mut frames = SimFrames::new(area);
        let mut luo: LiveUpdate<SimObject> = LiveUpdate::with_tracker(
            Limits::default(),
            PreservationTracker::new(&ram, &scratch).unwrap(),
        );
        luo.register_handler(&MEMFD).unwrap();
        let mut kernel = SimKernel::new();
        for (name, tokens) in [(&b"a"[..], &[1u64, 2, 3][..]), (b"b", &[7])] {
            let fd = create(&mut luo, &mut kernel, name).unwrap();
            for &token in tokens {
                let mut memfd = Memfd::new();
                memfd
                    .write_at(0, &[token as u8; 5000], &mut frames, &mut memory)
                    .unwrap();
                let object = kernel.open(SimObject::Memfd(MemfdFile::new(memfd)));
                let mut arg = LiveupdateSessionPreserveFd {
                    size: 16,
                    fd: object,
                    token,
                };
                let target = Target::Session(kernel.session(fd).unwrap());
                luo.ioctl(
                    target,
                    LIVEUPDATE_SESSION_PRESERVE_FD,
                    arg.as_mut_bytes(),
                    &mut kernel,
                )
                .unwrap();
            }
        }
        let plan = luo.prepare_reboot().unwrap();
        luo.build_image(&plan, |pages| frames.allocate_contiguous(pages))
            .unwrap()
    })
}

fn create(
    luo: &mut LiveUpdate<SimObject>,
    kernel: &mut SimKernel,
    name: &[u8],
) -> Result<i32, Errno> {
    let mut field = [0u8; 64];
    field[..name.len().min(64)].copy_from_slice(&name[..name.len().min(64)]);
    let mut arg = LiveupdateIoctlCreateSession {
        size: 72,
        fd: -1,
        name: field,
    };
    luo.ioctl(
        Target::Device,
        LIVEUPDATE_IOCTL_CREATE_SESSION,
        arg.as_mut_bytes(),
        kernel,
    )?;
    Ok(arg.fd)
}

#[derive(Arbitrary, Debug)]
enum Op {
    Create {
        name: [u8; 4],
        len: u8,
    },
    Retrieve {
        name: u8,
    },
    Preserve {
        session: u8,
        object: u8,
        token: u8,
    },
    RetrieveFd {
        session: u8,
        token: u8,
    },
    Finish {
        session: u8,
        reserved: u8,
    },
    Raw {
        session: Option<u8>,
        nr: u8,
        kind: u8,
        arg: Vec<u8>,
    },
    Close {
        session: u8,
    },
    NewMemfd {
        len: u16,
    },
    NewPlain,
    Reboot,
    Abort,
}

/// Everything observable that a rejected call must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    outgoing_sessions: usize,
    preserved_pages: u64,
    frozen: bool,
    incoming: Vec<IncomingSessionState>,
    claimed: u64,
    open_fds: usize,
}

fuzz_target!(|ops: Vec<Op>| {
    let (ram, scratch, area) = layout();
    let handover =
        Handover::parse(incoming_image().as_bytes()).expect("the incoming image is valid");
    let mut storage = IncomingStorage::for_map(&handover.memory_map());
    let mut states = vec![IncomingSessionState::default(); handover.session_count()];
    let mut slots: Vec<IncomingFileSlot<SimObject>> = (0..handover.file_count())
        .map(|_| IncomingFileSlot::new())
        .collect();
    let pages = storage.pages(&handover.memory_map()).unwrap();
    let incoming = Incoming::new(handover, pages, &mut states, &mut slots).unwrap();
    let limits = Limits {
        max_sessions: 4,
        max_files_per_session: 3,
    };
    let mut luo: LiveUpdate<SimObject> =
        LiveUpdate::with_tracker(limits, PreservationTracker::new(&ram, &scratch).unwrap());
    luo.register_handler(&MEMFD).unwrap();
    luo.attach_incoming(incoming);
    let mut kernel = SimKernel::new();
    let mut memory = SimRam::new(&ram);
    let mut frames = SimFrames::new(area);
    // Kernel-side model: session fds, object fds, and which memfds each outgoing session holds.
    let mut sessions: Vec<i32> = Vec::new();
    let mut objects: Vec<i32> = Vec::new();
    let mut preserved: BTreeMap<i32, Vec<MemfdFile>> = BTreeMap::new();

    let snapshot = |luo: &LiveUpdate<SimObject>, kernel: &SimKernel| Snapshot {
        outgoing_sessions: luo.outgoing_session_count(),
        preserved_pages: luo.tracker().unwrap().page_count(),
        frozen: luo.is_frozen(),
        incoming: luo.incoming().unwrap().session_states().to_vec(),
        claimed: luo.incoming().unwrap().pages().claimed_blocks(),
        open_fds: kernel.len(),
    };
    let pick = |list: &Vec<i32>, i: u8| -> Option<i32> {
        (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
    };

    for op in ops.iter().take(64) {
        let before = snapshot(&luo, &kernel);
        let outcome: Result<(), Errno> = match op {
            Op::Create { name, len } => {
                create(&mut luo, &mut kernel, &name[..usize::from(*len) % 5])
                    .map(|fd| sessions.push(fd))
            }
            Op::Retrieve { name } => {
                let names: [&[u8]; 3] = [b"a", b"b", b"c"];
                let mut field = [0u8; 64];
                let name = names[usize::from(*name) % 3];
                field[..name.len()].copy_from_slice(name);
                let mut arg = LiveupdateIoctlRetrieveSession {
                    size: 72,
                    fd: -1,
                    name: field,
                };
                luo.ioctl(
                    Target::Device,
                    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
                    arg.as_mut_bytes(),
                    &mut kernel,
                )
                .map(|()| sessions.push(arg.fd))
            }
            Op::Preserve {
                session,
                object,
                token,
            } => {
                let (Some(s), Some(o)) = (pick(&sessions, *session), pick(&objects, *object))
                else {
                    continue;
                };
                let target = Target::Session(kernel.session(s).unwrap());
                let mut arg = LiveupdateSessionPreserveFd {
                    size: 16,
                    fd: o,
                    token: u64::from(*token % 4),
                };
                let result = luo.ioctl(
                    target,
                    LIVEUPDATE_SESSION_PRESERVE_FD,
                    arg.as_mut_bytes(),
                    &mut kernel,
                );
                if result.is_ok()
                    && let Some(file) = kernel.object(o).and_then(|obj| obj.memfd()).cloned()
                {
                    preserved.entry(s).or_default().push(file);
                }
                result
            }
            Op::RetrieveFd { session, token } => {
                let Some(s) = pick(&sessions, *session) else {
                    continue;
                };
                let target = Target::Session(kernel.session(s).unwrap());
                let mut arg = LiveupdateSessionRetrieveFd {
                    size: 16,
                    fd: -1,
                    token: u64::from(*token % 9),
                };
                luo.ioctl(
                    target,
                    LIVEUPDATE_SESSION_RETRIEVE_FD,
                    arg.as_mut_bytes(),
                    &mut kernel,
                )
            }
            Op::Finish { session, reserved } => {
                let Some(s) = pick(&sessions, *session) else {
                    continue;
                };
                let target = Target::Session(kernel.session(s).unwrap());
                let mut arg = LiveupdateSessionFinish {
                    size: 8,
                    reserved: u32::from(*reserved % 2),
                };
                luo.ioctl(
                    target,
                    LIVEUPDATE_SESSION_FINISH,
                    arg.as_mut_bytes(),
                    &mut kernel,
                )
            }
            Op::Raw {
                session,
                nr,
                kind,
                arg,
            } => {
                let target = match session {
                    Some(i) => match pick(&sessions, *i) {
                        Some(s) => Target::Session(kernel.session(s).unwrap()),
                        None => continue,
                    },
                    None => Target::Device,
                };
                let cmd = ioc(
                    u32::from(kind >> 6),
                    0xB9 + u32::from(kind & 3),
                    u32::from(*nr),
                    u32::from(kind >> 2 & 15),
                );
                let mut buffer = arg.clone();
                let result = luo.ioctl(target, cmd, &mut buffer, &mut kernel);
                if result.is_err() {
                    assert_eq!(&buffer, arg, "a rejected ioctl wrote to its argument");
                }
                if let (Ok(()), Target::Device) = (result, target)
                    && let Ok(fd) = buffer
                        .get(4..8)
                        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                        .ok_or(())
                    && kernel.session(fd).is_some()
                {
                    sessions.push(fd);
                }
                result
            }
            Op::Close { session } => {
                let Some(s) = pick(&sessions, *session) else {
                    continue;
                };
                let id = kernel.session(s).unwrap();
                let result = luo.close_session(id, &mut kernel);
                if !id.is_incoming() && result.is_ok() {
                    preserved.remove(&s);
                }
                if result.is_ok() || id.is_incoming() {
                    kernel.close(s);
                    sessions.retain(|&f| f != s);
                }
                // Closing a busy incoming session holds it: not a no-op by design.
                continue;
            }
            Op::NewMemfd { len } => {
                let mut memfd = Memfd::new();
                if memfd
                    .write_at(
                        0,
                        &vec![7u8; usize::from(*len % 9000)],
                        &mut frames,
                        &mut memory,
                    )
                    .is_ok()
                {
                    objects.push(kernel.open(SimObject::Memfd(MemfdFile::new(memfd))));
                }
                continue;
            }
            Op::NewPlain => {
                objects.push(kernel.open(SimObject::Plain(objects.len() as u64)));
                continue;
            }
            Op::Reboot => luo.prepare_reboot().map(|_| ()),
            Op::Abort => {
                luo.abort_reboot();
                continue;
            }
        };
        let after = snapshot(&luo, &kernel);
        if outcome.is_err() {
            assert_eq!(
                before, after,
                "{op:?} failed with {outcome:?} but changed state"
            );
        }
        let expected: u64 = preserved
            .values()
            .flatten()
            .map(|f| f.with(|m| m.populated_pages() as u64).unwrap())
            .sum();
        assert_eq!(
            after.preserved_pages, expected,
            "preserved pages leaked or lost"
        );
    }
});
