//! Writes the man pages and shell completions the Debian package ships (issue #16), made from
//! the programs' own clap definitions (`vccid::cli`), so that they cannot drift from what the
//! programs parse:
//!
//!     cargo run -p vccid --example dist -- OUTDIR
//!
//! OUTDIR/man/: vccid(1), one page per subcommand (vccid-serve(1), vccid-ctl(1),
//! vccid-ctl-card-add(1), ...), vscclient(1); OUTDIR/completions/: bash (`vccid`, `vscclient`), zsh (`_vccid`, ...) and fish
//! (`vccid.fish`, ...). `scripts/deb.sh` runs it before `cargo deb`; vccid.toml(5) is written
//! by hand (`crates/vccid/debian/vccid.toml.5`).

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/release/dist".into());
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    let mut vccid = vccid::cli::Args::command();
    let mut vscclient = vccid::cli::VscclientArgs::command();

    // One page per command and subcommand, git-style (vccid-ctl-card-add(1), ...): each
    // page's SUBCOMMANDS section names the pages below it.
    for cmd in [&vccid, &vscclient] {
        let mut cmd = without_help(cmd.clone());
        cmd.build();
        clap_mangen::generate_to(cmd, &man)?;
    }

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        for cmd in [&mut vccid, &mut vscclient] {
            let name = cmd.get_name().to_string();
            clap_complete::generate_to(shell, cmd, &name, &completions)?;
        }
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}

/// The command tree without clap's `help` subcommands: `vccid help ctl` is `man vccid-ctl`
/// here, and a page per `help` path would only repeat the others.
fn without_help(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.disable_help_subcommand(true);
    for n in names.iter().filter(|n| *n != "help") {
        cmd = cmd.mut_subcommand(n, without_help);
    }
    cmd
}
