//! The orchestrator's errno on every path of luo.md §2, with Linux's bug fixes (§5.1).

mod common;

use common::*;
use handover::luo::{Limits, LiveUpdate, Target};
use handover::sim::{SimKernel, SimObject};
use handover::uapi::*;
use handover::*;
use zerocopy::IntoBytes;

fn device(luo: &mut Luo, k: &mut SimKernel, cmd: u32, arg: &mut [u8]) -> Result<(), Errno> {
    luo.ioctl(Target::Device, cmd, arg, k)
}

#[test]
fn dispatch_applies_the_extensible_struct_rule() {
    let mut w = Outgoing::new(&[&MEMFD]);
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let mut good = LiveupdateIoctlCreateSession {
        size: 72,
        fd: -1,
        name: name_field(b"s"),
    };

    // A number outside the table is EINVAL, even with a garbage buffer.
    assert_eq!(device(luo, k, io(0xBA, 0x02), &mut []), Err(Errno::EINVAL));
    assert_eq!(
        device(luo, k, io(0xBA, 0x40), good.as_mut_bytes()),
        Err(Errno::EINVAL)
    );
    // The size field must be readable.
    assert_eq!(
        device(luo, k, LIVEUPDATE_IOCTL_CREATE_SESSION, &mut [72, 0, 0]),
        Err(Errno::EFAULT)
    );
    // A known number with wrong type or direction/size bits is ENOTTY.
    assert_eq!(
        device(luo, k, io(0xBB, 0x00), good.as_mut_bytes()),
        Err(Errno::ENOTTY)
    );
    assert_eq!(
        device(luo, k, ioc(3, 0xBA, 0x00, 72), good.as_mut_bytes()),
        Err(Errno::ENOTTY)
    );
    // Shorter than the minimum.
    let mut short = good;
    short.size = 71;
    assert_eq!(
        device(
            luo,
            k,
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            short.as_mut_bytes()
        ),
        Err(Errno::EINVAL)
    );
    // The buffer is shorter than its own size field.
    let mut long = good;
    long.size = 80;
    assert_eq!(
        device(luo, k, LIVEUPDATE_IOCTL_CREATE_SESSION, long.as_mut_bytes()),
        Err(Errno::EFAULT)
    );
    // Bytes past the known struct: non-zero is E2BIG, zero is accepted.
    let mut bigger = [0u8; 80];
    bigger[..72].copy_from_slice(good.as_bytes());
    bigger[..4].copy_from_slice(&80u32.to_le_bytes());
    bigger[79] = 1;
    assert_eq!(
        device(luo, k, LIVEUPDATE_IOCTL_CREATE_SESSION, &mut bigger),
        Err(Errno::E2BIG)
    );
    bigger[79] = 0;
    device(luo, k, LIVEUPDATE_IOCTL_CREATE_SESSION, &mut bigger).unwrap();
    // The reply wrote the fd and nothing past the known struct.
    assert!(
        k.session(i32::from_le_bytes(bigger[4..8].try_into().unwrap()))
            .is_some()
    );
    assert!(bigger[72..].iter().all(|&b| b == 0));
    assert_eq!(
        device(luo, k, LIVEUPDATE_IOCTL_CREATE_SESSION, good.as_mut_bytes()),
        Err(Errno::EEXIST)
    );

    // The session table: outside it EINVAL, malformed ENOTTY.
    let s = create_session(luo, k, b"t").unwrap();
    let target = session(k, s);
    let mut finish_arg = LiveupdateSessionFinish {
        size: 8,
        reserved: 0,
    };
    assert_eq!(
        luo.ioctl(target, io(0xBA, 0x3F), finish_arg.as_mut_bytes(), k),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        luo.ioctl(target, io(0xBA, 0x43), finish_arg.as_mut_bytes(), k),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        luo.ioctl(target, io(0xBB, 0x42), finish_arg.as_mut_bytes(), k),
        Err(Errno::ENOTTY)
    );
}

