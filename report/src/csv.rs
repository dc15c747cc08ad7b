//! The raw measurements as CSV, for spreadsheets and notebooks.

use crate::measurement::Measurement;

pub(crate) const HEADER: &str = "scenario,metric,mode,partitions,run,value,unit";

/// Header plus one row per measurement. Fields are quoted as RFC 4180 says
/// (a field with a comma, quote or line break goes in double quotes, its
/// quotes doubled); lines end in "\n" so shell tools read them cleanly.
/// Values use Rust's shortest exact form, so they read back unchanged.
pub fn to_csv(measurements: &[Measurement]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for m in measurements {
        let fields = [
            field(&m.scenario),
            field(&m.metric),
            m.mode.label().into(),
            m.partitions.to_string(),
            m.run.to_string(),
            m.value.to_string(),
            field(&m.unit),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measurement::Mode;
    use crate::test_support::m;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(field("plain text (defaults)"), "plain text (defaults)");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field(""), "");
    }

    #[test]
    fn rows_follow_the_header() {
        let mut odd = m("create, then \"delete\"", "done", Mode::Kraft, 100, 2, 12.5);
        odd.unit = "offsets/s".into();
        let text = to_csv(&[m("failover", "elected", Mode::Zk, 10, 1, 40.0), odd]);
        assert_eq!(
            text,
            "scenario,metric,mode,partitions,run,value,unit\n\
             failover,elected,zk,10,1,40,ms\n\
             \"create, then \"\"delete\"\"\",done,kraft,100,2,12.5,offsets/s\n"
        );
        assert_eq!(to_csv(&[]), format!("{HEADER}\n"));
    }
}
