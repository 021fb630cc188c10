//! The image builder: canonical ordering, and a typed error for every inconsistent input.

use handover::image::build::*;
use handover::image::schema::SessionName;
use handover::memmap::FrameRun;
use handover::*;

const MIB: u64 = 1 << 20;

fn r(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}

struct Fixture {
    ram: Vec<PhysRange>,
    scratch: Vec<PhysRange>,
    runs: Vec<FrameRun>,
    handlers: Vec<HandlerDraft<'static>>,
    sessions: Vec<SessionDraft>,
    files: Vec<FileDraft>,
    records: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let name = |n: &[u8]| SessionName::new(n).unwrap();
        Fixture {
            ram: vec![r(MIB, 255 * MIB)],
            scratch: vec![r(MIB, 31 * MIB)],
            runs: vec![FrameRun::new(0x4000, 10, 0), FrameRun::new(0x4200, 1, 9)],
            handlers: vec![
                HandlerDraft {
                    name: "memfd",
                    version: 2,
                },
                HandlerDraft {
                    name: "aaa",
                    version: 1,
                },
            ],
            sessions: vec![
                SessionDraft {
                    name: name(b"zeta"),
                    files: 0..2,
                },
                SessionDraft {
                    name: name(b"alpha"),
                    files: 2..2,
                },
            ],
            files: vec![
                FileDraft {
                    token: 9,
                    handler: 0,
                    record: 0..3,
                },
                FileDraft {
                    token: 3,
                    handler: 1,
                    record: 3..4,
                },
            ],
            records: vec![1, 2, 3, 4],
        }
    }

    fn parts(&self) -> ImageParts<'_> {
        ImageParts {
            generation: 7,
            ram: &self.ram,
            scratch: &self.scratch,
            runs: &self.runs,
            handlers: &self.handlers,
            sessions: &self.sessions,
            files: &self.files,
            records: &self.records,
        }
    }

    fn build(&self) -> Result<HandoverImage, BuildError> {
        build_image(&self.parts(), |_| Some(PhysAddr::new(200 * MIB)))
    }
}

#[test]
fn builds_sorted_tables_and_handler_nodes() {
    let f = Fixture::new();
    let image = f.build().unwrap();
    let h = Handover::parse(image.as_bytes()).unwrap();
    assert_eq!(h.generation(), 7);
    assert_eq!(
        h.sessions().map(|s| s.name().to_vec()).collect::<Vec<_>>(),
        [b"alpha".to_vec(), b"zeta".to_vec()]
    );
    // Handler nodes are sorted by name: "aaa" first.
    assert_eq!(
        h.handlers().iter().map(|h| h.name).collect::<Vec<_>>(),
        ["aaa", "memfd"]
    );
    let zeta = h.find_session(b"zeta").unwrap();
    assert_eq!(zeta.files().map(|f| f.token).collect::<Vec<_>>(), [3, 9]);
    assert_eq!(zeta.find_file(9).unwrap().record, &[1, 2, 3]);
    assert_eq!(zeta.find_file(3).unwrap().handler.name, "aaa");
    assert!(h.find_session(b"zet").is_none());
    assert_eq!(h.image_range(), r(200 * MIB, 4096));
    // Rebuilding from what was read gives the same bytes.
    let rebuilt = OwnedParts::from_handover(&h).rebuild().unwrap();
    assert_eq!(rebuilt.as_bytes(), image.as_bytes());
}

#[test]
fn unused_handlers_get_no_node() {
    let mut f = Fixture::new();
    f.handlers.push(HandlerDraft {
        name: "unused",
        version: 1,
    });
    let image = f.build().unwrap();
    assert_eq!(
        Handover::parse(image.as_bytes()).unwrap().handlers().len(),
        2
    );
}

#[test]
fn inconsistent_input_is_a_typed_error() {
    let name = |n: &[u8]| SessionName::new(n).unwrap();
    let mut f = Fixture::new();
    f.sessions[1].name = name(b"zeta");
    assert_eq!(
        f.build().unwrap_err(),
        BuildError::DuplicateSession {
            name: name(b"zeta")
        }
    );

    let mut f = Fixture::new();
    f.files[1].token = 9;
    assert_eq!(
        f.build().unwrap_err(),
        BuildError::DuplicateToken {
            session: name(b"zeta"),
            token: 9
        }
    );

    let mut f = Fixture::new();
    f.files[0].handler = 5;
    assert!(matches!(
        f.build().unwrap_err(),
        BuildError::BadHandlerReference { token: 9, .. }
    ));

    let mut f = Fixture::new();
    f.handlers[1].name = "Bad Name";
    assert_eq!(f.build().unwrap_err(), BuildError::BadHandler { index: 1 });
    f.handlers[1].name = "memfd";
    assert_eq!(
        f.build().unwrap_err(),
        BuildError::DuplicateHandler { index: 1 }
    );

    let mut f = Fixture::new();
    f.sessions[1].files = 1..2;
    assert_eq!(f.build().unwrap_err(), BuildError::BadDrafts);
    let mut f = Fixture::new();
    f.files[0].record = 0..9;
    assert_eq!(f.build().unwrap_err(), BuildError::BadDrafts);

    let mut f = Fixture::new();
    f.scratch = vec![r(0, 2 * MIB)];
    assert_eq!(f.build().unwrap_err(), BuildError::BadLayout);

    let mut f = Fixture::new();
    f.runs = vec![FrameRun::new(0x4000, 10, 0), FrameRun::new(0x4000, 1, 9)];
    assert!(matches!(f.build().unwrap_err(), BuildError::Map(_)));

    // Placement: in scratch, over a preserved run, outside RAM, or refused by the callback.
    let f = Fixture::new();
    for at in [2 * MIB, 0x4000 * 4096, 300 * MIB] {
        let error = build_image(&f.parts(), |_| Some(PhysAddr::new(at))).unwrap_err();
        assert!(
            matches!(error, BuildError::BadPlacement { .. }),
            "{at:#x}: {error}"
        );
    }
    assert!(matches!(
        build_image(&f.parts(), |_| None).unwrap_err(),
        BuildError::BadPlacement { .. }
    ));
}
