//! The files a config names (`tls.cert`, `tls.key`, `jwt.public_key`),
//! each read once: [`Files`] keeps what it read under the path it read it
//! from. `Config::load` reads through one and leaves it in the config it
//! returns, so the server builds from those bytes at bind instead of
//! reading the files a second time (docs/embedding.md, "When the files
//! are read").
//!
//! A leaf: reads files and touches nothing else in the crate. Below
//! `config`, which carries a [`Files`], and below `tls` and `jwt`, which
//! read through one.

use std::fmt;
use std::io;
use std::sync::Arc;

/// What [`Config::load`](crate::Config::load) read of the files its
/// config names (`tls.cert`, `tls.key`, `jwt.public_key`), kept so that
/// [`Server::bind`](crate::Server::bind) and
/// [`Server::from_listener`](crate::Server::from_listener) build from the
/// same bytes instead of reading the files again.
///
/// Empty by default: a [`Config`](crate::Config) made in code or by
/// [`Config::from_yaml_str`](crate::Config::from_yaml_str) has its files
/// read at bind. The contents are kept by path, so a path changed after
/// the load names a file that is read at bind too. `Debug` shows the
/// paths, never the contents (one is a private key); every `Files` equals
/// every other, see the `PartialEq` impl.
#[derive(Clone, Default)]
pub struct Files {
    /// Each file read, under the path as the config spells it; a handful
    /// at most, so a list.
    read: Vec<(String, Arc<[u8]>)>,
}

impl Files {
    /// The contents of `path`: what this set read before, else the file,
    /// read now and kept.
    pub(crate) fn read(&mut self, path: &str) -> io::Result<Arc<[u8]>> {
        if let Some((_, contents)) = self.read.iter().find(|(read, _)| read == path) {
            return Ok(contents.clone());
        }
        let contents: Arc<[u8]> = std::fs::read(path)?.into();
        self.read.push((path.to_owned(), contents.clone()));
        Ok(contents)
    }
}

/// A config's files are a cache of what its settings name, not a setting:
/// two configs with the same settings are the same configuration whether
/// or not one of them was loaded from a file (a loaded config equals the
/// same text given to `Config::from_yaml_str`, which reads nothing). So
/// every `Files` compares equal, and `Config`'s derived `==` still
/// compares settings only.
impl PartialEq for Files {
    fn eq(&self, _: &Files) -> bool {
        true
    }
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.read.iter().map(|(path, _)| path))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> String {
        let path = std::env::temp_dir().join(format!("wshub-files-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn a_file_is_read_once_then_served_from_memory() {
        let path = temp_file("once", "first");
        let mut files = Files::default();
        assert_eq!(files.read(&path).ok().as_deref(), Some(&b"first"[..]));
        std::fs::write(&path, "second").expect("rewrite");
        let copy = files.clone();
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(files.read(&path).ok().as_deref(), Some(&b"first"[..]));
        assert_eq!(
            copy.clone().read(&path).ok().as_deref(),
            Some(&b"first"[..]),
            "clones keep the contents"
        );
        let fresh = Files::default().read(&path).map_err(|e| e.kind());
        assert_eq!(fresh, Err(io::ErrorKind::NotFound), "an empty set reads");
    }

    #[test]
    fn other_paths_are_read_and_errors_are_not_kept() {
        let path = temp_file("other", "a");
        let missing = format!("{path}.missing");
        let mut files = Files::default();
        assert!(files.read(&missing).is_err());
        std::fs::write(&missing, "late").expect("write");
        assert_eq!(files.read(&missing).ok().as_deref(), Some(&b"late"[..]));
        assert_eq!(files.read(&path).ok().as_deref(), Some(&b"a"[..]));
        for file in [&path, &missing] {
            std::fs::remove_file(file).expect("remove");
        }
    }

    #[test]
    fn debug_shows_paths_not_contents_and_all_compare_equal() {
        let path = temp_file("debug", "-----BEGIN PRIVATE KEY-----");
        let mut files = Files::default();
        files.read(&path).expect("read");
        std::fs::remove_file(&path).expect("remove");
        let shown = format!("{files:?}");
        assert!(shown.contains(&path), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert_eq!(files, Files::default());
    }
}
