//! The host side of the QEMU scenarios: build the two bare-metal images, boot QEMU with the
//! loader as `-kernel` and a kernel-shim as `-initrd`, follow the guest's serial protocol and
//! judge the run.
//!
//! - [`scenario`]: the scenario table (add scenarios there);
//! - [`judge`](mod@judge): pass/fail from the serial output and QEMU's exit status;
//! - [`setup`]: installing the Rust target and QEMU on a fresh machine.
//!
//! `cargo qemu` (the `qemu-runner` binary) and `tests/qemu_scenarios.rs` both drive
//! [`Runner`].

pub mod judge;
pub mod scenario;
pub mod setup;

use judge::{Judgement, QemuExit, judge};
use scenario::Scenario;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A failure of the runner itself (not of a scenario).
#[derive(Debug)]
pub enum RunnerError {
    /// The machine lacks something and we could not install it.
    Setup(String),
    /// Building the images failed.
    Build(String),
    /// QEMU could not be started.
    Spawn(String),
}

impl fmt::Display for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerError::Setup(message) => write!(f, "setup: {message}"),
            RunnerError::Build(message) => write!(f, "build: {message}"),
            RunnerError::Spawn(message) => write!(f, "qemu: {message}"),
        }
    }
}

impl std::error::Error for RunnerError {}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Use KVM (`-accel kvm -cpu host,-arch-capabilities`) instead of TCG.
    pub kvm: bool,
    /// Pass `--quiet` to the image build.
    pub quiet_build: bool,
    /// Print every serial line, not only `phase:` lines.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            kvm: false,
            quiet_build: true,
            verbose: false,
        }
    }
}

/// The built images.
#[derive(Clone, Debug)]
pub struct Images {
    /// The loader (`-kernel`).
    pub loader: PathBuf,
    /// `kernel-shim`.
    pub shim: PathBuf,
    /// `kernel-shim-overlap`.
    pub shim_overlap: PathBuf,
}

impl Images {
    /// The `-initrd` image of a scenario.
    pub fn shim_for(&self, scenario: &Scenario) -> &Path {
        match scenario.shim {
            scenario::ShimImage::Standard => &self.shim,
            scenario::ShimImage::Overlap => &self.shim_overlap,
        }
    }
}

/// What happened in one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Pass (with the guest's summary) or fail (with the reason).
    pub judgement: Judgement,
    /// Wall-clock time of the QEMU run.
    pub duration: Duration,
    /// The serial output.
    pub serial: String,
    /// Where the log of a failed run was kept.
    pub log: Option<PathBuf>,
}

impl Outcome {
    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        matches!(self.judgement, Judgement::Pass(_))
    }

    /// One line: `PASS name (0.12 s): summary` or `FAIL name (...): reason [log]`.
    pub fn result_line(&self) -> String {
        let seconds = self.duration.as_secs_f64();
        match &self.judgement {
            Judgement::Pass(summary) => {
                format!("PASS {} ({seconds:.2} s): {summary}", self.scenario)
            }
            Judgement::Fail(reason) => {
                let log = self
                    .log
                    .as_ref()
                    .map(|log| format!(" (serial log: {})", log.display()))
                    .unwrap_or_default();
                format!("FAIL {} ({seconds:.2} s): {reason}{log}", self.scenario)
            }
        }
    }
}

