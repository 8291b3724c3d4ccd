//! The one table renderer behind every table `dts` and `dt-agent` print (`image ls`, `ps`,
//! `history`, `volume ls`, `fleet discover`, the deploy and provision plans): column widths
//! come from the content, measured in terminal cells (so `é` or `机器人` line up), and long
//! values are shortened with `…` the way Docker shortens them — but only when stdout is a
//! terminal whose width we know and the table does not fit. A table going to a pipe or a file
//! is never shortened: scripts get every character (and `--json` never comes here).
//!
//! It owns layout only: which columns a table has and what goes in the cells is the caller's.
//!
//! Why our own and not `comfy-table` or `tabled`: our tables are Docker's plain layout (no
//! borders, columns three spaces apart, numbers right-aligned, no trailing blanks), plus the
//! Duckietown shell's `a | b` layout for `fleet discover`, and both are ~100 lines here.
//! `comfy-table` wraps long cells onto more lines where Docker shortens them, and finds the
//! terminal width through crossterm; `tabled` would bring papergrid and its derive machinery
//! into `dt-agent`, which is cross-compiled small for the robots. Cell widths come from the
//! `unicode-width` crate.

use std::io::IsTerminal;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Docker's gap between columns (its tabwriter's padding).
const GAP: &str = "   ";
/// A shortened column keeps at least this many cells (or its header's width, if wider): a
/// shorter stub says nothing, and the line may then overflow a very narrow terminal instead.
const MIN_SHRUNK: usize = 8;

/// How a column's cells sit in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers and sizes.
    Right,
}

/// How the table looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Docker's: columns three spaces apart, upper-case headers as given, no rule.
    Plain,
    /// The Duckietown shell's (`dts fleet discover`): ` | ` between columns, headers centred,
    /// a `-|-` rule under them.
    Ruled,
    /// No header line at all (plans printed one step per line).
    Headless,
}

/// A table: headers, alignments, rows of cells.
#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
    style: Style,
}

impl Table {
    /// A [`Style::Plain`] table with these headers, every column left-aligned.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            align: vec![Align::Left; headers.len()],
            rows: Vec::new(),
            style: Style::Plain,
        }
    }

    /// The same table drawn in `style`.
    pub fn style(mut self, style: Style) -> Table {
        self.style = style;
        self
    }

    /// Column `col` (from 0) right-aligned.
    pub fn right(mut self, col: usize) -> Table {
        self.align[col] = Align::Right;
        self
    }

    /// Adds a row; missing cells are empty, extra cells are a bug in the caller.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        debug_assert!(cells.len() <= self.headers.len(), "{cells:?}");
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The rows added so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines: the header (and rule) first, then one line per row in order. With
    /// `width`, the widest columns are shortened (`…`) until a line fits, as far as
    /// [`MIN_SHRUNK`] allows; without, nothing is shortened.
    pub fn render(&self, width: Option<usize>) -> Vec<String> {
        let headed = self.style != Style::Headless;
        let mut widths: Vec<usize> = if headed {
            self.headers.iter().map(|h| h.width()).collect()
        } else {
            vec![0; self.headers.len()]
        };
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.width());
            }
        }
        let sep = match self.style {
            Style::Ruled => " | ",
            Style::Plain | Style::Headless => GAP,
        };
        if let Some(limit) = width {
            shrink(&mut widths, &self.headers, sep.len(), limit);
        }
        let mut out = Vec::with_capacity(self.rows.len() + 2);
        if headed {
            let centre = self.style == Style::Ruled;
            out.push(self.line(&self.headers, &widths, sep, centre));
        }
        if self.style == Style::Ruled {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push(rule.join("-|-"));
        }
        for row in &self.rows {
            out.push(self.line(row, &widths, sep, false));
        }
        out
    }

    fn line(&self, cells: &[String], widths: &[usize], sep: &str, centre: bool) -> String {
        let last = cells.len().saturating_sub(1);
        let mut parts = Vec::with_capacity(cells.len());
        for (i, (cell, &w)) in cells.iter().zip(widths).enumerate() {
            let text = fit(cell, w);
            let pad = w - text.width();
            let (before, after) = if centre {
                (pad / 2, pad - pad / 2)
            } else if self.align[i] == Align::Right {
                (pad, 0)
            } else {
                (0, pad)
            };
            // The last column is not padded out: no trailing blanks for `grep`/`cut` to trip on.
            let after = if i == last { 0 } else { after };
            parts.push(format!("{}{text}{}", " ".repeat(before), " ".repeat(after)));
        }
        parts.join(sep).trim_end().to_string()
    }
}

/// Narrows the widest columns, one cell at a time, until the line fits in `limit` or every
/// column is at its floor (its header, or [`MIN_SHRUNK`]).
fn shrink(widths: &mut [usize], headers: &[String], sep: usize, limit: usize) {
    let total = |w: &[usize]| w.iter().sum::<usize>() + sep * w.len().saturating_sub(1);
    let floor: Vec<usize> = headers.iter().map(|h| h.width().max(MIN_SHRUNK)).collect();
    while total(widths) > limit {
        let widest = (0..widths.len())
            .filter(|&i| widths[i] > floor[i])
            .max_by_key(|&i| (widths[i], std::cmp::Reverse(i)));
        match widest {
            Some(i) => widths[i] -= 1,
            None => break,
        }
    }
}

