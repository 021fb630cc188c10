//! `handover::uapi` against `shared/uapi/liveupdate.h` itself: every constant, ioctl number,
//! struct size, field offset and field size is computed from the header text with the C
//! layout rules and compared with the Rust definitions.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use handover::uapi::*;

/// The header: `$LIVEUPDATE_UAPI_HEADER`, else `shared/uapi/liveupdate.h` beside the project
/// (`../shared` from the workspace root, where every developer and CI machine has it).
fn header() -> String {
    let candidates = [
        std::env::var_os("LIVEUPDATE_UAPI_HEADER").map(std::path::PathBuf::from),
        Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/uapi/liveupdate.h"),
        ),
        Some(std::path::PathBuf::from("/work/shared/uapi/liveupdate.h")),
    ];
    for path in candidates.into_iter().flatten() {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
    }
    panic!(
        "liveupdate.h not found: set LIVEUPDATE_UAPI_HEADER or check out ../shared beside the project"
    );
}

fn number(text: &str) -> u64 {
    let text = text.trim().trim_end_matches(',');
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => text.parse().unwrap(),
    }
}

/// Constants from `#define NAME number` and `NAME = value` enum lines (values may name earlier
/// constants).
fn constants(text: &str) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("#define ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(value)) = (parts.next(), parts.next())
                && value.starts_with(|c: char| c.is_ascii_digit())
            {
                map.insert(name.to_string(), number(value));
            }
        } else if let Some((name, value)) = line.split_once('=')
            && name.trim().starts_with("LIVEUPDATE_CMD_")
        {
            let value = value.trim().trim_end_matches(',');
            let resolved = map.get(value).copied().unwrap_or_else(|| number(value));
            map.insert(name.trim().to_string(), resolved);
        }
    }
    map
}

/// `#define LIVEUPDATE_IOCTL_X _IO(TYPE, CMD)` as computed numbers.
fn ioctls(text: &str, constants: &BTreeMap<String, u64>) -> BTreeMap<String, u32> {
    let joined = text.replace("\\\n", " ");
    let mut map = BTreeMap::new();
    for line in joined.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("#define ") else {
            continue;
        };
        let Some((name, body)) = rest.split_once(char::is_whitespace) else {
            continue;
        };
        let Some(args) = body
            .trim()
            .strip_prefix("_IO(")
            .and_then(|b| b.strip_suffix(')'))
        else {
            continue;
        };
        let (ty, nr) = args.split_once(',').unwrap();
        let ty = constants[ty.trim()] as u32;
        let nr = constants[nr.trim()] as u32;
        map.insert(name.to_string(), io(ty, nr));
    }
    map
}

/// A field: (name, offset, size).
type Field = (String, usize, usize);
/// A struct: its fields and its size.
type Layout = (Vec<Field>, usize);

/// Each struct's fields and total size, by the C rules.
fn structs(text: &str, constants: &BTreeMap<String, u64>) -> BTreeMap<String, Layout> {
    let mut map = BTreeMap::new();
    // The struct being read: name, fields, running offset, alignment.
    let mut current: Option<(String, Vec<Field>, usize, usize)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line
            .strip_prefix("struct ")
            .and_then(|r| r.strip_suffix('{'))
        {
            current = Some((rest.trim().to_string(), Vec::new(), 0, 1));
            continue;
        }
        let Some((_, fields, offset, align)) = current.as_mut() else {
            continue;
        };
        if line.starts_with("};") {
            let (name, fields, offset, align) = current.take().unwrap();
            map.insert(name, (fields, offset.div_ceil(align) * align));
            continue;
        }
        let Some(decl) = line.strip_suffix(';') else {
            continue;
        };
        let mut parts = decl.split_whitespace();
        let (ty, name) = (parts.next().unwrap(), parts.next().unwrap());
        let (unit, unit_align) = match ty {
            "__u8" => (1, 1),
            "__u32" | "__s32" => (4, 4),
            "__aligned_u64" | "__u64" => (8, 8),
            other => panic!("unknown type {other}"),
        };
        let (name, count) = match name.split_once('[') {
            Some((n, len)) => (n, constants[len.trim_end_matches(']')] as usize),
            None => (name, 1),
        };
        *offset = offset.div_ceil(unit_align) * unit_align;
        fields.push((name.to_string(), *offset, unit * count));
        *offset += unit * count;
        *align = (*align).max(unit_align);
    }
    map
}

