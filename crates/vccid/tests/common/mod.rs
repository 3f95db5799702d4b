//! What the `vccid serve` tests share (serve.rs, enroll.rs, console.rs): the service in a
//! private pcscd's namespaces with a configuration of the test's, restarted as a test needs,
//! and `vccid ctl` against its control socket.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testkit::{text, CommandExt, PrivatePcscd};

pub const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

/// `vccid ctl ARGS` against `socket`.
pub fn ctl_output(socket: &Path, args: &[&str]) -> Output {
    Command::new(VCCID)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output_within(testkit::TOOL_TIMEOUT)
        .expect("vccid ctl runs")
}

/// `vccid ctl ARGS`'s standard output, or a panic with its output.
pub fn ctl(socket: &Path, args: &[&str]) -> String {
    let o = ctl_output(socket, args);
    assert!(o.status.success(), "vccid ctl {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `vccid serve` in a private pcscd's namespaces.
pub struct Served {
    pub pcscd: PrivatePcscd,
    /// The control socket.
    pub socket: PathBuf,
    /// The scratch directory (the configuration, logs, what the test makes).
    pub dir: PathBuf,
    /// The service's state directory.
    pub state: PathBuf,
    /// testkit's OpenSSL identities (cert1..cert3 .crt.pem / .key.pem), made when the
    /// configuration names `{ids}`.
    pub ids: PathBuf,
    /// `serve`'s options besides `--config`.
    args: Vec<String>,
    /// How many times `vccid serve` was started (each run logs to its own file).
    runs: usize,
}

impl Served {
    /// `vccid serve --config FILE` with `config` (`{state}`, `{socket}` and `{ids}` filled in).
    pub fn start(config: &str) -> Served {
        Served::start_with(config, &[])
    }

    /// The same with more `serve` options.
    pub fn start_with(config: &str, args: &[&str]) -> Served {
        let pcscd = PrivatePcscd::start().expect("private pcscd starts");
        let dir = pcscd.dir.path().to_path_buf();
        let socket = dir.join("control.sock");
        let state = dir.join("state");
        let ids = dir.join("ids");
        if config.contains("{ids}") {
            std::fs::create_dir(&ids).unwrap();
            testkit::openssl_identities(&ids).unwrap();
        }
        let config = config
            .replace("{ids}", &ids.display().to_string())
            .replace("{socket}", &socket.display().to_string())
            .replace("{state}", &state.display().to_string());
        std::fs::write(dir.join("vccid.toml"), config).unwrap();
        let mut s = Served {
            pcscd,
            socket,
            dir,
            state,
            ids,
            args: args.iter().map(|a| a.to_string()).collect(),
            runs: 0,
        };
        s.run();
        s
    }

    /// The name of the current run's log.
    pub fn log_name(&self) -> String {
        format!("vccid{}", self.runs)
    }

    /// The current run's output.
    pub fn log(&self) -> String {
        self.pcscd.child_log(&self.log_name())
    }

    /// Starts `vccid serve` (again) and waits for its control socket.
    pub fn run(&mut self) {
        self.runs += 1;
        let mut cmd = self.pcscd.command(VCCID);
        cmd.arg("serve")
            .args(&self.args)
            .arg("--config")
            .arg(self.dir.join("vccid.toml"));
        self.pcscd.spawn(&self.log_name(), cmd).unwrap();
        let socket = self.socket.clone();
        testkit::wait_for("the control socket", Duration::from_secs(30), || {
            UnixStream::connect(&socket).is_ok()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// Stops `vccid serve` (SIGTERM).
    pub fn stop(&mut self) {
        let name = self.log_name();
        self.pcscd.stop_child(&name, "TERM");
    }

    /// Stops `vccid serve` and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Waits for pcscd to show a card in reader `reader` (30 s at most).
    pub fn wait_card(&self, reader: usize) {
        self.pcscd
            .wait_card(reader, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }
}