/// `s` if it fits in `w` cells, else its start and `…` in exactly `w` cells or fewer (a wide
/// character that would straddle the edge is left out).
pub fn fit(s: &str, w: usize) -> String {
    if s.width() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if used + cw > w - 1 {
            break;
        }
        out.push(c);
        used += cw;
    }
    out.push('…');
    out
}

/// The width of the terminal stdout is, or `None` when stdout is not a terminal (a pipe, a
/// file) or does not say: then tables are never shortened.
pub fn stdout_width() -> Option<usize> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    let ws = rustix::termios::tcgetwinsize(&out).ok()?;
    (ws.ws_col > 0).then_some(ws.ws_col as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The display column at which each header starts, found in `line`.
    fn starts(line: &str, headers: &[&str]) -> Vec<usize> {
        headers
            .iter()
            .map(|h| line[..line.find(h).unwrap()].width())
            .collect()
    }

    /// The display column of `cell` in `line`.
    fn col(line: &str, cell: &str) -> usize {
        line[..line
            .find(cell)
            .unwrap_or_else(|| panic!("{cell} in {line}"))]
            .width()
    }

    #[test]
    fn a_long_name_widens_its_column_and_keeps_the_others_in_line() {
        let long = "duckietown/dt-duckiebot-interface:daffy-arm64v8";
        let mut t = Table::new(&["NAME", "IMAGE", "STATE", "PID"]).right(3);
        t.row(["interface", long, "running", "4242"]);
        t.row(["core", "busybox", "exited(1)", "-"]);
        let lines = t.render(None);
        let at = starts(&lines[0], &["NAME", "IMAGE", "STATE"]);
        assert_eq!(col(&lines[1], long), at[1]);
        assert_eq!(col(&lines[2], "busybox"), at[1]);
        assert_eq!(col(&lines[1], "running"), at[2]);
        assert_eq!(col(&lines[2], "exited(1)"), at[2]);
        // Right-aligned: every line ends at the same column, none has trailing blanks.
        assert!(
            lines.iter().all(|l| l.width() == lines[0].width()),
            "{lines:#?}"
        );
        assert!(lines[2].ends_with("   -"), "{lines:#?}");
        assert_eq!(at[2] - at[1], long.len() + GAP.len());
    }

    #[test]
    fn wide_characters_count_as_two_cells() {
        let mut t = Table::new(&["NAME", "STACK"]);
        t.row(["机器人", "a"]);
        t.row(["café", "b"]);
        t.row(["x", "c"]);
        let lines = t.render(None);
        let at = col(&lines[0], "STACK");
        assert_eq!(at, 6 + GAP.len());
        for (l, cell) in lines[1..].iter().zip(["a", "b", "c"]) {
            assert_eq!(col(l, cell), at, "{lines:#?}");
        }
    }

    #[test]
    fn a_narrow_terminal_shortens_the_widest_column_with_an_ellipsis() {
        let long = "duckietown/dt-duckiebot-interface:daffy-arm64v8";
        let mut t = Table::new(&["NAME", "IMAGE", "STATE"]);
        t.row(["interface", long, "running"]);
        let lines = t.render(Some(40));
        assert!(lines.iter().all(|l| l.width() <= 40), "{lines:#?}");
        assert!(lines[1].contains("duckietown/dt-duc…"), "{lines:#?}");
        assert!(
            lines[1].contains('…') && lines[1].ends_with("running"),
            "{lines:#?}"
        );
        assert_eq!(col(&lines[1], "running"), col(&lines[0], "STATE"));
        // Short columns are left whole.
        assert!(lines[1].starts_with("interface   "), "{lines:#?}");
        // Wide enough: nothing shortened, the same as no width at all.
        assert_eq!(t.render(Some(200)), t.render(None));
        // Too narrow for anything: columns stop at their floor rather than vanish.
        let tiny = t.render(Some(5));
        assert!(tiny[1].contains("duckiet…"), "{tiny:#?}");
    }

    #[test]
    fn shortening_never_splits_a_wide_character() {
        assert_eq!(fit("机器人机器人", 6), "机器…");
        assert_eq!(fit("机器人机器人", 5), "机器…");
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcd", 3), "ab…");
        assert_eq!(fit("abcd", 0), "");
    }

    #[test]
    fn ruled_and_headless_styles() {
        let mut t = Table::new(&["", "Type", "Hostname"]).style(Style::Ruled);
        t.row(["alpha", "duckiebot", "alpha.local"]);
        let lines = t.render(None);
        assert_eq!(lines[0], "      |   Type    |  Hostname");
        assert_eq!(lines[1], "------|-----------|------------");
        assert_eq!(lines[2], "alpha | duckiebot | alpha.local");
        let mut h = Table::new(&["A", "B"]).style(Style::Headless);
        h.row(["ok", "x"]);
        h.row(["change", "y"]);
        assert_eq!(h.render(None), ["ok       x", "change   y"]);
        assert_eq!(h.len(), 2);
        assert!(!Table::new(&["A"]).render(None).is_empty());
    }
}