#[test]
fn constants_and_numbers_match() {
    let text = header();
    let c = constants(&text);
    assert_eq!(c["LIVEUPDATE_IOCTL_TYPE"], u64::from(LIVEUPDATE_IOCTL_TYPE));
    assert_eq!(
        c["LIVEUPDATE_SESSION_NAME_LENGTH"],
        LIVEUPDATE_SESSION_NAME_LENGTH as u64
    );
    assert_eq!(c["LIVEUPDATE_CMD_BASE"], u64::from(LIVEUPDATE_CMD_BASE));
    assert_eq!(
        c["LIVEUPDATE_CMD_CREATE_SESSION"],
        u64::from(LIVEUPDATE_CMD_CREATE_SESSION)
    );
    assert_eq!(
        c["LIVEUPDATE_CMD_RETRIEVE_SESSION"],
        u64::from(LIVEUPDATE_CMD_RETRIEVE_SESSION)
    );
    assert_eq!(
        c["LIVEUPDATE_CMD_SESSION_BASE"],
        u64::from(LIVEUPDATE_CMD_SESSION_BASE)
    );
    assert_eq!(
        c["LIVEUPDATE_CMD_SESSION_PRESERVE_FD"],
        u64::from(LIVEUPDATE_CMD_SESSION_PRESERVE_FD)
    );
    assert_eq!(
        c["LIVEUPDATE_CMD_SESSION_RETRIEVE_FD"],
        u64::from(LIVEUPDATE_CMD_SESSION_RETRIEVE_FD)
    );
    assert_eq!(
        c["LIVEUPDATE_CMD_SESSION_FINISH"],
        u64::from(LIVEUPDATE_CMD_SESSION_FINISH)
    );
    let n = ioctls(&text, &c);
    assert_eq!(n.len(), 5, "{n:?}");
    assert_eq!(
        n["LIVEUPDATE_IOCTL_CREATE_SESSION"],
        LIVEUPDATE_IOCTL_CREATE_SESSION
    );
    assert_eq!(
        n["LIVEUPDATE_IOCTL_RETRIEVE_SESSION"],
        LIVEUPDATE_IOCTL_RETRIEVE_SESSION
    );
    assert_eq!(
        n["LIVEUPDATE_SESSION_PRESERVE_FD"],
        LIVEUPDATE_SESSION_PRESERVE_FD
    );
    assert_eq!(
        n["LIVEUPDATE_SESSION_RETRIEVE_FD"],
        LIVEUPDATE_SESSION_RETRIEVE_FD
    );
    assert_eq!(n["LIVEUPDATE_SESSION_FINISH"], LIVEUPDATE_SESSION_FINISH);
}

macro_rules! layout {
    ($ty:ty, $($field:ident),+) => {
        (size_of::<$ty>(), vec![$((stringify!($field).to_string(), offset_of!($ty, $field), {
            let value = <$ty as zerocopy::FromZeros>::new_zeroed();
            std::mem::size_of_val(&value.$field)
        })),+])
    };
}

#[test]
fn struct_layouts_match() {
    let text = header();
    let parsed = structs(&text, &constants(&text));
    let rust = [
        (
            "liveupdate_ioctl_create_session",
            layout!(LiveupdateIoctlCreateSession, size, fd, name),
        ),
        (
            "liveupdate_ioctl_retrieve_session",
            layout!(LiveupdateIoctlRetrieveSession, size, fd, name),
        ),
        (
            "liveupdate_session_preserve_fd",
            layout!(LiveupdateSessionPreserveFd, size, fd, token),
        ),
        (
            "liveupdate_session_retrieve_fd",
            layout!(LiveupdateSessionRetrieveFd, size, fd, token),
        ),
        (
            "liveupdate_session_finish",
            layout!(LiveupdateSessionFinish, size, reserved),
        ),
    ];
    assert_eq!(parsed.len(), rust.len(), "{:?}", parsed.keys());
    for (name, (size, fields)) in rust {
        let (c_fields, c_size) = &parsed[name];
        assert_eq!(*c_size, size, "{name} size");
        assert_eq!(c_fields, &fields, "{name} fields");
    }
}
