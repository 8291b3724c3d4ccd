//! Variable expansion of typed instructions: which fields of each instruction Docker expands
//! (the table in [`super`]'s documentation), with the environment the builder passes for
//! each instruction.

use super::run::{csv_fields, csv_join};
use super::*;

/// Expands words with one environment snapshot, reporting errors at the word's position.
pub struct Expander<'a> {
    file: &'a str,
    lex: Lex,
    env: &'a dyn Env,
}

impl<'a> Expander<'a> {
    /// An expander for `file` with its escape character over `env`.
    pub fn new(file: &'a str, escape: char, env: &'a dyn Env) -> Expander<'a> {
        Expander {
            file,
            lex: Lex::new(escape),
            env,
        }
    }

    fn fail(
        &self,
        pos: Position,
        e: crate::build::dockerfile::shell::ExpandError,
    ) -> DockerfileError {
        DockerfileError::new(self.file, pos, ErrorKind::Expand(e))
    }

    /// Expands one word (quotes removed, no splitting).
    pub fn word(&self, w: &Word) -> Result<Word, DockerfileError> {
        let value = self
            .lex
            .process_word(&w.value, self.env)
            .map_err(|e| self.fail(w.pos, e))?;
        Ok(Word { value, pos: w.pos })
    }

    /// Expands one word and splits it into words (EXPOSE).
    pub fn words(&self, w: &Word) -> Result<Vec<Word>, DockerfileError> {
        let v = self
            .lex
            .process_words(&w.value, self.env)
            .map_err(|e| self.fail(w.pos, e))?;
        Ok(v.into_iter()
            .map(|value| Word { value, pos: w.pos })
            .collect())
    }

    /// Expands a heredoc body: variables only, quotes are ordinary characters.
    pub fn heredoc(&self, content: &str, pos: Position) -> Result<String, DockerfileError> {
        let mut lex = Lex::new('\\');
        lex.skip_process_quotes = true;
        lex.process_word(content, self.env)
            .map_err(|e| self.fail(pos, e))
    }

    fn opt(&self, w: &mut Option<Word>) -> Result<(), DockerfileError> {
        if let Some(x) = w {
            *x = self.word(x)?;
        }
        Ok(())
    }

    fn all(&self, ws: &mut [Word]) -> Result<(), DockerfileError> {
        for w in ws {
            *w = self.word(w)?;
        }
        Ok(())
    }

    fn inline(&self, srcs: &mut [InlineSource], pos: Position) -> Result<(), DockerfileError> {
        for s in srcs.iter_mut().filter(|s| s.expand) {
            s.content = self.heredoc(&s.content, pos)?;
        }
        Ok(())
    }
}

impl Instruction {
    /// A copy with every field Docker expands expanded with `ex` (see the module docs for the
    /// list). Call it with the environment in force *before* this instruction.
    pub fn expand(&self, ex: &Expander<'_>) -> Result<Instruction, DockerfileError> {
        let mut out = self.clone();
        let pos = self.span.start;
        match &mut out.command {
            Command::Arg(defs) => {
                for d in defs {
                    ex.opt(&mut d.default)?;
                }
            }
            Command::Env(kvs) | Command::Label(kvs) => {
                for kv in kvs {
                    kv.key = ex.word(&kv.key)?;
                    kv.value = ex.word(&kv.value)?;
                }
            }
            Command::Workdir(w) | Command::User(w) | Command::StopSignal(w) => *w = ex.word(w)?,
            Command::Volume(v) => ex.all(v)?,
            Command::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports.iter() {
                    out.extend(ex.words(p)?);
                }
                *ports = out;
            }
            Command::Copy(c) => {
                ex.all(&mut c.sources)?;
                c.dest = ex.word(&c.dest)?;
                ex.opt(&mut c.chown)?;
                ex.opt(&mut c.chmod)?;
                ex.inline(&mut c.inline, pos)?;
            }
            Command::Add(a) => {
                ex.all(&mut a.sources)?;
                a.dest = ex.word(&a.dest)?;
                ex.opt(&mut a.chown)?;
                ex.opt(&mut a.chmod)?;
                ex.opt(&mut a.checksum)?;
                ex.inline(&mut a.inline, pos)?;
            }
            Command::Run(r) => {
                for m in &mut r.mounts {
                    let mut fields = csv_fields(&m.value);
                    for f in &mut fields {
                        if let Some((k, v)) = f.split_once('=') {
                            let v = ex.word(&Word {
                                value: v.to_string(),
                                pos: m.pos,
                            })?;
                            *f = format!("{k}={}", v.value);
                        }
                    }
                    m.value = csv_join(&fields);
                }
            }
            Command::Maintainer(_)
            | Command::Cmd(_)
            | Command::Entrypoint(_)
            | Command::Shell(_)
            | Command::Healthcheck(_)
            | Command::OnBuild(_) => {}
        }
        Ok(out)
    }
}

impl Stage {
    /// The base image name and platform, expanded with the meta args (`env` should hold only
    /// the ARGs before the first FROM, with build-arg overrides). An empty base is an error.
    pub fn expand_base(
        &self,
        ex: &Expander<'_>,
    ) -> Result<(String, Option<String>), DockerfileError> {
        let base = ex.word(&self.base)?;
        if base.value.is_empty() {
            return Err(DockerfileError::new(
                ex.file,
                self.base.pos,
                ErrorKind::BadArguments(format!(
                    "base name (`{}`) should not be blank",
                    self.base.value
                )),
            ));
        }
        let platform = match &self.platform {
            Some(p) => Some(ex.word(p)?.value),
            None => None,
        };
        Ok((base.value, platform))
    }
}
