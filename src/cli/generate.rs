//! `meterd completions SHELL` and `meterd manpages DIR`: shell completions and man pages generated
//! from the command line's own clap definition, so they cannot drift from it. scripts/package.sh
//! runs the built binary to put them in the .deb and .rpm.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub use clap_complete::Shell;

/// Writes the completion script for `shell` (bash, zsh, fish, elvish, powershell).
pub fn completions(mut command: clap::Command, shell: Shell, out: &mut dyn Write) -> ExitCode {
    let name = command.get_name().to_string();
    // Rendered first: clap_complete panics on a failed write (a closed pipe, say).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meterd: cannot write the completion script: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `meterd.1` and one page per visible subcommand (`meterd-status.1`, `meterd-dlq-retry.1`,
/// ...) into `dir`, creating it, and prints each file's path.
pub fn manpages(command: clap::Command, dir: &Path) -> ExitCode {
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(command, dir)).and_then(|()| {
            std::fs::read_dir(dir)?.map(|entry| Ok(entry?.path())).collect::<std::io::Result<Vec<_>>>()
        });
    match written {
        Ok(mut pages) => {
            pages.retain(|page| page.extension().is_some_and(|e| e == "1"));
            pages.sort();
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("meterd: cannot write man pages to {}: {err}", dir.display());
            ExitCode::FAILURE
        }
    }
}