#[test]
fn create_session_validates_names_and_capacity() {
    let mut w = Outgoing::with_limits(
        &[&MEMFD],
        Limits {
            max_sessions: 3,
            max_files_per_session: 2,
        },
    );
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    assert_eq!(create_session(luo, k, b""), Err(Errno::EINVAL));
    let mut unterminated = LiveupdateIoctlCreateSession {
        size: 72,
        fd: -1,
        name: [b'x'; 64],
    };
    assert_eq!(
        device(
            luo,
            k,
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            unterminated.as_mut_bytes()
        ),
        Err(Errno::EINVAL)
    );
    // Arbitrary bytes, including non-UTF-8, up to 63 of them.
    create_session(luo, k, &[0xff, 0xfe, b'/', b' ']).unwrap();
    create_session(luo, k, &[b'n'; 63]).unwrap();
    assert_eq!(create_session(luo, k, &[b'n'; 63]), Err(Errno::EEXIST));
    // The kernel's fd table is full: nothing is created.
    k.max_fds = k.len();
    assert_eq!(create_session(luo, k, b"third"), Err(Errno::EMFILE));
    k.max_fds = 0;
    create_session(luo, k, b"third").unwrap();
    assert_eq!(create_session(luo, k, b"fourth"), Err(Errno::ENOSPC));
    assert_eq!(luo.outgoing_session_count(), 3);
}

#[test]
fn preserve_fd_checks_in_order() {
    let mut w = Outgoing::with_limits(
        &[&MEMFD],
        Limits {
            max_sessions: 8,
            max_files_per_session: 2,
        },
    );
    let (fd, file) = w.memfd(1, 0, 10_000);
    let plain = w.kernel.open(SimObject::Plain(7));
    let dup = w.kernel.open(SimObject::Memfd(file.clone()));
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s = create_session(luo, k, b"s").unwrap();
    let other = create_session(luo, k, b"other").unwrap();

    assert_eq!(preserve_fd(luo, k, s, 999, 1), Err(Errno::EBADF));
    assert_eq!(preserve_fd(luo, k, s, plain, 1), Err(Errno::ENOENT));
    preserve_fd(luo, k, s, fd, 1).unwrap();
    assert!(file.with(|m| m.is_preserved()).unwrap());
    assert_eq!(luo.tracker().unwrap().page_count(), 3);
    // The token is checked first, then capacity, then the object.
    assert_eq!(preserve_fd(luo, k, s, plain, 1), Err(Errno::EEXIST));
    // The same object again, through another fd or in another session.
    assert_eq!(preserve_fd(luo, k, s, dup, 2), Err(Errno::EBUSY));
    assert_eq!(preserve_fd(luo, k, other, fd, 2), Err(Errno::EBUSY));
    let (fd2, _) = {
        let mut memfd = handover::memfd::Memfd::new();
        let frames = &mut w.frames;
        memfd.write_at(0, b"x", frames, &mut w.ram).unwrap();
        let f = handover::memfd::MemfdFile::new(memfd);
        (w.kernel.open(SimObject::Memfd(f.clone())), f)
    };
    let (fd3, _) = w.memfd(3, 0, 1);
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    preserve_fd(luo, k, s, fd2, 2).unwrap();
    assert_eq!(preserve_fd(luo, k, s, fd3, 3), Err(Errno::ENOSPC));
    // Closing the session unpreserves everything; the object may be preserved again.
    close(luo, k, s).unwrap();
    assert_eq!(luo.tracker().unwrap().page_count(), 0);
    assert!(!file.with(|m| m.is_preserved()).unwrap());
    preserve_fd(luo, k, other, fd, 9).unwrap();
    // The closed session's name is free again.
    create_session(luo, k, b"s").unwrap();
}

#[test]
fn commands_on_the_wrong_kind_of_session_are_einval() {
    let mut w = Outgoing::new(&[&MEMFD]);
    let (fd, _) = w.memfd(1, 0, 100);
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s = create_session(luo, k, b"s").unwrap();
    preserve_fd(luo, k, s, fd, 5).unwrap();
    assert_eq!(retrieve_fd(luo, k, s, 5), Err(Errno::EINVAL));
    assert_eq!(finish(luo, k, s, 0), Err(Errno::EINVAL));
    // An unknown session id.
    let mut arg = LiveupdateSessionFinish {
        size: 8,
        reserved: 0,
    };
    let stale = k.session(s).unwrap();
    close(luo, k, s).unwrap();
    assert_eq!(
        luo.ioctl(
            Target::Session(stale),
            LIVEUPDATE_SESSION_FINISH,
            arg.as_mut_bytes(),
            k
        ),
        Err(Errno::EBADF)
    );
}

