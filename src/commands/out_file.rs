//! What `--out` creates for `export-links` and `scripts`: a new file or directory that only its
//! owner can read, never one that exists.

use std::fs::File;
use std::path::Path;

use crate::exit::ExitError;

/// Creates the file `path` for writing, owner-only (0600 on Unix), refusing one that exists.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Creates the directory `dir`, owner-only (0700 on Unix), refusing one that exists.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Why `--out PATH` could not be created: a usage error when it exists (`exists` says so and
/// what the command never does), else the I/O error.
pub fn refused(path: &Path, e: std::io::Error, exists: &str) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        ExitError::usage(format!(
            "--out {}: {exists} (choose a new name)",
            path.display()
        ))
        .into()
    } else {
        anyhow::anyhow!("--out {}: cannot create: {e}", path.display())
    }
}

/// The permission bits of `path` (tests of the modes above).
#[cfg(all(test, unix))]
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
