//! The order blobs move in: small before bulk, then what `[files] first` names (course content), then the
//! rest, then what `[files] last` names (media), smallest first within each; bulk files also wait for
//! the bulk window.

use anyhow::{bail, Result};

/// What a blob's `files` rows say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub component: String,
    pub filearea: String,
    pub mimetype: String,
}

/// One pattern: `component/filearea` (either side may be `*`, or end in `*`) or `mime:type/sub`
/// (likewise).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Area { component: String, filearea: String },
    Mime(String),
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern> {
        if let Some(mime) = text.strip_prefix("mime:") {
            if mime.is_empty() || mime[..mime.len() - 1].contains('*') {
                bail!("'{text}': expected mime:type/subtype, '*' only at the end");
            }
            return Ok(Pattern::Mime(mime.to_owned()));
        }
        let Some((component, filearea)) = text.split_once('/') else {
            bail!(
                "'{text}': expected component/filearea (e.g. mod_resource/content) or mime:video/*"
            );
        };
        for part in [component, filearea] {
            if part.is_empty() || part[..part.len() - 1].contains('*') {
                bail!("'{text}': '*' may only end a component or a file area");
            }
        }
        Ok(Pattern::Area {
            component: component.to_owned(),
            filearea: filearea.to_owned(),
        })
    }

    fn matches(&self, m: &Meta) -> bool {
        match self {
            Pattern::Area {
                component,
                filearea,
            } => glob(component, &m.component) && glob(filearea, &m.filearea),
            Pattern::Mime(mime) => glob(mime, &m.mimetype),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    first: Vec<Pattern>,
    last: Vec<Pattern>,
    /// Blobs larger than this are bulk.
    pub bulk_bytes: u64,
}

/// A blob's place in the queue: lower goes first.
pub type Rank = (bool, u8, usize, u64);

impl Order {
    pub fn new(first: &[String], last: &[String], bulk_bytes: u64) -> Result<Order> {
        let parse = |list: &[String]| -> Result<Vec<Pattern>> {
            list.iter().map(|p| Pattern::parse(p)).collect()
        };
        Ok(Order {
            first: parse(first)?,
            last: parse(last)?,
            bulk_bytes,
        })
    }

    pub fn is_bulk(&self, size: u64) -> bool {
        size > self.bulk_bytes
    }

    /// Sort key: bulk or not, then the group (a `last` match wins over a `first` one: a lecture video
    /// is course content but still heavy), the pattern's position, the size.
    pub fn rank(&self, meta: &Meta, size: u64) -> Rank {
        let find = |list: &[Pattern]| list.iter().position(|p| p.matches(meta));
        let (group, at) = match (find(&self.last), find(&self.first)) {
            (Some(i), _) => (2, i),
            (None, Some(i)) => (0, i),
            (None, None) => (1, 0),
        };
        (self.is_bulk(size), group, at, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(component: &str, filearea: &str, mimetype: &str) -> Meta {
        Meta {
            component: component.into(),
            filearea: filearea.into(),
            mimetype: mimetype.into(),
        }
    }

    #[test]
    fn course_content_first_media_last_bulk_after_everything() {
        let list = |s: &str| {
            s.split(',')
                .map(|p| p.trim().to_owned())
                .collect::<Vec<_>>()
        };
        let order = Order::new(
            &list("course/*, mod_resource/content, mod_folder/*"),
            &list("mime:video/*, mime:audio/*"),
            1000,
        )
        .unwrap();
        let mut files = [
            (
                "video",
                order.rank(&meta("mod_resource", "content", "video/mp4"), 900),
            ),
            (
                "forum",
                order.rank(&meta("mod_forum", "attachment", "image/png"), 10),
            ),
            (
                "folder",
                order.rank(&meta("mod_folder", "content", "application/pdf"), 50),
            ),
            (
                "slides",
                order.rank(&meta("mod_resource", "content", "application/pdf"), 800),
            ),
            (
                "big",
                order.rank(&meta("course", "overviewfiles", "image/png"), 5000),
            ),
            (
                "summary",
                order.rank(&meta("course", "summary", "image/png"), 600),
            ),
        ];
        files.sort_by_key(|f| f.1);
        let names: Vec<_> = files.iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            ["summary", "slides", "folder", "forum", "video", "big"]
        );
        assert!(Order::new(&list("mod_*x/content"), &[], 1).is_err());
        assert!(Order::new(&list("nofilearea"), &[], 1).is_err());
    }
}