#[test]
fn reboot_step_freezes_in_order_and_rolls_back_on_failure() {
    let mut scripted = Scripted::new();
    scripted.fail_freeze = Some(102);
    let mut w = Outgoing::new(&[&MEMFD, &scripted]);
    let (memfd_fd, file) = w.memfd(1, 0, 5000);
    file.with(|m| m.set_size(6 * 4096, &mut w.frames, &mut w.ram))
        .unwrap()
        .unwrap();
    let objects: Vec<i32> = (100..103)
        .map(|n| w.kernel.open(SimObject::Plain(n)))
        .collect();
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let a = create_session(luo, k, b"a").unwrap();
    let b = create_session(luo, k, b"b").unwrap();
    preserve_fd(luo, k, a, objects[0], 1).unwrap();
    preserve_fd(luo, k, a, memfd_fd, 2).unwrap();
    preserve_fd(luo, k, b, objects[1], 1).unwrap();
    preserve_fd(luo, k, b, objects[2], 2).unwrap();
    scripted.take_log();
    // A page populated after preserve is preserved at freeze, and released by the rollback.
    let pages_before = luo.tracker().unwrap().page_count();
    assert_eq!(pages_before, 2);
    file.with(|m| m.write_at(4 * 4096, b"late", &mut w.frames, &mut w.ram))
        .unwrap()
        .unwrap();
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    assert_eq!(luo.prepare_reboot().unwrap_err(), Errno::EIO);
    assert_eq!(
        scripted.take_log(),
        [
            "freeze 100",
            "freeze 101",
            "freeze 102",
            "unfreeze 101",
            "unfreeze 100"
        ]
    );
    assert_eq!(luo.tracker().unwrap().page_count(), pages_before);
    assert!(!luo.is_frozen());
    // Everything is still open and usable.
    let c = create_session(luo, k, b"c").unwrap();
    close(luo, k, c).unwrap();
}

#[test]
fn late_writes_are_preserved_at_the_reboot_step() {
    let mut w = Outgoing::new(&[&MEMFD]);
    // A sparse file: pages 0 and 5 of 8.
    let (fd, file) = w.memfd(7, 0, 100);
    file.with(|m| m.write_at(5 * 4096, &pattern(8, 100), &mut w.frames, &mut w.ram))
        .unwrap()
        .unwrap();
    file.with(|m| m.set_size(8 * 4096, &mut w.frames, &mut w.ram))
        .unwrap()
        .unwrap();
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s = create_session(luo, k, b"sparse").unwrap();
    preserve_fd(luo, k, s, fd, 1).unwrap();
    assert_eq!(luo.tracker().unwrap().page_count(), 2);
    // Growing a preserved file is refused; writing into a hole within its size is not.
    assert_eq!(
        file.with(|m| m.write_at(8 * 4096, b"x", &mut w.frames, &mut w.ram))
            .unwrap(),
        Err(Errno::EPERM)
    );
    file.with(|m| m.write_at(2 * 4096 + 10, b"late write", &mut w.frames, &mut w.ram))
        .unwrap()
        .unwrap();
    let expected = read_all(&file, &w.ram);
    let plan = w.luo.prepare_reboot().unwrap();
    assert_eq!(w.luo.tracker().unwrap().page_count(), 3);
    // Frozen: no session may change.
    assert_eq!(
        create_session(&mut w.luo, &mut w.kernel, b"x"),
        Err(Errno::EBUSY)
    );
    w.luo.abort_reboot();
    assert_eq!(w.luo.tracker().unwrap().page_count(), 2);
    drop(plan);
    let (ram, image) = w.kexec();
    let arrival = arrive(ram, image.range().start());
    let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
    let mut store = IncomingStore::for_handover(&handover);
    let mut luo = LiveUpdate::new(Limits::default());
    luo.register_handler(&MEMFD).unwrap();
    store.attach(handover, &mut luo);
    let mut k = SimKernel::new();
    let s = retrieve_session(&mut luo, &mut k, b"sparse").unwrap();
    let fd = retrieve_fd(&mut luo, &mut k, s, 1).unwrap();
    let restored = memfd_of(&k, fd);
    assert_eq!(restored.with(|m| m.populated_pages()).unwrap(), 3);
    assert_eq!(read_all(&restored, &arrival.ram), expected);
}

