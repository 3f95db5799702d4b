//! The command lines of `vccid` and `vscclient`, in the library so that the man pages and
//! shell completions (`examples/dist.rs`, issue #16) are made from the very definitions the
//! programs parse.

use crate::secret::SpecText;
use clap::Parser;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// The version `--version` prints: the package's version and the commit it was built from
/// (`build.rs`; `VCCID_COMMIT` when built outside a git checkout, e.g. from a source tarball).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VCCID_COMMIT"), ")");

pub const DEFAULT_VPCD: &str = "127.0.0.1:35963";
pub const DEFAULT_USBREDIR: &str = "127.0.0.1:4000";
pub const DEFAULT_USBIP: &str = "127.0.0.1:3240";

/// A virtual smart-card reader and card
///
/// The card (CAC, PIV or both; keys generated, from files, an NSS database or a PKCS#11 token)
/// goes to this host's pcscd (--vpcd), to QEMU and libvirt guests (--usbredir), to any Linux
/// machine (--usbip), or comes from a VSCard client (--card passthru). With no transport
/// option the reader is exported over usbredir on 127.0.0.1:4000 and the QEMU and libvirt lines
/// that attach it are printed. `vccid serve` holds many cards and readers in one service.
#[derive(Parser, Debug)]
#[command(name = "vccid", version = VERSION, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Cmd>,

    /// Serve the card to pcscd's vsmartcard vpcd driver at ADDR (HOST:PORT).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_VPCD)]
    pub vpcd: Option<String>,

    /// Export the USB CCID reader over usbredir, listening at ADDR (HOST:PORT or unix:PATH)
    /// for QEMU's `-device usb-redir` (default 127.0.0.1:4000).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_USBREDIR)]
    pub usbredir: Option<String>,

    /// Export the reader over usbredir by connecting to QEMU's
    /// `-chardev socket,server=on,wait=off` at ADDR (reconnecting when QEMU restarts).
    #[arg(long, value_name = "ADDR", conflicts_with = "usbredir")]
    pub usbredir_connect: Option<String>,

    /// Export the USB CCID reader over USB/IP, listening at ADDR (HOST:PORT, default
    /// 127.0.0.1:3240) for the Linux `usbip` tool: `usbip attach -r HOST -b 1-1`. Alongside
    /// usbredir when --usbredir is given too.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_USBIP)]
    pub usbip: Option<String>,

    /// Write every USB transfer between the host and the reader to FILE as a usbmon pcap
    /// (what QEMU's `pcap=` writes; Wireshark and tshark decode the CCID messages). PIN, PUK
    /// and management-key bytes, and decipher and management-key outputs, are written as
    /// zeros (lengths kept) unless --pcap-secrets.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// With --pcap: write PIN, PUK and management-key bytes into the capture as they are
    /// (for debugging a card's PIN handling; keep such a file private).
    #[arg(long, requires = "pcap")]
    pub pcap_secrets: bool,

    /// The card, in QEMU's property syntax: `emulated` (embedded default identities),
    /// `emulated,backend=certificates,db=sql:DIR,cert1=NICK,...` (NSS database),
    /// `emulated,backend=files,cert1=CERT.pem,key1=KEY.pem,...` (or `cert1=ID.p12,...,
    /// p12-password-file=FILE`),
    /// `emulated,backend=pkcs11,uri=pkcs11:token=...?module-path=...`;
    /// common properties: pin=PIN (default 12345678), pin-tries=N (default 3);
    /// profile=cac (default, libcacard's CAC), profile=piv (a PIV card: slots 9A, 9C, 9D,
    /// 9E, then 82..95; PIN 123456, puk=PUK default 12345678; state=FILE|off, default a file
    /// per card under the data directory) or profile=cac+piv (both on one card).
    /// `passthru[,listen=ADDR]`: the card lives in a VSCard client such as vscclient
    /// (default listen=127.0.0.1:2001; ADDR is HOST:PORT or unix:PATH).
    /// `hardware[,reader=NAME]`: the host's real card through PC/SC (the first reader whose
    /// name contains NAME; never vccid's own --vpcd reader).
    /// Give --card more than once for several cards, each in a slot (reader) of its own:
    /// cardN in slotN, N from 0; vpcd slot N uses vpcd's port + N, a usbredir reader
    /// listens on the port + N, USB/IP exports bus ids 1-1, 1-2, ...; standard input then
    /// takes `eject SLOT`, `insert CARD SLOT`, `move CARD SLOT` and `status`.
    #[arg(long = "card", value_name = "SPEC", default_value = "emulated")]
    pub cards: Vec<SpecText>,

    /// With several --card: put all the cards in ONE USB reader with a slot each (CCID
    /// bMaxSlotIndex = cards - 1) instead of one reader per card.
    #[arg(long)]
    pub one_reader: bool,

    /// With --card hardware: use the first PC/SC reader whose name contains SUBSTRING
    /// (case-insensitive; the same as `--card hardware,reader=SUBSTRING`).
    #[arg(long, value_name = "SUBSTRING")]
    pub reader: Option<String>,

    /// Where the embedded default identities and the PIV cards' state are kept (default: $XDG_DATA_HOME/vccid, else
    /// ~/.local/share/vccid; also $VCCID_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Create the --data-dir directory when it does not exist (without it a missing one is an
    /// error, so that a mistyped name does not make a new card).
    #[arg(long, requires = "data_dir")]
    pub create: bool,

    /// TLS on the network links (the passthru listener, usbredir either way), with the
    /// certificates of QEMU's `tls-creds-x509` directory DIR (ca-cert.pem, server-cert.pem,
    /// server-key.pem, client-cert.pem, client-key.pem; `vccid tls init DIR` makes one).
    /// Clients must present a certificate from the CA unless --tls-no-verify-peer.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,

    /// With --tls: accept clients without a certificate (QEMU's verify-peer=off).
    #[arg(long, requires = "tls")]
    pub tls_no_verify_peer: bool,

    /// With --tls and --usbredir-connect: the name to check in QEMU's certificate (default:
    /// the host connected to).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_hostname: Option<String>,

    /// Allow plaintext listeners on non-loopback addresses (each connection then logs a
    /// warning). Without it vccid refuses them: use --tls, loopback, or unix:PATH.
    #[arg(long)]
    pub insecure_plaintext: bool,

    /// More log output (-v debug, -vv trace with every APDU); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Run the service: the cards and readers of a configuration file in one process
    ///
    /// The cards and readers of a configuration file (vccid.toml(5)) in one process,
    /// controlled at run time through the control socket (vccid-ctl(1)). Without a file, the
    /// embedded default card on vpcd. SIGHUP reads the file again and applies the difference;
    /// SIGTERM and SIGINT stop every reader. Under systemd (Type=notify) it sends READY=1 once
    /// every reader listens, and takes its directories from $CONFIGURATION_DIRECTORY,
    /// $STATE_DIRECTORY and $RUNTIME_DIRECTORY. The packaged vccid.service runs it as user
    /// vccid with /etc/vccid/vccid.toml, its cards' keys in /var/lib/vccid and the control
    /// socket /run/vccid/control.sock (group vccid).
    Serve {
        /// The configuration (default: vccid.toml in systemd's $CONFIGURATION_DIRECTORY, else
        /// $XDG_CONFIG_HOME/vccid/vccid.toml, or /etc/vccid/vccid.toml as root; none there: the
        /// embedded default).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check the configuration and exit.
        #[arg(long)]
        check: bool,
        /// Serve the web console at ADDR (loopback IP:PORT, port 0 for a free one), as
        /// `console` in [service]; its URL, with the token every request needs, is printed
        /// (and `vccid ctl console-url` tells it).
        #[arg(long, value_name = "ADDR")]
        console: Option<String>,
        /// The console over TLS with this `tls-creds-x509` directory (`vccid tls init DIR
        /// --name HOST --ip ADDRESS`), as `console_tls` in [service]: needed for an address
        /// other than loopback.
        #[arg(long, value_name = "DIR")]
        console_tls: Option<PathBuf>,
        /// More log output (-v debug, -vv trace); RUST_LOG overrides.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Talk to a running `vccid serve` through its control socket
    ///
    /// Members of the socket's group (vccid, for the packaged service) may use it; they
    /// control every card. Exit status: 0 done, 1 `wait` timed out, 2 an error (said on
    /// standard error). docs/control.md (in /usr/share/doc/vccid) describes the socket's JSON.
    Ctl(crate::ctl::CtlArgs),
    /// TLS certificates.
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Make a data directory (mode 0700) with a new default card: three RSA-2048 identities
    /// and a P-256 one; refuses when DIR already holds a card.
    Init {
        /// The data directory (default: $VCCID_DATA_DIR, else $XDG_DATA_HOME/vccid, else
        /// ~/.local/share/vccid).
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TlsCmd {
    /// Make a QEMU tls-creds-x509 directory: a CA, a server certificate for the given names
    /// and addresses, a client certificate (ECDSA P-256; keys mode 0600), and print the QEMU
    /// and libvirt lines that use it.
    Init {
        /// The directory.
        dir: PathBuf,
        /// DNS names in the server certificate (repeatable; default localhost).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// IP addresses in the server certificate (repeatable; default 127.0.0.1 and ::1).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// Validity in days (1 to 36500).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace an existing set.
        #[arg(long)]
        force: bool,
    },
}

/// Serve a smart card to a VSCard host (QEMU ccid-card-passthru, vccid --card passthru).
// No `Debug`: it would print the PIN (issue #14).
#[derive(Parser)]
#[command(name = "vscclient", version = VERSION, long_about = None)]
pub struct VscclientArgs {
    /// Emulate a CAC card with this NSS certificate nickname (repeatable), from the database
    /// in -e's db= (default /etc/pki/nssdb).
    #[arg(short = 'c', long = "cert", value_name = "CERTNAME")]
    pub certs: Vec<String>,

    /// libcacard emulator options, e.g. `db="sql:DIR" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)`.
    #[arg(short = 'e', long = "emul-args", value_name = "EMUL_ARGS")]
    pub emul_args: Option<String>,

    /// libcacard's compare-with-PC/SC debug mode (not supported).
    #[arg(short = 'p', long = "passthru-compare")]
    pub passthru_compare: bool,

    /// Debug level (libcacard: >0 prints messages, >10 everything).
    #[arg(short = 'd', long = "debug", value_name = "LEVEL", default_value_t = 0)]
    pub debug: u32,

    /// The card as vccid specifies it (`emulated`, `emulated,backend=...`), instead of -c/-e.
    #[arg(long, value_name = "SPEC")]
    pub card: Option<SpecText>,

    /// The reader name announced to the host (default: the PC/SC reader's name, or
    /// "Virtual Reader" for an emulated card).
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,

    /// Hardware mode (no -c/-e/--card): relay the card of the first PC/SC reader whose name
    /// contains NAME (default: the first reader).
    #[arg(long, value_name = "NAME")]
    pub pcsc_reader: Option<String>,

    /// The emulated card's PIN (default 12345678).
    #[arg(long, value_name = "PIN", value_parser = secret_arg)]
    pub pin: Option<Zeroizing<String>>,

    /// Where vccid's default identities are kept (for --card emulated).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// TLS to the host (QEMU's `-chardev socket,...,tls-creds=ID` with `tls-creds-x509`, or
    /// `vccid --card passthru --tls`), with the certificates of QEMU's tls-creds-x509
    /// directory DIR: the host is verified against ca-cert.pem, and client-cert.pem /
    /// client-key.pem are presented.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,

    /// With --tls: the name to check in the host's certificate (default: HOST).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_hostname: Option<String>,

    /// Give up after this many seconds without a host (default: retry for ever).
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<u64>,

    /// The host: HOST PORT, HOST:PORT, or unix:PATH.
    #[arg(value_name = "HOST", required = true)]
    pub host: String,

    /// The port (omit for HOST:PORT or unix:PATH).
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
}

/// A secret argument, kept in a type that wipes it when dropped.
pub fn secret_arg(s: &str) -> Result<Zeroizing<String>, std::convert::Infallible> {
    Ok(Zeroizing::new(s.to_string()))
}
