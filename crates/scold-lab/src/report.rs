//! The lab's results: every sample in a JSON-serialisable model, the paper's Tables 1-4
//! with our medians beside the paper's figures, and an SVG chart of download time
//! against size for the four conditions.
//!
//! Nothing here invents a number: a condition or metric without samples prints as
//! "not measured", a transfer that timed out is shown as "> limit" and counts as longer
//! than every finished one when taking a median.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::measure::percentile;

/// Which way the client reaches the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Direct,
    Indirect,
}

/// Download protocol: bulk TCP (the paper's FTP) or HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Bulk,
    Http,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Bulk => "bulk TCP",
            Proto::Http => "HTTP",
        }
    }
}

/// What a sample measured from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "lowercase")]
pub enum Probe {
    Ping,
    Download { proto: Proto, size: u64 },
}

/// How the client named the target (Table 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolver {
    /// By its address: no name lookup.
    Address,
    /// By its name, looked up through the client site's resolver (ClientDNS), which
    /// asks the target's authoritative server (TargetDNS).
    Name,
}

/// The four conditions of Tables 1-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Condition {
    pub route: Route,
    pub attack: bool,
}

impl Condition {
    pub const ALL: [Condition; 4] = [
        Condition {
            route: Route::Direct,
            attack: false,
        },
        Condition {
            route: Route::Direct,
            attack: true,
        },
        Condition {
            route: Route::Indirect,
            attack: false,
        },
        Condition {
            route: Route::Indirect,
            attack: true,
        },
    ];

    pub fn label(self) -> &'static str {
        match (self.route, self.attack) {
            (Route::Direct, false) => "direct",
            (Route::Direct, true) => "direct, attack",
            (Route::Indirect, false) => "indirect",
            (Route::Indirect, true) => "indirect, attack",
        }
    }

    fn index(self) -> usize {
        Condition::ALL
            .iter()
            .position(|c| *c == self)
            .expect("all conditions listed")
    }
}

/// What one sample is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case")]
pub enum Metric {
    /// Tables 1-2: a probe under one of the four conditions.
    Condition { probe: Probe, condition: Condition },
    /// Table 3: a probe by the target's name through one resolver.
    Resolver { probe: Probe, resolver: Resolver },
    /// Table 4: from the start of the route set-up until the probe first succeeds over
    /// the indirect route.
    Setup { probe: Probe },
    /// From the alarm until the client site's resolver returns the target's ALT
    /// records (the coordinator's divert as clients can see it).
    Divert,
    /// From a proxy's reset until the client works through another proxy (4.4).
    Failover,
    /// From the end of the attack until the direct route is back.
    Restore,
    /// `scold lab bench`: from the coordinator taking the alarm until the first client
    /// packet arrives over the indirect route.
    AlarmToFirstPacket,
    /// From the end of the attack until the target's detector gave the all-clear and
    /// the coordinator began the restore.
    AllClear,
}

/// How one sample ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Ok {
        seconds: f64,
    },
    /// Did not finish within the limit: the true value is above `limit_seconds`.
    Timeout {
        limit_seconds: f64,
    },
    Failed {
        error: String,
    },
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    #[serde(flatten)]
    pub metric: Metric,
    /// Repetition number, from 1.
    pub rep: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A whole run's results, written as `results.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub scold_version: String,
    pub started_unix: u64,
    pub finished_unix: u64,
    /// The options the run used.
    pub config: serde_json::Value,
    pub samples: Vec<Sample>,
    /// How each part of the figures was obtained: which parts ran through the
    /// coordinator and which were set up by static configuration.
    #[serde(default)]
    pub provenance: Vec<String>,
    /// What was not measured and why, and anything else a reader must know.
    pub notes: Vec<String>,
    /// Adversary mode: each attack on SCOLD itself and what it achieved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attacks: Vec<Attack>,
    /// Replicated control plane: the leading coordinator killed under attack and the
    /// takeover by a standby ([`crate::takeover`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<crate::takeover::Takeover>,
    /// What the clients received over the whole scenario, with its marks (the HTML
    /// report's chart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<crate::timeline::Timeline>,
}