#[test]
fn incoming_sessions_follow_the_lifecycle() {
    let scripted = Scripted::new();
    let mut w = Outgoing::new(&[&MEMFD, &scripted]);
    let (m1, f1) = w.memfd(1, 0, 3 * 4096 + 5);
    let (m2, _) = w.memfd(2, 4096, 2 * 4096);
    let (m3, f3) = w.memfd(3, 0, 8000);
    let p = w.kernel.open(SimObject::Plain(100));
    let q = w.kernel.open(SimObject::Plain(101));
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let a = create_session(luo, k, b"alpha").unwrap();
    preserve_fd(luo, k, a, m1, 10).unwrap();
    preserve_fd(luo, k, a, m2, 20).unwrap();
    preserve_fd(luo, k, a, p, 30).unwrap();
    let b = create_session(luo, k, b"beta").unwrap();
    preserve_fd(luo, k, b, m3, 1).unwrap();
    preserve_fd(luo, k, b, q, 2).unwrap();
    create_session(luo, k, b"never-retrieved").unwrap();
    let expected1 = read_all(&f1, &w.ram);
    let expected3 = read_all(&f3, &w.ram);
    let m2_pages: Vec<PhysAddr> = w
        .kernel
        .object(m2)
        .unwrap()
        .memfd()
        .unwrap()
        .with(|m| m.pages().map(|(_, a)| a).collect())
        .unwrap();
    let (ram, image) = w.kexec();
    scripted.take_log();

    let arrival = arrive(ram, image.range().start());
    let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
    assert_eq!(handover.generation(), 1);
    let mut store = IncomingStore::for_handover(&handover);
    let mut luo = LiveUpdate::new(Limits::default());
    luo.register_handler(&MEMFD).unwrap();
    luo.register_handler(&scripted).unwrap();
    store.attach(handover, &mut luo);
    let mut k = SimKernel::new();
    let (luo, k) = (&mut luo, &mut k);

    assert_eq!(retrieve_session(luo, k, b"missing"), Err(Errno::ENOENT));
    assert_eq!(retrieve_session(luo, k, b""), Err(Errno::EINVAL));
    let a = retrieve_session(luo, k, b"alpha").unwrap();
    assert_eq!(retrieve_session(luo, k, b"alpha"), Err(Errno::EINVAL));
    // Outgoing-only commands on an incoming session.
    let stray = k.open(SimObject::Plain(555));
    assert_eq!(preserve_fd(luo, k, a, stray, 1), Err(Errno::EINVAL));
    assert_eq!(retrieve_fd(luo, k, a, 99), Err(Errno::ENOENT));
    let fd1 = retrieve_fd(luo, k, a, 10).unwrap();
    assert_eq!(read_all(&memfd_of(k, fd1), &arrival.ram), expected1);
    // Retrieving a retrieved token gives a new fd for the same object.
    let again = retrieve_fd(luo, k, a, 10).unwrap();
    assert_ne!(again, fd1);
    assert_eq!(
        handover::memfd::MemfdObject::identity(&memfd_of(k, again)),
        handover::memfd::MemfdObject::identity(&memfd_of(k, fd1))
    );
    retrieve_fd(luo, k, a, 30).unwrap();
    // FINISH: reserved must be zero; token 20 (never retrieved) has its pages released.
    assert_eq!(finish(luo, k, a, 1), Err(Errno::EINVAL));
    finish(luo, k, a, 0).unwrap();
    let released: Vec<PhysAddr> = k
        .released
        .iter()
        .flat_map(|r| (0..r.page_count()).map(move |i| PhysAddr::new((r.first_frame + i) * 4096)))
        .collect();
    assert_eq!(released, m2_pages);
    assert_eq!(
        scripted.take_log(),
        ["retrieve 100", "finish-retrieved 100"]
    );
    // Finishing again is a no-op; the files are gone.
    finish(luo, k, a, 0).unwrap();
    assert_eq!(retrieve_fd(luo, k, a, 10), Err(Errno::ENOENT));
    close(luo, k, a).unwrap();
    assert_eq!(retrieve_session(luo, k, b"alpha"), Err(Errno::ENOENT));

    // A busy file blocks FINISH, all or nothing; closing then holds the session.
    *scripted.busy.borrow_mut() = Some(101);
    let b = retrieve_session(luo, k, b"beta").unwrap();
    let fd3 = retrieve_fd(luo, k, b, 1).unwrap();
    assert_eq!(finish(luo, k, b, 0), Err(Errno::EBUSY));
    assert!(scripted.take_log().is_empty());
    assert_eq!(close(luo, k, b), Err(Errno::EBUSY));
    assert_eq!(retrieve_session(luo, k, b"beta"), Err(Errno::EINVAL));
    assert_eq!(read_all(&memfd_of(k, fd3), &arrival.ram), expected3);
}

