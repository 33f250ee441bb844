//! The status page (`/` on the admin listener): one self-contained HTML page, no scripts,
//! that reloads itself every 5 s. Its numbers are read from the same OpenMetrics text
//! `/metrics` serves, so the page and Prometheus never disagree. Rates are taken over at
//! least [`RATE_WINDOW`] between renderings (a second viewer does not shorten it).

use crate::control::Audit;
use crate::lifecycle::CohortView;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

/// How often the page reloads itself, seconds.
pub const REFRESH_S: u32 = 5;

/// One sample's counters, for rates.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    received: f64,
    acked: f64,
    records: BTreeMap<String, f64>,
    /// Acknowledged per isolation group.
    group_acked: BTreeMap<String, f64>,
}

/// Shortest span a rate is taken over.
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(4);

/// Counters of recent renderings, oldest first.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<std::collections::VecDeque<Sample>>,
}

impl Rates {
    /// Keep `now`; the sample to take rates against: the newest at least [`RATE_WINDOW`]
    /// old, else the oldest there is.
    fn base(&self, now: &Sample) -> Option<Sample> {
        let mut samples = self.samples.lock().ok()?;
        let base = samples
            .iter()
            .rev()
            .find(|s| now.at.duration_since(s.at) >= RATE_WINDOW)
            .or(samples.front())
            .cloned();
        // Older than what any rate needs: drop, keeping the newest such one.
        while samples.len() > 1 && now.at.duration_since(samples[1].at) >= RATE_WINDOW {
            samples.pop_front();
        }
        samples.push_back(now.clone());
        base
    }
}

/// Series of an OpenMetrics text: (name, labels) → value.
#[derive(Debug, Default)]
pub struct Series(Vec<(String, BTreeMap<String, String>, f64)>);

impl Series {
    /// Parse the exposition (comments and unparsable lines are skipped).
    pub fn parse(text: &str) -> Series {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            out.push((name.to_owned(), labels, value));
        }
        Series(out)
    }

    /// The value of an unlabelled series (0 when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, l, _)| n == name && l.is_empty())
            .map_or(0.0, |s| s.2)
    }

    /// Every series named `name`, with its labels.
    pub fn all<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(n, _, _)| n == name)
            .map(|(_, l, v)| (l, *v))
    }
}

/// Every series `name` by the value of its label `label`.
fn by_label(s: &Series, name: &str, label: &str) -> BTreeMap<String, f64> {
    s.all(name)
        .filter_map(|(l, v)| Some((l.get(label)?.clone(), v)))
        .collect()
}

/// `k="v",k2="v2"` (values without escaped quotes, which weir's labels never have).
fn labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.trim().to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// Text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A count as the page shows it (integers without decimals).
fn num(v: f64) -> String {
    // An empty sum is -0.
    let v = v + 0.0;
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn when(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// What the page shows besides the metrics.
#[derive(Debug)]
pub struct Page<'a> {
    /// The MQTT client id (names the process).
    pub process: &'a str,
    /// `None` when ready, else why not.
    pub not_ready: Option<String>,
    /// Cohorts and their live versions.
    pub cohorts: &'a [CohortView],
    /// Recent promotes and rollbacks, newest last.
    pub changes: &'a [Audit],
}

impl Rates {
    /// Render the page from the metrics text `metrics`.
    pub fn render(&self, page: &Page<'_>, metrics: &str) -> String {
        let s = Series::parse(metrics);
        let now = Sample {
            at: Instant::now(),
            received: s.get("weir_received_total"),
            acked: s.get("weir_acked_total"),
            records: by_label(&s, "weir_records_total", "cohort"),
            group_acked: by_label(&s, "weir_ack_seconds_count", "group"),
        };
        let previous = self.base(&now);
        let v = View { s, now, previous };
        let mut h = String::with_capacity(8 << 10);
        head(&mut h, page);
        messages(&mut h, &v);
        groups(&mut h, &v);
        cohorts(&mut h, &v, page);
        quarantined(&mut h, &v);
        changes(&mut h, page);
        h
    }
}

/// The metrics now and the sample rates are taken against.
struct View {
    s: Series,
    now: Sample,
    previous: Option<Sample>,
}

impl View {
    /// The rate of `f` per second since the earlier sample, or a dash without one.
    fn rate(&self, f: &dyn Fn(&Sample) -> f64) -> String {
        match &self.previous {
            Some(p) if self.now.at > p.at => {
                let dt = (self.now.at - p.at).as_secs_f64();
                format!("{:.1}/s", ((f(&self.now) - f(p)) / dt).max(0.0))
            }
            _ => "–".to_owned(),
        }
    }

    /// A per-group series' value for `group` (0 without one).
    fn of(&self, name: &str, group: &str) -> f64 {
        self.s
            .all(name)
            .find(|(l, _)| l.get("group").map(String::as_str) == Some(group))
            .map_or(0.0, |(_, v)| v)
    }
}

/// The document head and the title line with readiness.
fn head(h: &mut String, page: &Page<'_>) {
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_S}\"><title>weir · {process}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}h1{{font-size:1.3em}}h2{{font-size:1.05em;margin-top:1.5em}}\
         table{{border-collapse:collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         .ok{{color:#186a3b}}.bad{{color:#a93226;font-weight:bold}}code{{font-size:.9em}}</style></head><body>",
        process = esc(page.process)
    );
    let state = match &page.not_ready {
        None => "<span class=\"ok\" id=\"ready\">ready</span>".to_owned(),
        Some(why) => format!(
            "<span class=\"bad\" id=\"ready\">not ready: {}</span>",
            esc(why)
        ),
    };
    let _ = write!(
        h,
        "<h1>weir <code>{}</code> — {state}</h1><p>Reloads every {REFRESH_S} s; the numbers are those of <a href=\"/metrics\">/metrics</a>.</p>",
        esc(page.process)
    );
}