/// One attack on SCOLD itself (adversary mode) and what came of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Attack {
    /// Short name: "gateway scan", "admission flood", ...
    pub name: String,
    /// What the attacker did, with counts.
    pub tried: String,
    /// What it achieved, measured.
    pub achieved: String,
    /// SCOLD held: the attack achieved nothing it was after.
    pub held: bool,
}

/// The median of one metric's samples.
#[derive(Clone, Debug, PartialEq)]
pub enum Summary {
    NotMeasured,
    /// Median in seconds over `n` finished or timed-out samples.
    Median {
        seconds: f64,
        n: usize,
        failed: usize,
    },
    /// The median fell on a timed-out sample: the value is above `limit`.
    Above {
        limit: f64,
        n: usize,
        failed: usize,
    },
    /// Every sample failed.
    AllFailed {
        failed: usize,
        error: String,
    },
}

impl Summary {
    /// The median in seconds when it is a real number.
    pub fn seconds(&self) -> Option<f64> {
        match self {
            Summary::Median { seconds, .. } => Some(*seconds),
            _ => None,
        }
    }
}

impl Results {
    pub fn push(&mut self, metric: Metric, rep: u32, outcome: Outcome) {
        self.samples.push(Sample {
            metric,
            rep,
            outcome,
        });
    }

    /// The median of `metric`; timed-out samples rank above every finished one.
    pub fn summary(&self, metric: Metric) -> Summary {
        let mine: Vec<&Sample> = self.samples.iter().filter(|s| s.metric == metric).collect();
        if mine.is_empty() {
            return Summary::NotMeasured;
        }
        let failed: Vec<&str> = mine
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Failed { error } => Some(error.as_str()),
                _ => None,
            })
            .collect();
        // Rank timeouts above everything, keeping their limit for display.
        let mut ranked: Vec<(f64, bool)> = mine
            .iter()
            .filter_map(|s| match s.outcome {
                Outcome::Ok { seconds } => Some((seconds, false)),
                Outcome::Timeout { limit_seconds } => Some((limit_seconds + 1e12, true)),
                Outcome::Failed { .. } => None,
            })
            .collect();
        if ranked.is_empty() {
            return Summary::AllFailed {
                failed: failed.len(),
                error: failed.first().copied().unwrap_or_default().to_string(),
            };
        }
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = ranked.len();
        let values: Vec<f64> = ranked.iter().map(|r| r.0).collect();
        let med = percentile(&values, 50.0).expect("not empty");
        // With an even count the median averages the two middle values; if either is
        // a timeout the median is only known to exceed the limit.
        let mid_lo = ranked[(n - 1) / 2];
        let mid_hi = ranked[n / 2];
        if mid_lo.1 || mid_hi.1 {
            let limit = mine
                .iter()
                .filter_map(|s| match s.outcome {
                    Outcome::Timeout { limit_seconds } => Some(limit_seconds),
                    _ => None,
                })
                .fold(f64::INFINITY, f64::min);
            return Summary::Above {
                limit,
                n,
                failed: failed.len(),
            };
        }
        Summary::Median {
            seconds: med,
            n,
            failed: failed.len(),
        }
    }
}

/// Formats seconds with a unit that suits the magnitude.
pub fn fmt_seconds(s: f64) -> String {
    if s < 0.001 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else if s < 100.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.0} s")
    }
}

pub(crate) fn fmt_summary(s: &Summary) -> String {
    match s {
        Summary::NotMeasured => "not measured".into(),
        Summary::Median {
            seconds, failed, ..
        } => {
            let mut t = fmt_seconds(*seconds);
            if *failed > 0 {
                let _ = write!(t, " ({failed} failed)");
            }
            t
        }
        Summary::Above { limit, failed, .. } => {
            let mut t = format!("> {}", fmt_seconds(*limit));
            if *failed > 0 {
                let _ = write!(t, " ({failed} failed)");
            }
            t
        }
        Summary::AllFailed { failed, .. } => format!("failed ({failed}x)"),
    }
}

