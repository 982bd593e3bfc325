//! `report.html`: the lab's report as a page to look at, beside `report.txt`.
//!
//! One self-contained file (inline CSS and SVG, no script, nothing fetched): the run's
//! timeline (what the clients received over the whole scenario, with the attack, the
//! alarm, divert, failovers and restore marked), the tables of `report.txt` as HTML
//! tables with the paper's figures set apart, the download chart, the notes.
//!
//! The tables are read from the text report itself, whose layout [`crate::report`]
//! writes in aligned columns: what the text says the page says, and a section added to
//! the text shows up here without a second renderer.

use std::fmt::Write as _;

use crate::report::{render_svg, Results};
use crate::timeline::{MarkKind, Timeline};

const STYLE: &str = r#"
:root { --fg:#1d2433; --muted:#667085; --line:#d8dde6; --bg:#f7f8fa; --paper:#8a6d00;
  --attack:#d62728; --alarm:#ff7f0e; --divert:#1f77b4; --failover:#9467bd; --restore:#2ca02c; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg);
  margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1100px; }
h1 { font-size: 1.6rem; margin: 0; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
.meta { color: var(--muted); margin: .2rem 0 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 1rem; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: .4rem 0 1.2rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; }
td.value { font-variant-numeric: tabular-nums; white-space: nowrap; }
th[scope=row] { white-space: nowrap; }
.paper { color: var(--paper); font-size: .88em; margin-left: .35rem; }
.paper::before { content: "paper "; }
.foot { color: var(--muted); font-size: .9em; }
pre { background: #fff; border: 1px solid var(--line); padding: .6rem; overflow-x: auto; font-size: .88em; }
svg { max-width: 100%; height: auto; }
svg.timeline text { font-size: 12px; fill: var(--fg); }
svg.timeline .axis line, svg.timeline .grid line { stroke: var(--line); }
svg.timeline .throughput { fill: rgba(31,119,180,.18); stroke: #1f77b4; stroke-width: 1.2; }
svg.timeline .attack-span { fill: rgba(214,39,40,.08); }
.mark line { stroke-width: 2; stroke-dasharray: 5 3; }
.mark-attack line, .mark-attack_end line { stroke: var(--attack); }
.mark-alarm line { stroke: var(--alarm); } .mark-divert line { stroke: var(--divert); }
.mark-failover line { stroke: var(--failover); } .mark-restore line { stroke: var(--restore); }
.mark-attack text, .mark-attack_end text { fill: var(--attack); }
.mark-alarm text { fill: var(--alarm); } .mark-divert text { fill: var(--divert); }
.mark-failover text { fill: var(--failover); } .mark-restore text { fill: var(--restore); }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; margin: .4rem 0 0; }
ul.legend li::before { content: ""; display: inline-block; width: .9rem; height: .25rem; margin-right: .35rem; vertical-align: middle; }
.lg-attack::before { background: var(--attack); } .lg-alarm::before { background: var(--alarm); }
.lg-divert::before { background: var(--divert); } .lg-failover::before { background: var(--failover); }
.lg-restore::before { background: var(--restore); } .lg-throughput::before { background: #1f77b4; }
ol.marks { columns: 2; font-size: .92em; }
ol.marks time { font-variant-numeric: tabular-nums; color: var(--muted); margin-right: .4rem; }
"#;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time in seconds.
fn utc(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = scold_control::ctl::civil_date((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One aligned table of the text report.
#[derive(Debug, PartialEq)]
struct TextTable {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    foot: Vec<String>,
}

/// Where each column starts in a header line: at the indent, then after each run of
/// three or more spaces (the text report pads columns with at least three).
fn column_starts(header: &[char]) -> Vec<usize> {
    let mut starts = vec![2];
    for i in 3..header.len() {
        if header[i] != ' '
            && header[i - 3..i].iter().all(|c| *c == ' ')
            && starts.last() != Some(&i)
        {
            starts.push(i);
        }
    }
    starts
}

fn cut(line: &[char], starts: &[usize]) -> Vec<String> {
    starts
        .iter()
        .enumerate()
        .map(|(j, &from)| {
            let to = starts
                .get(j + 1)
                .copied()
                .unwrap_or(line.len())
                .min(line.len());
            line.get(from.min(to)..to)
                .map(|c| c.iter().collect::<String>().trim().to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn is_rule(line: &str) -> bool {
    let t = line.trim();
    t.len() >= 3 && t.chars().all(|c| c == '-')
}

fn is_footnote(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('[')
        && t[1..]
            .split_once(']')
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// A block of the text report as a table, when it is one (title, header, rule, rows).
fn parse_table(block: &str) -> Option<TextTable> {
    let lines: Vec<&str> = block.lines().collect();
    if lines.len() < 3 || !is_rule(lines[2]) || !lines[1].starts_with("  ") {
        return None;
    }
    let header: Vec<char> = lines[1].chars().collect();
    let starts = column_starts(&header);
    let mut rows = Vec::new();
    let mut foot = Vec::new();
    for l in &lines[3..] {
        if is_footnote(l) {
            foot.push(l.trim().to_string());
        } else if l.starts_with("  ") {
            rows.push(cut(&l.chars().collect::<Vec<_>>(), &starts));
        } else {
            foot.push(l.trim().to_string());
        }
    }
    Some(TextTable {
        title: lines[0].to_string(),
        header: cut(&header, &starts),
        rows,
        foot,
    })
}

/// A cell: "ours  [paper]" sets the paper's figure apart.
fn cell(s: &str) -> String {
    match s.strip_suffix(']').and_then(|x| x.rsplit_once("  [")) {
        Some((ours, paper)) => format!(
            "{}<span class=\"paper\">{}</span>",
            esc(ours.trim()),
            esc(paper)
        ),
        None => esc(s),
    }
}

fn table_html(t: &TextTable) -> String {
    let mut out = String::from("<table>\n");
    let _ = writeln!(out, "<caption>{}</caption>", esc(&t.title));
    out.push_str("<thead><tr>");
    for h in &t.header {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        out.push_str("<tr>");
        for (j, c) in r.iter().enumerate() {
            if j == 0 {
                let _ = write!(out, "<th scope=\"row\">{}</th>", esc(c));
            } else {
                let _ = write!(out, "<td class=\"value\">{}</td>", cell(c));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    for f in &t.foot {
        let _ = writeln!(out, "<p class=\"foot\">{}</p>", esc(f));
    }
    out
}

/// Every block of the text report: tables as tables, lists as lists, the rest as text.
fn report_html(text: &str) -> String {
    let mut out = String::new();
    for block in text
        .split("\n\n")
        .map(str::trim_end)
        .filter(|b| !b.trim().is_empty())
    {
        if let Some(t) = parse_table(block) {
            out.push_str(&table_html(&t));
            continue;
        }
        let block = block.trim_start_matches('\n');
        let (first, rest) = block.split_once('\n').unwrap_or((block, ""));
        if rest.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", esc(first));
        } else if rest.lines().all(|l| l.trim_start().starts_with("- ")) {
            let _ = writeln!(out, "<h3>{}</h3>\n<ul>", esc(first));
            for l in rest.lines() {
                let _ = writeln!(out, "<li>{}</li>", esc(l.trim_start()[2..].trim()));
            }
            out.push_str("</ul>\n");
        } else {
            let _ = writeln!(out, "<h3>{}</h3>\n<pre>{}</pre>", esc(first), esc(rest));
        }
    }
    out
}

/// A round step for about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_rate(bits: f64) -> String {
    if bits >= 1e9 {
        format!("{:.1} Gbit/s", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6)
    } else if bits >= 1e3 {
        format!("{:.0} kbit/s", bits / 1e3)
    } else {
        format!("{bits:.0} bit/s")
    }
}

/// Height of one row of mark labels.
const ROW: f64 = 16.0;

/// The row of each mark's label: the lowest whose labels end (at about 7 px a
/// character, centred on their mark) before this one begins.
fn label_rows(t: &Timeline, left: f64, pw: f64) -> Vec<usize> {
    let span_ms = t.duration_ms().max(1000) as f64;
    let mut ends: Vec<f64> = Vec::new();
    t.marks
        .iter()
        .map(|m| {
            let x = left + pw * (m.at_ms as f64 / span_ms).clamp(0.0, 1.0);
            let half = 3.5 * m.kind.label().len() as f64 + 4.0;
            let row = ends
                .iter()
                .position(|&end| end < x - half)
                .unwrap_or(ends.len());
            if row == ends.len() {
                ends.push(x + half);
            } else {
                ends[row] = x + half;
            }
            row
        })
        .collect()
}

/// The timeline chart: throughput through the clients over the whole scenario, the
/// attack shaded, each mark a dashed line with its name.
pub fn timeline_svg(t: &Timeline) -> String {
    let (w, h) = (1000.0_f64, 380.0_f64);
    let (left, right, bottom) = (80.0, 20.0, 45.0);
    let pw = w - left - right;
    // Each mark's label goes on the lowest row where it overlaps no other label.
    let rows = label_rows(t, left, pw);
    let top = 26.0 + ROW * rows.iter().copied().max().map_or(1.0, |r| r as f64 + 1.0);
    let h = h + top - 70.0;
    let ph = h - top - bottom;
    let span_s = (t.duration_ms().max(1000) as f64) / 1000.0;
    let peak = (0..t.bytes.len())
        .map(|i| t.bits_per_sec(i))
        .fold(0.0, f64::max);
    let ystep = nice_step(peak.max(1e6), 4.0);
    let ymax = (peak / ystep).ceil().max(1.0) * ystep;
    let x = |s: f64| left + pw * (s / span_s).clamp(0.0, 1.0);
    let y = |bits: f64| top + ph * (1.0 - bits / ymax);
    let mut out = format!(
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"throughput through the clients over the scenario\">\n"
    );
    // The attack, shaded.
    let at = |k: MarkKind| {
        t.marks
            .iter()
            .find(|m| m.kind == k)
            .map(|m| m.at_ms as f64 / 1000.0)
    };
    if let Some(a) = at(MarkKind::Attack) {
        let e = at(MarkKind::AttackEnd).unwrap_or(span_s);
        let _ = writeln!(
            out,
            "<rect class=\"attack-span\" x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{ph}\"/>",
            x(a),
            (x(e) - x(a)).max(0.0)
        );
    }
    // Grid and axes.
    out.push_str("<g class=\"grid\">\n");
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + pw,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0,
            fmt_rate(v)
        );
        v += ystep;
    }
    let xstep = nice_step(span_s, 10.0);
    let mut s = 0.0;
    while s <= span_s + 1e-9 {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1:.1}\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{3}</text>",
            x(s),
            top + ph,
            top + ph + 16.0,
            if xstep < 1.0 { format!("{s:.1}") } else { format!("{s:.0}") }
        );
        s += xstep;
    }
    out.push_str("</g>\n");
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the roles started</text>",
        left + pw / 2.0,
        h - 6.0
    );
    // Throughput, a step line closed to the axis.
    let mut pts = format!("{left:.1},{:.1}", y(0.0));
    let bin_s = t.interval_ms as f64 / 1000.0;
    for i in 0..t.bytes.len() {
        let r = t.bits_per_sec(i);
        let (x0, x1) = (x(i as f64 * bin_s), x((i + 1) as f64 * bin_s));
        let _ = write!(pts, " {x0:.1},{:.1} {x1:.1},{:.1}", y(r), y(r));
    }
    let _ = write!(pts, " {:.1},{:.1}", x(t.bytes.len() as f64 * bin_s), y(0.0));
    let _ = writeln!(
        out,
        "<polygon class=\"throughput\" points=\"{pts}\"><title>throughput through the clients, per {} ms</title></polygon>",
        t.interval_ms
    );
    for (m, row) in t.marks.iter().zip(&rows) {
        let s = m.at_ms as f64 / 1000.0;
        let row = *row as f64;
        let kind = serde_json::to_value(m.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<g class=\"mark mark-{kind}\" data-kind=\"{kind}\"><title>{label} at {s:.2} s: {detail}</title><line x1=\"{xs:.1}\" x2=\"{xs:.1}\" y1=\"{y1:.1}\" y2=\"{y2:.1}\"/><text x=\"{xs:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{label}</text></g>",
            label = esc(m.kind.label()),
            detail = esc(&m.detail),
            xs = x(s),
            y1 = top - ROW * row - 4.0,
            y2 = top + ph,
            ty = top - ROW * row - 8.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn timeline_section(t: &Timeline) -> String {
    let mut out =
        String::from("<section id=\"timeline\">\n<h2>Timeline</h2>\n<div class=\"card\">\n");
    out.push_str(&timeline_svg(t));
    out.push_str(
        "<ul class=\"legend\"><li class=\"lg-throughput\">what the clients received</li>\
         <li class=\"lg-attack\">attack (shaded)</li><li class=\"lg-alarm\">alarm</li>\
         <li class=\"lg-divert\">divert</li><li class=\"lg-failover\">failover</li>\
         <li class=\"lg-restore\">restore</li></ul>\n</div>\n",
    );
    let total: u64 = t.bytes.iter().sum();
    let _ = writeln!(
        out,
        "<p class=\"foot\">{:.1} MB received by the clients' downloads over {:.1} s, in {} ms bins. \
         The clients download only while the lab measures, so the gaps are the lab's, not \
         the network's.</p>",
        total as f64 / 1e6,
        t.duration_ms() as f64 / 1000.0,
        t.interval_ms
    );
    out.push_str("<ol class=\"marks\">\n");
    for m in &t.marks {
        let _ = writeln!(
            out,
            "<li data-kind=\"{}\"><time>{:.2} s</time><strong>{}</strong> {}</li>",
            esc(&serde_json::to_value(m.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()),
            m.at_ms as f64 / 1000.0,
            esc(m.kind.label()),
            esc(&m.detail)
        );
    }
    out.push_str("</ol>\n</section>\n");
    out
}

/// The whole page. `text` is `report.txt` as written.
pub fn render(r: &Results, sizes: &[u64], text: &str) -> String {
    let scheme = r
        .config
        .get("scheme")
        .and_then(|v| v.as_str())
        .unwrap_or("4.1");
    let mut out =
        String::from("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>SCOLD lab report</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<header>\n<h1>SCOLD lab report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"meta\">scold {} &middot; scheme {} &middot; {} to {}</p>\n</header>",
        esc(&r.scold_version),
        esc(scheme),
        utc(r.started_unix),
        utc(r.finished_unix)
    );
    match &r.timeline {
        Some(t) => out.push_str(&timeline_section(t)),
        None => out.push_str(
            "<section id=\"timeline\"><h2>Timeline</h2><p>This run recorded no timeline.</p></section>\n",
        ),
    }
    out.push_str("<section id=\"tables\">\n<h2>Figures, ours beside the paper's</h2>\n");
    let (body, notes) = match text.find("\nnote: ") {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    out.push_str(&report_html(body));
    out.push_str("</section>\n<section id=\"downloads\">\n<h2>Download time against size</h2>\n<div class=\"card\">\n");
    let svg = render_svg(r, sizes);
    out.push_str(
        svg.trim_start_matches(|c| c != '<')
            .trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
    );
    out.push_str("</div>\n</section>\n");
    let notes: Vec<&str> = notes
        .lines()
        .filter_map(|l| l.strip_prefix("note: "))
        .collect();
    if !notes.is_empty() {
        out.push_str("<section id=\"notes\">\n<h2>Notes</h2>\n<ul>\n");
        for n in notes {
            let _ = writeln!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>\n</section>\n");
    }
    out.push_str("<footer class=\"foot\"><p>The same figures as report.txt and results.json of this run.</p></footer>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Condition, Metric, Outcome, Probe};
    use crate::timeline::Mark;

    fn results() -> Results {
        let mut r = Results {
            scold_version: "0.1.0".into(),
            started_unix: 1_796_000_000,
            finished_unix: 1_796_000_120,
            config: serde_json::json!({ "scheme": "4.1" }),
            ..Default::default()
        };
        for (c, s) in Condition::ALL.iter().zip([0.0004, 0.2, 0.0006, 0.0007]) {
            r.push(
                Metric::Condition {
                    probe: Probe::Ping,
                    condition: *c,
                },
                1,
                Outcome::Ok { seconds: s },
            );
        }
        r.notes.push("flood: <b>bold</b> & co".into());
        r.timeline = Some(Timeline {
            start_unix_ms: 1_796_000_000_000,
            interval_ms: 100,
            bytes: (0..300)
                .map(|i| if (50..120).contains(&i) { 12_500 } else { 0 })
                .collect(),
            marks: [
                (4_000, MarkKind::Alarm),
                (4_300, MarkKind::Divert),
                (10_000, MarkKind::Attack),
                (15_000, MarkKind::Failover),
                (20_000, MarkKind::AttackEnd),
                (25_000, MarkKind::Restore),
            ]
            .into_iter()
            .map(|(at_ms, kind)| Mark {
                at_ms,
                kind,
                detail: format!("{kind:?} <detail>"),
            })
            .collect(),
        });
        r
    }

    #[test]
    fn tables_of_the_text_report_become_html_tables() {
        let r = results();
        let text = crate::report::render_tables(&r, &[250_000]);
        let html = render(
            &r,
            &[250_000],
            &format!("{text}\nnote: flood: <b>bold</b> & co\n"),
        );
        assert!(html.starts_with("<!doctype html>"));
        for t in [
            "Table 1",
            "Table 2",
            "Table 3",
            "Table 4",
            "Further timings",
        ] {
            assert!(html.contains(&format!("<caption>{t}")), "{t} missing");
        }
        // Table 1's row: our median with the paper's figure set apart.
        assert!(html.contains("<th scope=\"row\">ping RTT</th>"), "{html}");
        assert!(
            html.contains("<span class=\"paper\">225.00 ms</span>"),
            "{html}"
        );
        assert!(html.contains("<th scope=\"col\">indirect, attack</th>"));
        // Notes are escaped, never markup.
        assert!(html.contains("flood: &lt;b&gt;bold&lt;/b&gt; &amp; co"));
        assert!(!html.contains("<b>bold"));
        // Self-contained: no script, nothing fetched.
        for bad in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(bad), "{bad} in the page");
        }
    }

    #[test]
    fn the_timeline_marks_every_event_and_draws_the_throughput() {
        let svg = timeline_svg(results().timeline.as_ref().unwrap());
        for k in [
            "alarm",
            "divert",
            "attack",
            "failover",
            "attack_end",
            "restore",
        ] {
            assert!(
                svg.contains(&format!("data-kind=\"{k}\"")),
                "mark {k} missing:\n{svg}"
            );
        }
        assert!(svg.contains("class=\"attack-span\""));
        assert!(svg.contains("&lt;detail&gt;") && !svg.contains("<detail>"));
        // 1 Mbit/s for 7 s: the axis reaches it.
        assert!(svg.contains("1.0 Mbit/s"), "{svg}");
        assert!(svg.contains("<polygon class=\"throughput\""));
    }

    #[test]
    fn close_marks_get_their_own_label_rows() {
        let mut t = results().timeline.unwrap();
        t.marks = [
            (15_420, MarkKind::Restore),
            (15_450, MarkKind::Attack),
            (15_970, MarkKind::Alarm),
            (15_990, MarkKind::Divert),
            (27_000, MarkKind::Failover),
        ]
        .into_iter()
        .map(|(at_ms, kind)| Mark {
            at_ms,
            kind,
            detail: String::new(),
        })
        .collect();
        assert_eq!(label_rows(&t, 80.0, 900.0), vec![0, 1, 2, 3, 0]);
        // The chart grows to hold the rows: every label stays inside it.
        let svg = timeline_svg(&t);
        let ys: Vec<f64> = svg
            .split("<text x=")
            .skip(1)
            .filter_map(|p| p.split("y=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect();
        assert!(ys.iter().all(|y| *y > 10.0), "{ys:?}");
    }

    #[test]
    fn aligned_columns_are_cut_where_the_header_says() {
        // As report::table lays it out: columns 7, 15 and 4 wide, three spaces apart.
        let block = format!(
            "T\n  {}a{}b, c\n  {}\n  row one   1.00 ms  [2 ms]   x\n  [1] a footnote",
            " ".repeat(10),
            " ".repeat(17),
            "-".repeat(32)
        );
        let t = parse_table(&block).unwrap();
        assert_eq!(t.header, vec!["", "a", "b, c"]);
        assert_eq!(t.rows, vec![vec!["row one", "1.00 ms  [2 ms]", "x"]]);
        assert_eq!(t.foot, vec!["[1] a footnote"]);
        assert_eq!(
            cell("1.00 ms  [2 ms]"),
            "1.00 ms<span class=\"paper\">2 ms</span>"
        );
        assert!(parse_table("Shape\n  a: b\n  c: d").is_none());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_545_178), "2026-12-06 08:19:38 UTC");
    }
}
