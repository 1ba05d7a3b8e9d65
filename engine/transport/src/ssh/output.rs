//! A remote command's output: the channel's two byte streams split into
//! lines, masked, appended to the task log and forwarded, as the local
//! transport does with its pipes.

use std::io;
use std::path::Path;

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::mask::Masker;
use crate::{LogLine, Stream};

/// Longer lines are split: a program that writes without newlines must not
/// make drover buffer without bound.
const MAX_LINE: usize = 64 * 1024;

/// Splits one stream into lines (lossy UTF-8, without the newline or a `\r`
/// before it). Data comes in packets that cut lines anywhere.
#[derive(Debug)]
pub(super) struct Splitter {
    stream: Stream,
    partial: Vec<u8>,
    /// Whether pieces of the current line have been emitted already: its
    /// newline then ends it without adding an empty line.
    continued: bool,
}

impl Splitter {
    pub(super) fn new(stream: Stream) -> Splitter {
        Splitter {
            stream,
            partial: Vec::new(),
            continued: false,
        }
    }

    /// Adds `data` and appends every line it completes to `out`.
    pub(super) fn push(&mut self, mut data: &[u8], out: &mut Vec<LogLine>) {
        while let Some(newline) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(newline);
            self.partial.extend_from_slice(line);
            data = rest.get(1..).unwrap_or_default();
            self.split_long(out);
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !(line.is_empty() && self.continued) {
                out.push(self.line(&line));
            }
            self.continued = false;
        }
        self.partial.extend_from_slice(data);
        self.split_long(out);
    }

    /// The last line, if the stream did not end with a newline: it counts.
    pub(super) fn finish(&mut self, out: &mut Vec<LogLine>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            out.push(self.line(&line));
        }
    }

    /// Emits whole [`MAX_LINE`] pieces of the partial line, keeping the rest.
    fn split_long(&mut self, out: &mut Vec<LogLine>) {
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let piece = std::mem::replace(&mut self.partial, rest);
            out.push(self.line(&piece));
            self.continued = true;
        }
    }

    fn line(&self, bytes: &[u8]) -> LogLine {
        LogLine {
            stream: self.stream,
            line: String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

/// Where lines go: the task log and, if asked, the live view.
///
/// A failing log does not stop the command (the live view still gets the
/// lines); its first error is returned by [`Sink::finish`].
#[derive(Debug)]
pub(super) struct Sink {
    log: BufWriter<File>,
    lines: Option<mpsc::UnboundedSender<LogLine>>,
    mask: Masker,
    failed: Option<io::Error>,
}

impl Sink {
    /// Opens (creates, appends to) the log, making its directory.
    pub(super) async fn open(
        path: &Path,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
        mask: Masker,
    ) -> io::Result<Sink> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).await?;
        Ok(Sink {
            log: BufWriter::new(file),
            lines,
            mask,
            failed: None,
        })
    }

    /// Masks, logs and forwards `batch`, then flushes, so that someone
    /// following the log sees lines as they come.
    pub(super) async fn write(&mut self, batch: Vec<LogLine>) {
        if batch.is_empty() {
            return;
        }
        for mut line in batch {
            if !self.mask.is_empty() {
                line.line = self.mask.mask(&line.line);
            }
            if self.failed.is_none() {
                let written = match self.log.write_all(line.line.as_bytes()).await {
                    Ok(()) => self.log.write_all(b"\n").await,
                    Err(e) => Err(e),
                };
                self.failed = written.err();
            }
            if let Some(lines) = &self.lines {
                // The receiver may have gone (a closed progress view); the
                // log is still written.
                let _ = lines.send(line);
            }
        }
        if self.failed.is_none() {
            self.failed = self.log.flush().await.err();
        }
    }

    /// Flushes the log and returns its first error.
    pub(super) async fn finish(mut self) -> io::Result<()> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => self.log.flush().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(packets: &[&[u8]]) -> Vec<String> {
        let mut splitter = Splitter::new(Stream::Stdout);
        let mut out = Vec::new();
        for p in packets {
            splitter.push(p, &mut out);
        }
        splitter.finish(&mut out);
        out.into_iter().map(|l| l.line).collect()
    }

    #[test]
    fn lines_cut_across_packets_are_joined() {
        assert_eq!(split(&[b"a\nb", b"c\r\n", b"\n", b"last"]), ["a", "bc", "", "last"]);
        assert_eq!(split(&[b"x\n"]), ["x"]);
        assert_eq!(split(&[b"\xff\n"]), ["\u{fffd}"]);
    }

    #[test]
    fn long_lines_are_split() {
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let lines = split(&[&long, b"\n"]);
        assert_eq!(
            lines.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 3]
        );
        let exact = vec![b'x'; MAX_LINE];
        assert_eq!(split(&[&exact, b"\nnext"]).len(), 2);
    }
}