/// The paper's Table 1 (ping client -> target), seconds, in [`Condition::ALL`] order.
pub const PAPER_PING: [f64; 4] = [0.000_49, 0.225, 0.000_65, 0.000_65];
/// The document sizes of the paper's Table 2, bytes (kB = 1000 bytes).
pub const PAPER_SIZES: [u64; 5] = [100_000, 250_000, 500_000, 1_000_000, 2_000_000];
/// The paper's Table 2, seconds: per size, per condition, (FTP, HTTP).
pub const PAPER_DOWNLOADS: [[(f64, f64); 4]; 5] = [
    [(0.11, 3.8), (8.6, 9.1), (0.14, 4.6), (0.14, 4.6)],
    [(0.28, 11.3), (19.5, 13.3), (0.31, 11.6), (0.31, 11.6)],
    [(0.65, 30.8), (39.0, 59.0), (0.66, 31.1), (0.67, 31.1)],
    [(1.16, 62.5), (86.0, 106.0), (1.15, 59.0), (1.15, 59.0)],
    [(2.34, 121.0), (167.0, 232.0), (2.34, 122.0), (2.34, 123.0)],
];
/// The paper's Table 3 rows: probe, original resolver, SCOLD resolver (seconds).
pub const PAPER_RESOLVER: [(Probe, f64, f64); 5] = [
    (Probe::Ping, 0.13, 0.14),
    (
        Probe::Download {
            proto: Proto::Bulk,
            size: 100_000,
        },
        0.14,
        0.14,
    ),
    (
        Probe::Download {
            proto: Proto::Bulk,
            size: 500_000,
        },
        0.65,
        0.66,
    ),
    (
        Probe::Download {
            proto: Proto::Http,
            size: 100_000,
        },
        4.5,
        4.6,
    ),
    (
        Probe::Download {
            proto: Proto::Http,
            size: 500_000,
        },
        31.1,
        31.1,
    ),
];

/// The paper's figure for a Table 2 cell, if it has one.
pub fn paper_download(proto: Proto, size: u64, c: Condition) -> Option<f64> {
    let i = PAPER_SIZES.iter().position(|&s| s == size)?;
    let (ftp, http) = PAPER_DOWNLOADS[i][c.index()];
    Some(match proto {
        Proto::Bulk => ftp,
        Proto::Http => http,
    })
}

/// A size as the paper writes it (`100k`).
pub fn fmt_size(size: u64) -> String {
    if size.is_multiple_of(1000) {
        format!("{}k", size / 1000)
    } else {
        format!("{size} B")
    }
}

fn probe_label(p: Probe) -> String {
    match p {
        Probe::Ping => "ping".into(),
        Probe::Download { proto, size } => format!("{} {}", proto.label(), fmt_size(size)),
    }
}

/// Lays out rows of cells in aligned columns.
fn table(title: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 3));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = format!("{title}\n");
    out.push_str(&line(header.to_vec()));
    let total: usize = w.iter().sum::<usize>() + 3 * (cols.saturating_sub(1));
    out.push_str(&format!("  {}\n", "-".repeat(total)));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The four tables and the extra timings, ours beside the paper's, as text.
