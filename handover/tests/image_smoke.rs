use handover::image::build::*;
use handover::image::schema::SessionName;
use handover::memmap::FrameRun;
use handover::*;

const MIB: u64 = 1 << 20;

fn r(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}

#[test]
fn build_parse_rebuild() {
    let ram = [r(MIB, 255 * MIB)];
    let scratch = [r(MIB, 31 * MIB)];
    let runs = [FrameRun::new(0x4000, 10, 0), FrameRun::new(0x4200, 1, 9)];
    let handlers = [
        HandlerDraft {
            name: "memfd",
            version: 2,
        },
        HandlerDraft {
            name: "aaa",
            version: 1,
        },
    ];
    let sessions = vec![
        SessionDraft {
            name: SessionName::new(b"zeta").unwrap(),
            files: vec![
                FileDraft {
                    token: 9,
                    handler: 0,
                    record: vec![1, 2, 3],
                },
                FileDraft {
                    token: 3,
                    handler: 1,
                    record: vec![4],
                },
            ],
        },
        SessionDraft {
            name: SessionName::new(b"alpha").unwrap(),
            files: vec![],
        },
    ];
    let parts = ImageParts {
        generation: 1,
        ram: &ram,
        scratch: &scratch,
        runs: &runs,
        handlers: &handlers,
        sessions: &sessions,
    };
    let image = build_image(&parts, |_| Some(PhysAddr::new(200 * MIB))).unwrap();
    let h = Handover::parse(image.as_bytes()).unwrap();
    assert_eq!(h.session_count(), 2);
    assert_eq!(
        h.find_session(b"zeta")
            .unwrap()
            .find_file(9)
            .unwrap()
            .record,
        &[1, 2, 3]
    );
    assert_eq!(
        h.find_session(b"zeta")
            .unwrap()
            .find_file(3)
            .unwrap()
            .handler
            .name,
        "aaa"
    );
    assert!(h.find_session(b"zet").is_none());
    let rebuilt = OwnedParts::from_handover(&h).rebuild().unwrap();
    assert_eq!(rebuilt.as_bytes(), image.as_bytes());
    let mut bad = image.clone();
    bad.as_bytes_mut()[100] ^= 1;
    println!("{}", Handover::parse(bad.as_bytes()).unwrap_err());
    assert!(Handover::parse(bad.as_bytes()).is_err());
}
