//! `/etc/kituo/appliance.ini`: the supervisor's own settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::ini::{ConfigError, Document, Key, Schema, Section};

pub const SCHEMA: Schema = &[
    Section {
        name: "site",
        help: "Which center this appliance serves (written by the image builder from the center config).",
        free_keys: false,
        keys: &[
            Key::required("center_id", "the center's short identifier"),
            Key::optional("center_name", "", "the center's name, shown on the status page"),
            Key::required("site_id", "the site number, 1 to 255"),
        ],
    },
    Section {
        name: "status",
        help: "The status page and its JSON API.",
        free_keys: false,
        keys: &[
            Key::optional("listen", "127.0.0.1:8080", "address the status server listens on (nginx proxies it)"),
            Key::optional(
                "build_info",
                "/etc/kituo/build.ini",
                "file the image builder writes with the build's identity",
            ),
        ],
    },
];

#[derive(Debug, Clone)]
pub struct Config {
    pub center_id: String,
    pub center_name: String,
    pub site_id: u8,
    pub listen: SocketAddr,
    pub build_info: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let doc = Document::load(path, SCHEMA)?;
        Ok(Config {
            center_id: doc.get("site", "center_id").to_owned(),
            center_name: doc.get("site", "center_name").to_owned(),
            site_id: doc.int_in("site", "site_id", 1..=255)? as u8,
            listen: doc.parse_as("status", "listen", "an address:port like 127.0.0.1:8080")?,
            build_info: doc.get("status", "build_info").into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_listen_address_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.ini");
        std::fs::write(
            &path,
            "[site]\ncenter_id = x\nsite_id = 2\n[status]\nlisten = localhost\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(
            e.to_string().contains("key 'listen' in section [status]"),
            "{e}"
        );
    }
}