/// Messages received, acknowledged, in flight, reconnects, stuck writes.
fn messages(h: &mut String, v: &View) {
    let oldest = v.s.get("weir_oldest_unacked_seconds");
    let stuck = v.s.get("weir_kafka_stuck_writes");
    let rows = [
        (
            "received",
            "received",
            num(v.now.received),
            v.rate(&|x| x.received),
        ),
        (
            "acked",
            "acknowledged",
            num(v.now.acked),
            v.rate(&|x| x.acked),
        ),
        (
            "in_flight",
            "in flight",
            num(v.s.get("weir_in_flight")),
            String::new(),
        ),
        (
            "oldest_unacked",
            "oldest unacknowledged, s",
            num(oldest),
            String::new(),
        ),
        (
            "reconnects",
            "MQTT reconnects",
            num(v.s.get("weir_mqtt_reconnects_total")),
            String::new(),
        ),
        ("stuck", "Kafka writes stuck", num(stuck), String::new()),
    ];
    h.push_str("<h2>Messages</h2><table>");
    for (id, label, value, rate) in rows {
        let _ = write!(
            h,
            "<tr><th>{label}</th><td class=\"n\" id=\"{id}\">{value}</td><td class=\"n\" id=\"{id}-rate\">{rate}</td></tr>"
        );
    }
    h.push_str("</table>");
}

/// One row per isolation group: its session, in flight, acknowledged, slots.
fn groups(h: &mut String, v: &View) {
    h.push_str("<h2>Isolation groups</h2><table><tr><th>group</th><th>MQTT session</th><th>in flight</th><th>oldest unacknowledged, s</th><th>acknowledged</th><th>rate</th><th>scale-out slots</th></tr>");
    for (l, ready) in v.s.all("weir_group_ready") {
        let Some(group) = l.get("group") else {
            continue;
        };
        let name = esc(group);
        let session = if ready == 1.0 {
            "<span class=\"ok\">connected</span>"
        } else {
            "<span class=\"bad\">not connected and subscribed</span>"
        };
        let acked = v.now.group_acked.get(group).copied().unwrap_or(0.0);
        let group_rate = v.rate(&|x| x.group_acked.get(group).copied().unwrap_or(0.0));
        // Which process holds which slot, as the slots group last described itself.
        let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (l, _) in v.s.all("weir_slot_holder") {
            if l.get("group") == Some(group)
                && let (Some(slot), Some(process)) = (l.get("slot"), l.get("process"))
            {
                holders.entry(process).or_default().push(slot);
            }
        }
        let slots = if holders.is_empty() {
            "—".to_owned()
        } else {
            let held = v.of("weir_slots_held", group);
            let all: Vec<String> = holders
                .iter()
                .map(|(p, slots)| format!("{}: {}", esc(p), slots.join(", ")))
                .collect();
            format!("{} here; {}", num(held), all.join("; "))
        };
        let _ = write!(
            h,
            "<tr><td>{name}</td><td id=\"session-{name}\">{session}</td><td class=\"n\" id=\"in_flight-{name}\">{}</td><td class=\"n\" id=\"oldest-{name}\">{}</td><td class=\"n\" id=\"acked-{name}\">{}</td><td class=\"n\" id=\"acked-{name}-rate\">{group_rate}</td><td id=\"slots-{name}\">{slots}</td></tr>",
            num(v.of("weir_group_in_flight", group)),
            num(v.of("weir_group_oldest_unacked_seconds", group)),
            num(acked),
        );
    }
    h.push_str("</table>");
}

