//! Reading the agent's `/metrics` text.

use std::collections::BTreeMap;

/// One sample: metric name (as exposed, e.g. `..._total`), labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Name as exposed.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Every sample, in exposition order.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses OpenMetrics/Prometheus text exposition (no escapes in label values).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("bad sample line {l:?}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => {
                        let body = rest
                            .strip_suffix('}')
                            .unwrap_or_else(|| panic!("bad labels in {l:?}"));
                        let labels = body
                            .split(',')
                            .filter(|kv| !kv.is_empty())
                            .map(|kv| {
                                let (k, v) = kv
                                    .split_once('=')
                                    .unwrap_or_else(|| panic!("bad label in {l:?}"));
                                (k.to_owned(), v.trim_matches('"').to_owned())
                            })
                            .collect();
                        (name.to_owned(), labels)
                    }
                    None => (series.to_owned(), BTreeMap::new()),
                };
                Sample {
                    name,
                    labels,
                    value,
                }
            })
            .collect();
        Self { samples }
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// True when some sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Non-zero samples of `name`, for messages and tables.
    pub fn nonzero(&self, name: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.value != 0.0)
            .collect()
    }
}
