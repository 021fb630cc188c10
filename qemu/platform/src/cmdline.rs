//! The kernel command line: `key=value` words separated by ASCII whitespace.
//!
//! The runner passes the scenario as `scenario=NAME` through QEMU's `-append`; the loader
//! forwards its command line to the next kernel in `BootInfo`, so every kernel in a chain sees
//! the same words.

use core::fmt;

/// The longest command line kept (longer ones are an error, not silently cut).
pub const CMDLINE_MAX_BYTES: usize = 512;

/// A command line of at most [`CMDLINE_MAX_BYTES`] bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    bytes: heapless::Vec<u8, CMDLINE_MAX_BYTES>,
}

/// The command line is longer than [`CMDLINE_MAX_BYTES`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CmdlineTooLong;

impl fmt::Display for CmdlineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command line longer than {CMDLINE_MAX_BYTES} bytes")
    }
}

impl Cmdline {
    /// The command line made of `bytes` (without a terminating NUL).
    pub fn new(bytes: &[u8]) -> Result<Cmdline, CmdlineTooLong> {
        heapless::Vec::from_slice(bytes)
            .map(|bytes| Cmdline { bytes })
            .map_err(|_| CmdlineTooLong)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value of the first `key=value` word with this key, if it is UTF-8.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.bytes.split(u8::is_ascii_whitespace).find_map(|word| {
            let value = word.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            core::str::from_utf8(value).ok()
        })
    }
}

impl fmt::Debug for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.bytes.escape_ascii())
    }
}

impl fmt::Display for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_by_whole_key() {
        let line = Cmdline::new(b"quiet scenarios=x scenario=empty  scenario=later").unwrap();
        assert_eq!(line.get("scenario"), Some("empty"));
        assert_eq!(line.get("quiet"), None);
        assert_eq!(line.get("missing"), None);
        assert_eq!(Cmdline::new(b"").unwrap().get("scenario"), None);
    }

    #[test]
    fn rejects_overlong_lines() {
        assert_eq!(
            Cmdline::new(&[b'a'; CMDLINE_MAX_BYTES + 1]),
            Err(CmdlineTooLong)
        );
        assert!(Cmdline::new(&[b'a'; CMDLINE_MAX_BYTES]).is_ok());
    }
}