#[test]
fn failed_retrieves_are_sticky() {
    let mut scripted = Scripted::new();
    scripted.fail_retrieve = Some(100);
    let mut w = Outgoing::new(&[&MEMFD, &scripted]);
    let p = w.kernel.open(SimObject::Plain(100));
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s = create_session(luo, k, b"s").unwrap();
    preserve_fd(luo, k, s, p, 1).unwrap();
    let (ram, image) = w.kexec();
    let arrival = arrive(ram, image.range().start());
    let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
    let mut store = IncomingStore::for_handover(&handover);
    let mut luo = LiveUpdate::new(Limits::default());
    luo.register_handler(&scripted).unwrap();
    store.attach(handover, &mut luo);
    let mut k = SimKernel::new();
    let s = retrieve_session(&mut luo, &mut k, b"s").unwrap();
    scripted.take_log();
    assert_eq!(retrieve_fd(&mut luo, &mut k, s, 1), Err(Errno::EIO));
    assert_eq!(retrieve_fd(&mut luo, &mut k, s, 1), Err(Errno::EIO));
    // The handler ran once: the failure is remembered, not retried against consumed state.
    assert_eq!(scripted.take_log(), ["retrieve 100"]);
    finish(&mut luo, &mut k, s, 0).unwrap();
    assert_eq!(scripted.take_log(), ["finish-unretrieved 100"]);
}

#[test]
fn files_without_a_registered_handler_fail_cleanly() {
    let scripted = Scripted::new();
    let mut w = Outgoing::new(&[&scripted]);
    let p = w.kernel.open(SimObject::Plain(100));
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let s = create_session(luo, k, b"s").unwrap();
    preserve_fd(luo, k, s, p, 1).unwrap();
    let (ram, image) = w.kexec();
    let arrival = arrive(ram, image.range().start());
    let handover = Handover::parse(arrival.blob.as_bytes()).unwrap();
    let mut store = IncomingStore::for_handover(&handover);
    // The next kernel has only the memfd handler.
    let mut luo = LiveUpdate::new(Limits::default());
    luo.register_handler(&MEMFD).unwrap();
    store.attach(handover, &mut luo);
    let mut k = SimKernel::new();
    let s = retrieve_session(&mut luo, &mut k, b"s").unwrap();
    assert_eq!(retrieve_fd(&mut luo, &mut k, s, 1), Err(Errno::EOPNOTSUPP));
    finish(&mut luo, &mut k, s, 0).unwrap();
}

#[test]
fn handler_registration_rules() {
    let mut luo: Luo = LiveUpdate::new(Limits::default());
    luo.register_handler(&MEMFD).unwrap();
    assert_eq!(luo.register_handler(&MEMFD), Err(Errno::EEXIST));
    assert_eq!(luo.open_device(), Ok(()));
    assert_eq!(luo.open_device(), Err(Errno::EBUSY));
    luo.close_device();
    assert_eq!(luo.open_device(), Ok(()));
}

#[test]
fn duplicate_tokens_are_found_in_small_and_large_sessions() {
    let scripted = Scripted::new();
    let mut w = Outgoing::new(&[&scripted]);
    let objects: Vec<i32> = (100..140)
        .map(|n| w.kernel.open(SimObject::Plain(n)))
        .collect();
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let big = create_session(luo, k, b"big").unwrap();
    let other = create_session(luo, k, b"other").unwrap();
    for (token, &fd) in objects[..30].iter().enumerate() {
        // Every earlier token is refused, whichever way the session looks them up.
        if token > 0 {
            assert_eq!(
                preserve_fd(luo, k, big, objects[30], token as u64 - 1),
                Err(Errno::EEXIST),
                "at {token}"
            );
        }
        preserve_fd(luo, k, big, fd, token as u64).unwrap();
    }
    // Tokens are per session.
    preserve_fd(luo, k, other, objects[30], 3).unwrap();
    close(luo, k, big).unwrap();
    let again = create_session(luo, k, b"big").unwrap();
    preserve_fd(luo, k, again, objects[0], 3).unwrap();
}

#[test]
fn argument_buffers_of_any_alignment_work() {
    let mut w = Outgoing::new(&[&MEMFD]);
    let (luo, k) = (&mut w.luo, &mut w.kernel);
    let create = LiveupdateIoctlCreateSession {
        size: 72,
        fd: -1,
        name: name_field(b"odd"),
    };
    // The same struct at every offset 0..8 of a byte buffer.
    for offset in 0..8 {
        let mut buffer = [0u8; 80];
        buffer[offset..offset + 72].copy_from_slice(create.as_bytes());
        buffer[offset + 8] = b'a' + offset as u8;
        luo.ioctl(
            Target::Device,
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            &mut buffer[offset..offset + 72],
            k,
        )
        .unwrap();
        let fd = i32::from_le_bytes(buffer[offset + 4..offset + 8].try_into().unwrap());
        assert!(k.session(fd).is_some());
    }
}