pub fn render_tables(r: &Results, sizes: &[u64]) -> String {
    let mut out = String::new();
    let cell = |ours: Summary, paper: Option<f64>| match paper {
        Some(p) => format!("{}  [{}]", fmt_summary(&ours), fmt_seconds(p)),
        None => fmt_summary(&ours),
    };
    let header = [
        "",
        "direct",
        "direct, attack",
        "indirect",
        "indirect, attack",
    ];

    let row: Vec<String> = std::iter::once("ping RTT".to_string())
        .chain(Condition::ALL.iter().enumerate().map(|(i, &c)| {
            cell(
                r.summary(Metric::Condition {
                    probe: Probe::Ping,
                    condition: c,
                }),
                Some(PAPER_PING[i]),
            )
        }))
        .collect();
    out += &table(
        "Table 1: ping response time, client -> target (our median  [paper])",
        &header,
        &[row],
    );
    out.push('\n');

    let mut rows = Vec::new();
    for &size in sizes {
        for proto in [Proto::Bulk, Proto::Http] {
            let mut row = vec![format!("{} {}", fmt_size(size), proto.label())];
            for c in Condition::ALL {
                row.push(cell(
                    r.summary(Metric::Condition {
                        probe: Probe::Download { proto, size },
                        condition: c,
                    }),
                    paper_download(proto, size, c),
                ));
            }
            rows.push(row);
        }
    }
    out += &table(
        "Table 2: download time, client -> target; bulk TCP stands for the paper's FTP \
         (our median  [paper])",
        &header,
        &rows,
    );
    out.push('\n');

    let rows: Vec<Vec<String>> = PAPER_RESOLVER
        .iter()
        .map(|&(probe, plain, scold)| {
            vec![
                probe_label(probe),
                cell(
                    r.summary(Metric::Resolver {
                        probe,
                        resolver: Resolver::Address,
                    }),
                    Some(plain),
                ),
                cell(
                    r.summary(Metric::Resolver {
                        probe,
                        resolver: Resolver::Name,
                    }),
                    Some(scold),
                ),
            ]
        })
        .collect();
    let flag = |k: &str| r.config.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let scheme = r
        .config
        .get("scheme")
        .and_then(|v| v.as_str())
        .unwrap_or("4.1");
    // Scheme 4.1 runs client agents that applications ask, unless the route is static.
    let agent = scheme == "4.1" && !flag("static_route");
    // The coordinator's divert lays the route out unless the run left it out.
    let coord = !flag("static_route") && !flag("no_control");
    let detect = coord && !flag("operator_alarm");
    let flood = r.config.get("failover_attack").and_then(|v| v.as_str()) == Some("flood");
    out += &table(
        "Table 3: resolver overhead: lookup (if any) then probe, direct route \
         (our median  [paper: original | enhanced resolve library])",
        &[
            "",
            "by address",
            if agent {
                "by name via client agent -> ClientDNS -> TargetDNS"
            } else {
                "by name via ClientDNS -> TargetDNS"
            },
        ],
        &rows,
    );
    out.push('\n');

    let setup_probes = [
        Probe::Ping,
        Probe::Download {
            proto: Proto::Bulk,
            size: 100_000,
        },
        Probe::Download {
            proto: Proto::Http,
            size: 100_000,
        },
    ];
    let rows: Vec<Vec<String>> = setup_probes
        .iter()
        .map(|&probe| {
            vec![
                probe_label(probe),
                format!(
                    "{}  [under 1 s]",
                    fmt_summary(&r.summary(Metric::Setup { probe }))
                ),
            ]
        })
        .collect();
    out += &table(
        if agent {
            "Table 4: time to set up the indirect route, from the application's lookup \
             through the client agent (ALT records published) to the first answer through \
             the tunnel (our median  [paper])"
        } else if coord && scheme == "4.2" {
            "Table 4: time to set up the indirect route, from the operator's alarm to the \
             first answer through the tunnel a proxy pushed to the client agent (our median  \
             [paper])"
        } else if coord && scheme == "4.3" {
            "Table 4: time to set up the indirect route, from the operator's alarm to the \
             first download from the proxy address ClientDNS gives for the name; no ping \
             through a NAT relay (our median  [paper])"
        } else {
            "Table 4: time to set up the indirect route, from starting the client agent and \
             the target's return path (static configs) to the first answer through the \
             tunnel (our median  [paper])"
        },
        &["", "set-up time"],
        &rows,
    );
    out.push('\n');

    // Why a timing is missing is too long for a cell: it goes below the table.
    let mut why = Vec::new();
    let mut long = |m: Metric| match r.summary(m) {
        Summary::AllFailed { error, .. } => {
            why.push(error);
            format!("not reached [{}]", why.len())
        }
        other => fmt_summary(&other),
    };
    let rows = vec![
        vec![
            if detect {
                "divert: attack start -> coordinator phase \"diverted\" (target's detector)"
                    .to_string()
            } else if coord {
                "divert: alarm -> coordinator phase \"diverted\"".to_string()
            } else {
                "divert: not asked of the coordinator (static or unlinked route)".to_string()
            },
            long(Metric::Divert),
        ],
        vec![
            match (scheme, coord && flood) {
                ("4.3", true) => "proxy failover (4.4): reset of the flooded proxy -> first new \
                                  connection through another proxy"
                    .to_string(),
                ("4.3", false) => "proxy failover (4.4): reset of the killed proxy -> first new \
                                   connection through another proxy"
                    .to_string(),
                (_, true) => {
                    "proxy failover (4.4): gap after flooding the client's proxy (self-defence)"
                        .to_string()
                }
                (_, false) => {
                    "proxy failover (4.4): gap after killing the client's proxy".to_string()
                }
            },
            long(Metric::Failover),
        ],
    ];
    let mut rows = rows;
    if detect {
        rows.push(vec![
            "all-clear: attack end -> target's detector all-clear (coordinator restoring)"
                .to_string(),
            long(Metric::AllClear),
        ]);
    }
    rows.push(vec![
        if detect {
            "restore: attack end -> coordinator phase \"normal\" (automatic)".to_string()
        } else if coord {
            "restore: operator's all-clear -> coordinator phase \"normal\"".to_string()
        } else {
            "restore: not asked of the coordinator".to_string()
        },
        long(Metric::Restore),
    ]);
    out += &table("Further timings (median)", &["", "time"], &rows);
    for (i, w) in why.iter().enumerate() {
        let _ = writeln!(out, "  [{}] {w}", i + 1);
    }
    out.push('\n');
    if !r.attacks.is_empty() {
        out += &render_attacks(&r.attacks);
        out.push('\n');
    }
    if let Some(t) = &r.takeover {
        out += &crate::takeover::render(t, r);
        out.push('\n');
    }
    out += &render_shape(r, sizes);
    if !r.provenance.is_empty() {
        out.push_str("\nHow these figures were obtained\n");
        for p in &r.provenance {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

/// Adversary mode: one block per attack on SCOLD itself (the cells are too long for a
/// table).
pub fn render_attacks(attacks: &[Attack]) -> String {
    let held = attacks.iter().filter(|a| a.held).count();
    let mut out = format!(
        "Attacks on SCOLD itself during the flood: {held} of {} held\n",
        attacks.len()
    );
    for a in attacks {
        let _ = writeln!(
            out,
            "  {} {}\n      tried:    {}\n      achieved: {}",
            if a.held { "[held]  " } else { "[BROKEN]" },
            a.name,
            a.tried,
            a.achieved
        );
    }
    out
}

/// The ratios the paper's claims rest on, ours beside the paper's.
pub fn render_shape(r: &Results, sizes: &[u64]) -> String {
    let mut out = String::from("Shape (ratio of medians, ours  [paper])\n");
    let ratio = |probe: Probe, a: Condition, b: Condition| -> String {
        let num = r.summary(Metric::Condition {
            probe,
            condition: a,
        });
        let den = r.summary(Metric::Condition {
            probe,
            condition: b,
        });
        match (&num, den.seconds()) {
            (Summary::Median { seconds, .. }, Some(d)) if d > 0.0 => format!("{:.2}x", seconds / d),
            (Summary::Above { limit, .. }, Some(d)) if d > 0.0 => format!("> {:.0}x", limit / d),
            _ => "not measured".into(),
        }
    };
    let [d, da, i, ia] = Condition::ALL;
    let mut probes = vec![Probe::Ping];
    if let Some(&largest) = sizes.iter().max() {
        probes.push(Probe::Download {
            proto: Proto::Bulk,
            size: largest,
        });
        probes.push(Probe::Download {
            proto: Proto::Http,
            size: largest,
        });
    }
    for p in probes {
        let paper = |a: Condition, b: Condition| match p {
            Probe::Ping => Some(PAPER_PING[a.index()] / PAPER_PING[b.index()]),
            Probe::Download { proto, size } => {
                Some(paper_download(proto, size, a)? / paper_download(proto, size, b)?)
            }
        };
        let fmt_paper = |x: Option<f64>| x.map(|x| format!("  [{x:.2}x]")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}: direct under attack / direct = {}{};  indirect under attack / indirect = {}{}",
            probe_label(p),
            ratio(p, da, d),
            fmt_paper(paper(da, d)),
            ratio(p, ia, i),
            fmt_paper(paper(ia, i)),
        );
    }
    out
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG chart of median download time against size (log-log), one colour per
/// condition, solid for bulk TCP and dashed for HTTP. Medians above their time limit
/// are drawn as hollow triangles at the limit; unmeasured conditions are named in the
/// legend.
pub fn render_svg(r: &Results, sizes: &[u64]) -> String {
    let (w, h) = (860.0_f64, 520.0_f64);
    let (left, right, top, bottom) = (80.0, 250.0, 50.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;

    struct Point {
        size: u64,
        secs: f64,
        above: bool,
    }
    let mut series: Vec<(Condition, Proto, Vec<Point>)> = Vec::new();
    for c in Condition::ALL {
        for proto in [Proto::Bulk, Proto::Http] {
            let pts: Vec<Point> = sizes
                .iter()
                .filter_map(|&size| {
                    match r.summary(Metric::Condition {
                        probe: Probe::Download { proto, size },
                        condition: c,
                    }) {
                        Summary::Median { seconds, .. } => Some(Point {
                            size,
                            secs: seconds,
                            above: false,
                        }),
                        Summary::Above { limit, .. } => Some(Point {
                            size,
                            secs: limit,
                            above: true,
                        }),
                        _ => None,
                    }
                })
                .collect();
            series.push((c, proto, pts));
        }
    }
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.secs))
        .filter(|v| *v > 0.0)
        .collect();
    let ymin = all.iter().copied().fold(f64::INFINITY, f64::min);
    let ymax = all.iter().copied().fold(0.0, f64::max);
    let (ylo, yhi) = if all.is_empty() {
        (-3.0, 0.0)
    } else {
        let lo = ymin.log10().floor();
        let hi = ymax.log10().ceil();
        (lo, if hi <= lo { lo + 1.0 } else { hi })
    };
    let smin = sizes.iter().copied().min().unwrap_or(100_000).max(1) as f64;
    let smax = sizes.iter().copied().max().unwrap_or(2_000_000).max(2) as f64;
    let (xlo, xhi) = if smax > smin {
        (smin.log10() - 0.05, smax.log10() + 0.05)
    } else {
        (smin.log10() - 0.5, smin.log10() + 0.5)
    };
    let x = |size: f64| left + (size.log10() - xlo) / (xhi - xlo) * pw;
    let y = |secs: f64| top + ph - (secs.max(1e-9).log10() - ylo) / (yhi - ylo) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">Download time against size, client -&gt; target (median)</text>"#,
        left + pw / 2.0
    );
    // Decade grid lines on the time axis.
    let mut d = ylo;
    while d <= yhi + 1e-9 {
        let yy = y(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            left + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            yy + 4.0,
            esc(&fmt_seconds(10f64.powf(d)))
        );
        d += 1.0;
    }
    for &size in sizes {
        let xx = x(size as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + ph + 18.0,
            fmt_size(size)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">document size (log scale)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">time (log scale)</text>"#,
        top + ph / 2.0
    );
    for (c, proto, pts) in &series {
        let color = COLORS[c.index()];
        let dash = if *proto == Proto::Http {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        if pts.len() > 1 {
            let path: Vec<String> = pts
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.size as f64), y(p.secs)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
        }
        for p in pts {
            let (px, py) = (x(p.size as f64), y(p.secs));
            if p.above {
                let _ = writeln!(
                    s,
                    r#"<path d="M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z" fill="white" stroke="{color}" stroke-width="2"><title>{} {} {}: above {}</title></path>"#,
                    px,
                    py - 6.0,
                    px - 5.0,
                    py + 4.0,
                    px + 5.0,
                    py + 4.0,
                    c.label(),
                    proto.label(),
                    fmt_size(p.size),
                    esc(&fmt_seconds(p.secs))
                );
            } else {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{color}"><title>{} {} {}: {}</title></circle>"#,
                    c.label(),
                    proto.label(),
                    fmt_size(p.size),
                    esc(&fmt_seconds(p.secs))
                );
            }
        }
    }
    // Legend.
    let lx = left + pw + 20.0;
    let mut ly = top + 10.0;
    for (c, proto, pts) in &series {
        let color = COLORS[c.index()];
        let dash = if *proto == Proto::Http {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>"#,
            lx + 28.0
        );
        let mut label = format!("{}, {}", c.label(), proto.label());
        if pts.is_empty() {
            label.push_str(" (not measured)");
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 34.0,
            ly + 4.0,
            esc(&label)
        );
        ly += 20.0;
    }
    ly += 10.0;
    let _ = writeln!(
        s,
        r##"<path d="M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z" fill="white" stroke="#555" stroke-width="2"/>"##,
        lx + 14.0,
        ly - 6.0,
        lx + 9.0,
        ly + 4.0,
        lx + 19.0,
        ly + 4.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}">median above the time limit</text>"#,
        lx + 34.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(proto: Proto, size: u64, c: Condition) -> Metric {
        Metric::Condition {
            probe: Probe::Download { proto, size },
            condition: c,
        }
    }

    #[test]
    fn medians_rank_timeouts_last() {
        let m = dl(Proto::Bulk, 100_000, Condition::ALL[1]);
        let mut r = Results::default();
        assert_eq!(r.summary(m), Summary::NotMeasured);
        r.push(m, 1, Outcome::Ok { seconds: 1.0 });
        r.push(
            m,
            2,
            Outcome::Timeout {
                limit_seconds: 10.0,
            },
        );
        r.push(m, 3, Outcome::Ok { seconds: 3.0 });
        assert_eq!(r.summary(m).seconds(), Some(3.0));
        r.push(
            m,
            4,
            Outcome::Timeout {
                limit_seconds: 10.0,
            },
        );
        assert!(matches!(r.summary(m), Summary::Above { limit, n: 4, .. } if limit == 10.0));
        r.push(m, 5, Outcome::Failed { error: "x".into() });
        assert!(matches!(r.summary(m), Summary::Above { failed: 1, .. }));
        let only_failed = dl(Proto::Http, 100_000, Condition::ALL[0]);
        r.push(
            only_failed,
            1,
            Outcome::Failed {
                error: "refused".into(),
            },
        );
        assert!(matches!(
            r.summary(only_failed),
            Summary::AllFailed { failed: 1, .. }
        ));
    }

    #[test]
    fn json_round_trip_keeps_every_sample() {
        let mut r = Results::default();
        r.push(
            Metric::Condition {
                probe: Probe::Ping,
                condition: Condition::ALL[0],
            },
            1,
            Outcome::Ok { seconds: 0.0001 },
        );
        r.push(
            dl(Proto::Http, 250_000, Condition::ALL[3]),
            2,
            Outcome::Timeout { limit_seconds: 5.0 },
        );
        r.push(
            Metric::Failover,
            1,
            Outcome::Failed {
                error: "no proxy".into(),
            },
        );
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""metric":"condition""#), "{j}");
        let back: Results = serde_json::from_str(&j).unwrap();
        assert_eq!(back.samples, r.samples);
    }

    #[test]
    fn tables_never_show_numbers_for_unmeasured_cells() {
        let mut r = Results::default();
        let sizes = [100_000u64];
        r.push(
            dl(Proto::Bulk, 100_000, Condition::ALL[0]),
            1,
            Outcome::Ok { seconds: 0.09 },
        );
        let t = render_tables(&r, &sizes);
        assert!(t.contains("90.00 ms  [110.00 ms]"), "{t}");
        // Indirect, Tables 3-4 and the extra timings are all unmeasured here.
        assert!(t.matches("not measured").count() >= 10, "{t}");
        assert!(t.contains("Table 1") && t.contains("Table 4"));
    }

    #[test]
    fn svg_is_well_formed_and_marks_missing_series() {
        let mut r = Results::default();
        let sizes = PAPER_SIZES;
        for (i, &s) in sizes.iter().enumerate() {
            r.push(
                dl(Proto::Bulk, s, Condition::ALL[0]),
                1,
                Outcome::Ok {
                    seconds: 0.1 * (i + 1) as f64,
                },
            );
            r.push(
                dl(Proto::Bulk, s, Condition::ALL[1]),
                1,
                Outcome::Timeout {
                    limit_seconds: 20.0,
                },
            );
        }
        let svg = render_svg(&r, &sizes);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("indirect, bulk TCP (not measured)"));
        assert!(svg.contains("above 20.00 s"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Empty results still give a valid picture.
        let empty = render_svg(&Results::default(), &sizes);
        assert!(!empty.contains("NaN"));
    }
}
