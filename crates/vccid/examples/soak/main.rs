//! The soak (issue #17, `scripts/soak.sh`): `vccid serve` with 64 readers under a steady mixed
//! load from mock USB hosts for `SOAK_SECONDS` (1800 by default); what it does is in
//! `driver.rs`, which `tests/soak.rs` runs for two minutes.
//!
//! usage: soak VCCID DIR
//!
//! Writes a CSV line per interval to standard output as it comes (`DIR/soak.csv` too), the
//! errors as they happen to standard error, and the summary as JSON to `DIR/summary.json` and
//! standard error. Exit status 1 if there was any error. Settings: the environment variables
//! of [`driver::Options::from_env`].

mod driver;

use std::io::Write;
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(vccid), Some(dir), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: soak VCCID DIR");
        std::process::exit(2);
    };
    let o = driver::Options::from_env(PathBuf::from(vccid), PathBuf::from(dir), 1800.0);
    eprintln!(
        "soak: {} readers for {} s, a cycle every {:?} per host, samples every {} s",
        o.readers, o.seconds, o.cycle, o.interval
    );
    std::fs::create_dir_all(&o.dir).expect("the work directory");
    let csv_path = o.dir.join("soak.csv");
    let mut csv = std::fs::File::create(&csv_path).expect("soak.csv");
    println!("{}", driver::Sample::CSV_HEADER);
    writeln!(csv, "{}", driver::Sample::CSV_HEADER).expect("soak.csv");
    let summary = driver::run(&o, |s| {
        println!("{}", s.csv());
        let _ = writeln!(csv, "{}", s.csv());
        let _ = std::io::stdout().flush();
    })
    .unwrap_or_else(|e| {
        eprintln!("soak: {e}");
        std::process::exit(2);
    });
    let json = summary.json();
    std::fs::write(o.dir.join("summary.json"), format!("{json:#}\n")).expect("summary.json");
    eprintln!("soak: {json:#}");
    if summary.error_count() > 0 {
        std::process::exit(1);
    }
}