/// One row per cohort: its version, pin, records and quarantine counts.
fn cohorts(h: &mut String, v: &View, page: &Page<'_>) {
    h.push_str("<h2>Cohorts</h2><table><tr><th>cohort</th><th>group</th><th>version</th><th>sha256</th><th>pinned</th><th>records</th><th>rate</th><th>quarantined</th><th>output topic</th></tr>");
    for c in page.cohorts {
        let records = v.now.records.get(&c.cohort).copied().unwrap_or(0.0);
        let quarantined: f64 =
            v.s.all("weir_quarantined_total")
                .filter(|(l, _)| l.get("cohort") == Some(&c.cohort))
                .map(|(_, v)| v)
                .sum();
        let pinned = match (&c.since_ms, &c.by) {
            (Some(ms), Some(by)) => format!("{} by {}", when(*ms), esc(by)),
            _ => "weir.toml".to_owned(),
        };
        let name = esc(&c.cohort);
        let cohort_rate = v.rate(&|x| x.records.get(&c.cohort).copied().unwrap_or(0.0));
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td id=\"version-{name}\">{}</td><td><code>{}</code></td><td>{pinned}</td><td class=\"n\" id=\"records-{name}\">{}</td><td class=\"n\" id=\"records-{name}-rate\">{cohort_rate}</td><td class=\"n\" id=\"quarantined-{name}\">{}</td><td>{}</td></tr>",
            esc(&c.group),
            esc(&format!("{}@{}", c.plugin.name, c.plugin.version)),
            esc(c.plugin.sha256.get(..12).unwrap_or(&c.plugin.sha256)),
            num(records),
            num(quarantined),
            esc(&c.output_topic),
        );
    }
    h.push_str("</table>");
}

/// Quarantine entries by cohort, code and stage.
fn quarantined(h: &mut String, v: &View) {
    h.push_str("<h2>Quarantined by code</h2><table><tr><th>cohort</th><th>code</th><th>stage</th><th>count</th></tr>");
    let mut any = false;
    for (l, v) in v.s.all("weir_quarantined_total") {
        any = true;
        let get = |k: &str| esc(l.get(k).map_or("-", String::as_str));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\" id=\"q-{}-{}\">{}</td></tr>",
            get("cohort"),
            get("code"),
            get("stage"),
            get("cohort"),
            get("code"),
            num(v)
        );
    }
    if !any {
        h.push_str("<tr><td colspan=\"4\">nothing quarantined</td></tr>");
    }
    h.push_str("</table>");
}

/// The recent promotes and rollbacks.
fn changes(h: &mut String, page: &Page<'_>) {
    h.push_str("<h2>Recent promotes and rollbacks</h2><table><tr><th>when</th><th>cohort</th><th>action</th><th>version</th><th>by</th></tr>");
    if page.changes.is_empty() {
        h.push_str("<tr><td colspan=\"5\">none</td></tr>");
    }
    for a in page.changes.iter().rev() {
        let _ = write!(
            h,
            "<tr class=\"change\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(a.at_ms),
            esc(a.cohort.as_deref().unwrap_or("-")),
            esc(a.action.as_str()),
            esc(&a.plugin),
            esc(&a.by)
        );
    }
    h.push_str("</table></body></html>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_span_at_least_the_window() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let at = |s: u64, received: f64| Sample {
            at: t0 + std::time::Duration::from_secs(s),
            received,
            acked: 0.0,
            records: BTreeMap::new(),
            group_acked: BTreeMap::new(),
        };
        assert!(rates.base(&at(0, 0.0)).is_none());
        // One second later, the only sample there is.
        assert_eq!(rates.base(&at(1, 10.0)).unwrap().received, 0.0);
        // Five seconds in: the newest sample at least four seconds old.
        assert_eq!(rates.base(&at(5, 50.0)).unwrap().received, 10.0);
        assert_eq!(rates.base(&at(6, 60.0)).unwrap().received, 10.0);
        assert_eq!(rates.base(&at(10, 100.0)).unwrap().received, 60.0);
        assert!(rates.samples.lock().unwrap().len() <= 3);
    }

    #[test]
    fn series_are_read_from_the_exposition() {
        let s = Series::parse(
            "# TYPE weir_received counter\nweir_received_total 12\nweir_quarantined_total{cohort=\"t\",code=\"payload.malformed\",stage=\"transform\"} 3\n# EOF\n",
        );
        assert_eq!(s.get("weir_received_total"), 12.0);
        let q: Vec<_> = s.all("weir_quarantined_total").collect();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0["code"], "payload.malformed");
        assert_eq!(q[0].0["stage"], "transform");
        assert_eq!(q[0].1, 3.0);
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
