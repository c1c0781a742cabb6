//! A strict parser of the Prometheus / OpenMetrics text exposition, for
//! the tests that scrape berthd's metrics endpoint. It refuses what a
//! Prometheus server would refuse: malformed names, labels or values,
//! samples of a family with no `# TYPE`, a family declared twice, suffixes
//! that do not fit the family's type, histogram buckets that are not
//! cumulative or whose `+Inf` bucket is not the count, and (OpenMetrics)
//! anything after `# EOF`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail, ensure};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type (`counter`, `gauge`, `histogram`, ...).
    pub types: HashMap<String, String>,
    pub help: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match matching.as_slice() {
            [one] => Some(one.value),
            _ => None,
        }
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(v: &str) -> Result<f64> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            ensure!(
                v.bytes()
                    .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c)),
                "bad value {v:?}"
            );
            v.parse::<f64>().with_context(|| format!("bad value {v:?}"))
        }
    }
}

/// `{a="x",b="y"}` from the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').context("labels start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').context("label without =")?;
        let name = &rest[..eq];
        ensure!(valid_label_name(name), "bad label name {name:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .context("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => bail!("bad escape in label value: {other:?}"),
                },
                Some((_, '\n')) | None => bail!("unterminated label value"),
                Some((_, c)) => value.push(c),
            }
        };
        ensure!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} twice"
        );
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            ensure!(rest.starts_with('}'), "labels must be separated by ,");
        }
    }
}

/// Parses `text`; `openmetrics` also requires the final `# EOF`.
pub fn parse(text: &str, openmetrics: bool) -> Result<Exposition> {
    let mut exp = Exposition::default();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        ensure!(!eof, "{}: after # EOF", at());
        if line.is_empty() {
            ensure!(!openmetrics, "{}: empty line", at());
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("EOF") if comment == " EOF" => eof = true,
                Some("TYPE") => {
                    let name = parts.next().with_context(at)?;
                    let ty = parts.next().with_context(at)?;
                    ensure!(valid_metric_name(name), "{}: bad name", at());
                    ensure!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "untyped",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&ty),
                        "{}: bad type",
                        at()
                    );
                    ensure!(
                        exp.types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "{}: family declared twice",
                        at()
                    );
                }
                Some("HELP") => {
                    let name = parts.next().with_context(at)?;
                    exp.help
                        .insert(name.to_owned(), parts.next().unwrap_or_default().to_owned());
                }
                Some("UNIT") => {}
                _ => ensure!(!openmetrics, "{}: unknown comment", at()),
            }
            continue;
        }
        let name_end = line.find(|c: char| c == '{' || c == ' ').with_context(at)?;
        let name = &line[..name_end];
        ensure!(valid_metric_name(name), "{}: bad metric name", at());
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).with_context(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest.strip_prefix(' ').with_context(at)?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().with_context(at)?).with_context(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().with_context(at)?;
        }
        ensure!(fields.next().is_none(), "{}: trailing fields", at());
        // The family: the name itself or the name less a suffix its type allows.
        let family_ok = |family: &str, allowed: &[&str]| {
            exp.types
                .get(family)
                .is_some_and(|t| allowed.contains(&t.as_str()))
        };
        let ok = family_ok(name, &["gauge", "untyped", "unknown", "counter"])
            && !(openmetrics && exp.types.get(name).map(String::as_str) == Some("counter"))
            || ["_total", "_created"].iter().any(|suf| {
                name.strip_suffix(suf)
                    .is_some_and(|f| family_ok(f, &["counter"]))
            })
            || ["_bucket", "_count", "_sum", "_created"].iter().any(|suf| {
                name.strip_suffix(suf)
                    .is_some_and(|f| family_ok(f, &["histogram", "gaugehistogram"]))
            })
            || name
                .strip_suffix("_info")
                .is_some_and(|f| family_ok(f, &["info"]));
        ensure!(ok, "{}: sample of no declared family", at());
        if name.ends_with("_bucket") {
            ensure!(labels.contains_key("le"), "{}: bucket without le", at());
        }
        exp.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    ensure!(!openmetrics || eof, "no # EOF at the end");
    check_histograms(&exp)?;
    Ok(exp)
}

/// Buckets cumulative, ascending `le`, `+Inf` present and equal to `_count`.
fn check_histograms(exp: &Exposition) -> Result<()> {
    for (family, ty) in &exp.types {
        if ty != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let count = format!("{family}_count");
        // Series: the labels without `le`.
        let mut series: BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp.samples.iter().filter(|s| s.name == bucket) {
            let mut key: Vec<(String, String)> = s.labels.clone().into_iter().collect();
            key.retain(|(k, _)| k != "le");
            let le = parse_value(&s.labels["le"])?;
            series.entry(key).or_default().push((le, s.value));
        }
        for (key, buckets) in series {
            for w in buckets.windows(2) {
                ensure!(w[0].0 < w[1].0, "{family}{key:?}: le not ascending");
                ensure!(w[0].1 <= w[1].1, "{family}{key:?}: buckets not cumulative");
            }
            let last = buckets.last().context("no buckets")?;
            ensure!(last.0.is_infinite(), "{family}{key:?}: no +Inf bucket");
            let labels: BTreeMap<String, String> = key.into_iter().collect();
            let c = exp
                .samples
                .iter()
                .find(|s| s.name == count && s.labels == labels)
                .with_context(|| format!("{family}{labels:?}: no _count"))?;
            ensure!(
                c.value == last.1,
                "{family}{labels:?}: +Inf bucket {} != count {}",
                last.1,
                c.value
            );
        }
    }
    Ok(())
}