/// A line of progress while a scenario runs.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// QEMU is starting.
    Booting(&'a str),
    /// A serial line (`phase:` lines always, others in verbose mode).
    Serial(&'a str),
}

/// Builds the images once and runs scenarios.
pub struct Runner {
    workspace: PathBuf,
    qemu: PathBuf,
    images: Images,
    options: Options,
}

/// The workspace root (this crate is `qemu/runner`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set (relative to the workspace), else
/// `<workspace>/target`.
pub fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

/// Where the serial logs of failed runs go.
pub fn log_dir(workspace: &Path) -> PathBuf {
    workspace.join("qemu-logs")
}

impl Runner {
    /// Checks the machine (installing the target and QEMU if needed) and builds the images.
    /// `log` receives the runner's own messages; cargo's output goes to stderr.
    pub fn new(options: Options, log: &mut dyn Write) -> Result<Runner, RunnerError> {
        let workspace = workspace_root();
        setup::ensure_target(&workspace, log)?;
        let qemu = setup::ensure_qemu(log)?;
        let images = build_images(&workspace, &options, log)?;
        Ok(Runner {
            workspace,
            qemu,
            images,
            options,
        })
    }

    /// The images in use.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Boots one scenario and judges it. A failed run's serial log is kept in `qemu-logs/`.
    pub fn run(
        &self,
        scenario: &'static Scenario,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Outcome {
        let started = Instant::now();
        let run = match self.boot(scenario, progress) {
            Ok(run) => run,
            Err(error) => {
                return Outcome {
                    scenario: scenario.name,
                    judgement: Judgement::Fail(error.to_string()),
                    duration: started.elapsed(),
                    serial: String::new(),
                    log: None,
                };
            }
        };
        let duration = started.elapsed();
        let judgement = judge(&run.serial, run.exit);
        let log_path = log_dir(&self.workspace).join(format!("{}.log", scenario.name));
        let log = match &judgement {
            Judgement::Pass(_) => {
                // A stale log of an earlier failure would mislead.
                let _ = std::fs::remove_file(&log_path);
                None
            }
            Judgement::Fail(reason) => {
                let text = format!(
                    "# {}\n# exit: {:?}\n# result: FAIL: {reason}\n\n{}\n# QEMU stderr:\n{}\n",
                    run.command_line, run.exit, run.serial, run.stderr
                );
                std::fs::create_dir_all(log_dir(&self.workspace))
                    .and_then(|()| std::fs::write(&log_path, text))
                    .ok()
                    .map(|()| log_path)
            }
        };
        Outcome {
            scenario: scenario.name,
            judgement,
            duration,
            serial: run.serial,
            log,
        }
    }

    /// The scenario's timeout; four times as long under KVM, which on a nested host (as on
    /// this project's machines) is far slower than TCG at touching fresh memory.
    fn timeout(&self, scenario: &Scenario) -> Duration {
        if self.options.kvm {
            scenario.timeout * 4
        } else {
            scenario.timeout
        }
    }

    fn qemu_command(&self, scenario: &Scenario) -> Command {
        let mut command = Command::new(&self.qemu);
        command
            .args([
                "-machine",
                "pc",
                "-nodefaults",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", "stdio"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(["-m", &format!("{}M", scenario.memory_mib)]);
        if self.options.kvm {
            command.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"]);
        } else {
            command.args(["-accel", "tcg"]);
        }
        command
            .arg("-kernel")
            .arg(&self.images.loader)
            .arg("-initrd")
            .arg(self.images.shim_for(scenario))
            .args([
                "-append",
                &format!(
                    "{}={}",
                    qemu_platform::protocol::SCENARIO_KEY,
                    scenario.name
                ),
            ]);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs QEMU, streaming serial lines to `progress`, until it exits or times out.
    fn boot(
        &self,
        scenario: &Scenario,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<QemuRun, RunnerError> {
        let mut command = self.qemu_command(scenario);
        let command_line = format!("{command:?}");
        progress(Progress::Booting(&format!(
            "booting: loader + {}, {} MiB, {}, timeout {} s",
            scenario.shim.bin_name(),
            scenario.memory_mib,
            if self.options.kvm { "kvm" } else { "tcg" },
            self.timeout(scenario).as_secs()
        )));
        let mut child = command
            .spawn()
            .map_err(|error| RunnerError::Spawn(format!("{}: {error}", self.qemu.display())))?;
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            // Bytes, not UTF-8 lines: a guest may print anything.
            while reader
                .read_until(b'\n', &mut line)
                .is_ok_and(|read| read > 0)
            {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if lines_tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let stderr_pipe = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = stderr_pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });

        let timeout = self.timeout(scenario);
        let deadline = Instant::now() + timeout;
        let mut serial = String::new();
        let mut timed_out = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(remaining) {
                Ok(line) => {
                    if self.options.verbose || line.starts_with(qemu_platform::protocol::PHASE) {
                        progress(Progress::Serial(&line));
                    }
                    serial.push_str(&line);
                    serial.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    break;
                }
            }
        }
        let exit = finish(&mut child, deadline, timed_out, timeout);
        let _ = reader.join();
        let stderr = stderr_reader.join().unwrap_or_default();
        Ok(QemuRun {
            command_line,
            serial,
            exit,
            stderr,
        })
    }
}

/// What one QEMU process did.
struct QemuRun {
    /// The command, for the log.
    command_line: String,
    /// The guest's serial output, one `\n` per line.
    serial: String,
    /// How QEMU ended.
    exit: QemuExit,
    /// QEMU's own messages.
    stderr: String,
}

/// Waits for QEMU (killing it past the deadline) and says how it ended.
fn finish(child: &mut Child, deadline: Instant, timed_out: bool, timeout: Duration) -> QemuExit {
    if !timed_out {
        // The serial stream ended: QEMU is exiting. Give it until the deadline.
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return status.code().map_or(QemuExit::Signal, QemuExit::Status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => break,
            }
        }
    }
    // Our own child, by its pid.
    let _ = child.kill();
    let _ = child.wait();
    QemuExit::TimedOut(timeout)
}

/// Builds the loader and both kernel-shim images with cargo.
pub fn build_images(
    workspace: &Path,
    options: &Options,
    log: &mut dyn Write,
) -> Result<Images, RunnerError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace).args([
        "build",
        "--release",
        "--target",
        setup::TARGET,
        "-p",
        "loader",
        "-p",
        "kernel-shim",
    ]);
    if options.quiet_build {
        command.arg("--quiet");
    }
    let _ = writeln!(
        log,
        "qemu-runner: building images (cargo build --release --target {} -p loader -p kernel-shim)",
        setup::TARGET
    );
    let status = command
        .status()
        .map_err(|error| RunnerError::Build(format!("cannot run cargo: {error}")))?;
    if !status.success() {
        return Err(RunnerError::Build(format!(
            "cargo build of the images failed ({status})"
        )));
    }
    let release = target_dir(workspace).join(setup::TARGET).join("release");
    let images = Images {
        loader: release.join("loader"),
        shim: release.join(scenario::ShimImage::Standard.bin_name()),
        shim_overlap: release.join(scenario::ShimImage::Overlap.bin_name()),
    };
    for image in [&images.loader, &images.shim, &images.shim_overlap] {
        if !image.is_file() {
            return Err(RunnerError::Build(format!(
                "{} was not built",
                image.display()
            )));
        }
    }
    Ok(images)
}

/// Builds once per process and runs scenario `name` with default options: for tests.
/// Panics if the runner cannot be set up (a test failure, never a skip).
pub fn run_for_test(name: &str) -> Outcome {
    static RUNNER: std::sync::OnceLock<Result<Runner, String>> = std::sync::OnceLock::new();
    let runner = RUNNER.get_or_init(|| {
        Runner::new(Options::default(), &mut std::io::stderr()).map_err(|e| e.to_string())
    });
    let runner = match runner {
        Ok(runner) => runner,
        Err(error) => panic!("qemu-runner: {error}"),
    };
    let scenario = scenario::find(name).unwrap_or_else(|| panic!("no scenario {name:?}"));
    runner.run(scenario, &mut |_| {})
}
