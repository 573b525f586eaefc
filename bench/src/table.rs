//! Samples to percentiles, and the printed table of figures, comparisons and goals.

/// Percentiles of a set of samples (milliseconds), nearest rank.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut samples: Vec<f64>) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Stats {
            p50: at(0.5),
            p90: at(0.9),
            max: samples[samples.len() - 1],
        }
    }
}

/// Milliseconds, with the precision the figure deserves.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Named figures in milliseconds, as a row says them: "name 1.23, other 45.6".
pub fn named_ms(names: &[&str], values: &[f64]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n} {}", ms(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct Row {
    what: String,
    figure: String,
    compared: String,
    goal: String,
    met: Option<bool>,
}

impl Row {
    /// A figure held against a goal.
    pub fn goal(what: &str, figure: String, compared: String, goal: &str, met: bool) -> Row {
        Row {
            what: what.to_owned(),
            figure,
            compared,
            goal: goal.to_owned(),
            met: Some(met),
        }
    }

    /// A figure given for context (a baseline, a component, an alternative).
    pub fn info(what: &str, figure: String, compared: String) -> Row {
        Row {
            what: what.to_owned(),
            figure,
            compared,
            goal: String::new(),
            met: None,
        }
    }
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

/// Each measure returns its rows; the table takes them in the order they come.
impl Extend<Row> for Table {
    fn extend<I: IntoIterator<Item = Row>>(&mut self, rows: I) {
        self.rows.extend(rows);
    }
}

impl Table {
    pub fn missed(&self) -> usize {
        self.rows.iter().filter(|r| r.met == Some(false)).count()
    }

    /// A Markdown table, readable as is in a terminal.
    pub fn render(&self) -> String {
        let header = ["measure", "figure", "compared", "goal", "met"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.what.clone(),
                    r.figure.clone(),
                    r.compared.clone(),
                    r.goal.clone(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "**NO**".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| {
            let padded: Vec<String> = row
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let mut out = vec![
            line(&header.map(String::from)),
            format!(
                "|{}|",
                width
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
        ];
        out.extend(cells.iter().map(|r| line(r)));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Stats::of((1..=10).rev().map(f64::from).collect());
        assert_eq!((s.p50, s.p90, s.max), (5.0, 9.0, 10.0));
        let one = Stats::of(vec![3.0]);
        assert_eq!((one.p50, one.p90, one.max), (3.0, 3.0, 3.0));
    }

    #[test]
    fn the_table_marks_missed_goals() {
        let mut t = Table::default();
        t.extend([
            Row::goal("a", "1 ms".into(), String::new(), "< 2 ms", true),
            Row::goal("b", "3 ms".into(), String::new(), "< 2 ms", false),
            Row::info("c", "4 ms".into(), "base".into()),
        ]);
        assert_eq!(t.missed(), 1);
        let text = t.render();
        assert!(text.contains("| b ") && text.contains("**NO**"), "{text}");
        assert_eq!(text.lines().count(), 5);
    }
}
