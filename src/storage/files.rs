//! Files at rest are the owner's alone, whatever the umask: data directories 0700, backups and
//! keys 0600. A umask can only take permissions away, so the mode is also set after creation, and
//! a directory or file that exists already is tightened.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a directory holding a node's data.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of a file holding cluster data or a secret.
pub const PRIVATE_FILE: u32 = 0o600;

/// Create `dir` (and missing parents) and make it (only the last one) owner-only.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR))
}

/// Create (or truncate) `path` for writing, owner-only.
pub fn private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    // An existing file keeps its mode through `open`.
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE))?;
    Ok(file)
}

/// Refuse a secret file that anyone but its owner may read or write (as ssh does a private key).
pub fn check_private(path: &Path, what: &str) -> Result<(), String> {
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} is open to others (mode {:o}): it must be readable by its owner only; \
             run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_whatever_the_umask_and_tightened_when_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        // Created open (as by a umask of 000), then made private.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, Permissions::from_mode(0o777)).unwrap();
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let nested = dir.path().join("a/b/c");
        private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);

        let file = dir.path().join("backup.wbak");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o666)).unwrap();
        drop(private_file(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"", "truncated");
    }

    #[test]
    fn a_secret_open_to_others_is_refused_saying_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cluster-signing.key");
        drop(private_file(&key).unwrap());
        assert_eq!(check_private(&key, "signing key"), Ok(()));
        for open in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, Permissions::from_mode(open)).unwrap();
            let e = check_private(&key, "signing key").unwrap_err();
            assert!(e.contains(&format!("mode {open:o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
        }
        let e = check_private(&dir.path().join("missing"), "signing key").unwrap_err();
        assert!(e.contains("cannot read signing key"), "{e}");
    }
}
