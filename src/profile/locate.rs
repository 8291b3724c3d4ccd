//! Where a key path (`services.core.privileged`, `services.core.volumes[1]`) was written in a
//! YAML file, as `LINE:COL` (both 1-based, compose's and editors' convention), so that an error
//! can say `stack.yaml:12:5: …`.
//!
//! The parsed tree (`serde_yaml_ng::Value`) carries no positions, so the text is scanned again
//! for the block structure people write compose files in: `key:` lines by indentation and
//! `- ` items by position. Flow collections (`{ a: 1 }`, `[a, b]`), keys that came in through
//! a `<<` merge and other shapes the scan does not follow give the position of the nearest
//! enclosing key it found instead: a pointer into the right neighbourhood, never a wrong file.

/// The positions of every block-style key and list item of `text`, by key path.
pub(crate) struct Positions {
    entries: Vec<(String, usize, usize)>,
}

struct Frame {
    indent: usize,
    path: String,
    is_item: bool,
    items: usize,
}

impl Positions {
    /// Scans `text`.
    pub fn scan(text: &str) -> Positions {
        let mut entries = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        // Inside a block scalar (`|`, `>`): lines indented deeper than this are its text.
        let mut block_at: Option<usize> = None;
        let mut root_items = 0usize;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            let body = &raw[indent..];
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            if let Some(b) = block_at {
                if indent > b {
                    continue;
                }
                block_at = None;
            }
            if indent == 0 && (body.starts_with("---") || body.starts_with("...")) {
                stack.clear();
                continue;
            }
            let mut col = indent;
            let mut rest = body;
            while rest == "-" || rest.starts_with("- ") {
                while stack
                    .last()
                    .is_some_and(|f| f.indent > col || (f.indent == col && f.is_item))
                {
                    stack.pop();
                }
                let idx = match stack.last_mut() {
                    Some(f) => {
                        f.items += 1;
                        f.items - 1
                    }
                    None => {
                        root_items += 1;
                        root_items - 1
                    }
                };
                let parent = stack.last().map(|f| f.path.as_str()).unwrap_or("");
                let path = format!("{parent}[{idx}]");
                entries.push((path.clone(), line, col + 1));
                stack.push(Frame {
                    indent: col,
                    path,
                    is_item: true,
                    items: 0,
                });
                let after = &rest[1..];
                let skip = after.len() - after.trim_start_matches(' ').len();
                col += 1 + skip;
                rest = &after[skip..];
            }
            let Some((key, value)) = split_key(rest) else {
                continue;
            };
            while stack.last().is_some_and(|f| f.indent >= col) {
                stack.pop();
            }
            let parent = stack.last().map(|f| f.path.as_str()).unwrap_or("");
            let path = super::yaml::join(parent, &key);
            entries.push((path.clone(), line, col + 1));
            let v = value.trim_start();
            if v.starts_with('|') || v.starts_with('>') {
                block_at = Some(col);
            }
            stack.push(Frame {
                indent: col,
                path,
                is_item: false,
                items: 0,
            });
        }
        Positions { entries }
    }

    /// `LINE:COL` of `path`, else of its nearest enclosing key or item that was found.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path.to_string();
        loop {
            if let Some((_, l, c)) = self.entries.iter().find(|(k, _, _)| *k == p) {
                return Some((*l, *c));
            }
            let cut = if p.ends_with(']') {
                p.rfind('[')
            } else {
                p.rfind('.')
            }?;
            p.truncate(cut);
            if p.is_empty() {
                return None;
            }
        }
    }
}

/// `key: value` or `key:` at the start of `s`: the key (unquoted) and what follows the colon.
fn split_key(s: &str) -> Option<(String, &str)> {
    if let Some(q) = s.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = s[1..].find(q)? + 1;
        let after = s[end + 1..].trim_start_matches(' ');
        let value = after.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with(' ')) {
            return None;
        }
        return Some((s[1..end].to_string(), value));
    }
    if s.starts_with(['{', '[', '&', '*', '!', '|', '>', '%', '@', '`']) {
        return None;
    }
    let mut from = 0;
    loop {
        let i = from + s[from..].find(':')?;
        let after = &s[i + 1..];
        if after.is_empty() || after.starts_with(' ') {
            let key = s[..i].trim_end();
            if key.contains(" #") {
                return None;
            }
            return Some((key.to_string(), after));
        }
        from = i + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_items_by_path() {
        let text = "\
version: '3.2'
services:
  # a comment
  core:
    image: x
    command: |
      not: a key
    volumes:
      - /data:/data
      - logs:/logs
    x-duckiebot: { stage: 1 }
  \"quoted.name\":
    ports:
    - \"80:80\"
    - target: 80
      published: 8080
list:
  - - a
    - b
";
        let p = Positions::scan(text);
        assert_eq!(p.find("services"), Some((2, 1)));
        assert_eq!(p.find("services.core.image"), Some((5, 5)));
        assert_eq!(p.find("services.core.volumes[1]"), Some((10, 7)));
        assert_eq!(p.find("services.core.x-duckiebot.stage"), Some((11, 5)));
        assert_eq!(p.find("services.core.command"), Some((6, 5)));
        assert_eq!(p.find("services.core.not"), Some((4, 3)));
        assert_eq!(p.find("services.quoted.name.ports[0]"), Some((14, 5)));
        assert_eq!(
            p.find("services.quoted.name.ports[1].published"),
            Some((16, 7))
        );
        assert_eq!(p.find("list[0][1]"), Some((19, 5)));
        assert_eq!(p.find("nothing"), None);
    }
}
