//! A progress display on standard error: one line per finished step, with the step
//! count and the elapsed time, so it reads the same in a terminal and in a CI log.

use std::io::Write;
use std::time::Instant;

/// Counts steps of a known total and reports each on stderr.
pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(total: usize, quiet: bool) -> Self {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            quiet,
        }
    }

    /// A phase heading.
    pub fn phase(&self, what: &str) {
        if !self.quiet {
            let _ = writeln!(
                std::io::stderr(),
                "[{:>5.1}s] == {what}",
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// One step finished.
    pub fn step(&mut self, what: &str, result: &str) {
        self.done += 1;
        if !self.quiet {
            let width = self.total.to_string().len();
            let _ = writeln!(
                std::io::stderr(),
                "[{:>5.1}s] {:>width$}/{} {what}: {result}",
                self.start.elapsed().as_secs_f64(),
                self.done,
                self.total,
            );
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
