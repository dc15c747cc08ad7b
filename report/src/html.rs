//! The report as one self-contained HTML page: inline CSS, inline SVG, no
//! scripts, nothing fetched — it can be mailed or attached to an issue.

use std::fmt::Write as _;

use crate::report::Report;
use crate::stats::Summary;
use crate::table::{format_value, rows, HEADERS};

/// A chart as the page shows it.
pub(crate) struct Chart {
    pub slug: String,
    pub title: String,
    pub svg: String,
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: bold; }
dl.facts dd { margin: 0; }
code { background: #f4f4f4; padding: 0.1em 0.3em; word-break: break-all; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
svg { max-width: 100%; height: auto; }
.hint { color: #666; }
";

/// Builds the page. `summaries` and `charts` come from `report.measurements`.
pub(crate) fn page(report: &Report, summaries: &[Summary], charts: &[Chart]) -> String {
    let mut html = String::new();
    let title = escape(&report.title);
    // Writing to a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );

    let machine = &report.machine;
    let cores = if machine.cores == 0 {
        "unknown number of".to_owned()
    } else {
        machine.cores.to_string()
    };
    let memory = if machine.memory_bytes == 0 {
        "unknown".to_owned()
    } else {
        format_value(machine.memory_bytes as f64, "bytes")
    };
    let _ = write!(
        html,
        "<dl class=\"facts\">\n\
         <dt>Command</dt><dd><code>{}</code></dd>\n\
         <dt>Started</dt><dd>{}</dd>\n\
         <dt>Machine</dt><dd>{} cores, {} memory, {}, kernel {}</dd>\n\
         </dl>\n",
        escape(&report.command),
        escape(&report.started_at),
        escape(&cores),
        escape(&memory),
        escape(&machine.os),
        escape(&machine.kernel),
    );

    if !report.settings.is_empty() {
        html.push_str("<h2>Settings</h2>\n");
        for (mode, settings) in &report.settings {
            let _ = writeln!(html, "<h3>{} mode</h3>", escape(&mode.to_string()));
            if settings.is_empty() {
                html.push_str("<p>No settings recorded.</p>\n");
                continue;
            }
            html.push_str("<table>\n<tr><th>Setting</th><th>Value</th></tr>\n");
            for (name, value) in settings {
                let _ = writeln!(
                    html,
                    "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    escape(name),
                    escape(value)
                );
            }
            html.push_str("</table>\n");
        }
    }

    if !report.notes.is_empty() {
        html.push_str("<h2>Notes</h2>\n");
        for note in &report.notes {
            let _ = writeln!(html, "<p>{}</p>", escape(note));
        }
    }

    html.push_str("<h2>Summary</h2>\n");
    if summaries.is_empty() {
        html.push_str("<p>No measurements.</p>\n");
    } else {
        summary_table(&mut html, summaries);
    }

    if !charts.is_empty() {
        html.push_str(
            "<h2>Charts</h2>\n<p class=\"hint\">Each dot is one run (ZooKeeper hollow, \
             KRaft filled); the lines join each mode's medians.</p>\n",
        );
        for chart in charts {
            let _ = write!(
                html,
                "<section id=\"{}\">\n<h3>{}</h3>\n{}\n</section>\n",
                escape(&chart.slug),
                escape(&chart.title),
                chart.svg.trim_end()
            );
        }
    }

    html.push_str(
        "<p class=\"hint\">Raw data: <code>results.json</code> and <code>results.csv</code> \
         beside this page.</p>\n</body>\n</html>\n",
    );
    html
}

fn summary_table(html: &mut String, summaries: &[Summary]) {
    html.push_str("<table>\n<tr>");
    for (i, header) in HEADERS.iter().enumerate() {
        let class = if i >= 2 { " class=\"num\"" } else { "" };
        let _ = write!(html, "<th{class}>{}</th>", escape(header));
    }
    html.push_str("</tr>\n");
    for row in rows(summaries) {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&row.scenario),
            escape(&row.metric),
            escape(&row.partitions),
            escape(&row.zk),
            escape(&row.kraft),
            escape(&row.ratio),
        );
    }
    html.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain — text"), "plain — text");
    }
}
