//! Progress renderers: indicatif bars on a terminal, plain lines or JSON lines on stderr.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{GlobalArgs, ProgressMode, human_size, use_bars};
use crate::progress::{Event, Reporter, Silent};

/// The reporter for these flags.
pub fn reporter(g: &GlobalArgs) -> Arc<dyn Reporter> {
    if g.quiet {
        return Arc::new(Silent);
    }
    if g.progress == ProgressMode::Json {
        return Arc::new(JsonLines);
    }
    #[cfg(feature = "workstation")]
    if use_bars(g.progress) {
        return Arc::new(bars::Bars::new());
    }
    let _ = use_bars;
    Arc::new(Plain::default())
}

/// One line per started and finished unit.
#[derive(Default)]
struct Plain {
    labels: Mutex<HashMap<String, String>>,
}

impl Reporter for Plain {
    fn event(&self, e: Event) {
        match e {
            Event::Start { id, label, total } => {
                match total {
                    Some(t) => eprintln!("{label} ({})", human_size(t)),
                    None => eprintln!("{label}"),
                }
                self.labels.lock().expect("not poisoned").insert(id, label);
            }
            Event::Advance { .. } => {}
            Event::Finish { id, outcome } => {
                let label = self.labels.lock().expect("not poisoned").remove(&id);
                eprintln!("{}: {outcome}", label.unwrap_or(id));
            }
            Event::Status { id, message } => {
                // A phase per line: worth a line in a log, and rare (not per chunk).
                eprintln!("{message}");
                self.labels
                    .lock()
                    .expect("not poisoned")
                    .insert(id, message);
            }
            Event::Note { message } => eprintln!("{message}"),
        }
    }
}

/// `--progress json`: one event per line.
struct JsonLines;

impl Reporter for JsonLines {
    fn event(&self, e: Event) {
        eprintln!("{}", serde_json::to_string(&e).expect("events serialise"));
    }
}

#[cfg(feature = "workstation")]
mod bars {
    use super::*;
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

    pub struct Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    }

    impl Bars {
        pub fn new() -> Bars {
            Bars {
                multi: MultiProgress::new(),
                bars: Mutex::new(HashMap::new()),
            }
        }
    }

    impl Reporter for Bars {
        fn event(&self, e: Event) {
            let mut bars = self.bars.lock().expect("not poisoned");
            match e {
                Event::Start { id, label, total } => {
                    let bar = match total {
                        Some(t) => ProgressBar::new(t).with_style(
                            ProgressStyle::with_template(
                                "{msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                            )
                            .expect("template is valid")
                            .progress_chars("=> "),
                        ),
                        None => ProgressBar::new_spinner().with_style(
                            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                                .expect("template is valid"),
                        ),
                    };
                    let bar = self.multi.add(bar.with_message(label));
                    bars.insert(id, bar);
                }
                Event::Advance { id, done } => {
                    if let Some(b) = bars.get(&id) {
                        b.set_position(done);
                    }
                }
                Event::Finish { id, outcome } => {
                    if let Some(b) = bars.remove(&id) {
                        let msg = format!("{}: {outcome}", b.message());
                        // A finished line keeps only its message (no spinner, no live clock).
                        b.set_style(
                            ProgressStyle::with_template("  {msg}").expect("template is valid"),
                        );
                        b.finish_with_message(msg);
                    }
                }
                Event::Status { id, message } => {
                    if let Some(b) = bars.get(&id) {
                        // A robot's line: its phase, the bytes so far, its time.
                        if b.length().is_none() {
                            b.set_style(
                                ProgressStyle::with_template(
                                    "{spinner} {msg:48!} {bytes:>10} {elapsed:>4}",
                                )
                                .expect("template is valid"),
                            );
                            b.enable_steady_tick(std::time::Duration::from_millis(200));
                        }
                        b.set_message(message);
                    }
                }
                Event::Note { message } => {
                    let _ = self.multi.println(message);
                }
            }
        }
    }
}
