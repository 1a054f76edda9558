//! The dashboard's HTML: one layout, escaping, and the small pieces every page uses. Pages
//! are plain server-rendered HTML with forms for actions: no script, no build step.

use chrono::{DateTime, Utc};
use std::fmt::Display;

/// Escape text for HTML content and attribute values.
pub fn esc(text: impl Display) -> String {
    let text = text.to_string();
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

/// Percent-encode a query-string value.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A time as operators read it (UTC, to the second); `—` for none.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "—".into())
}

/// A duration between two times, in ms or s.
pub fn took(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => {
            let ms = (to - from).num_milliseconds();
            if ms < 10_000 {
                format!("{ms} ms")
            } else {
                format!("{:.1} s", ms as f64 / 1000.0)
            }
        }
        _ => "—".into(),
    }
}

/// A state as a coloured badge (`class="state state-dead"`…).
pub fn badge(state: impl Display) -> String {
    let state = esc(state);
    format!(r#"<span class="state state-{state}">{state}</span>"#)
}

/// A POST button (a one-button form) to `action`.
pub fn button(action: &str, label: &str, class: &str) -> String {
    format!(
        r#"<form method="post" action="{}" class="inline"><button type="submit" class="{}">{}</button></form>"#,
        esc(action),
        esc(class),
        esc(label)
    )
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header a:hover{color:#fff}
header .who{margin-left:auto;font-size:.85rem;color:#9aa4b8}
main{padding:1rem 1.2rem}h1{font-size:1.3rem;margin:.2rem 0 1rem}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1rem}
th,td{border-bottom:1px solid #e3e6eb;padding:.35rem .5rem;text-align:left;font-size:.9rem;vertical-align:top}
th{background:#eef0f4}.num{text-align:right}
.state{padding:.1rem .45rem;border-radius:.6rem;font-size:.8rem;background:#e3e6eb}
.state-completed{background:#d4f2dc}.state-dead,.state-failed{background:#f8d3d3}
.state-running,.state-compensating{background:#d6e6fb}.state-retryable{background:#fbe9c7}
.state-cancelled{background:#e0e0e0}.state-available,.state-scheduled,.state-queued,.state-pending{background:#eef0f4}
.cards{display:flex;gap:.8rem;flex-wrap:wrap;margin-bottom:1rem}
.card{text-decoration:none;color:inherit;background:#fff;padding:.6rem 1rem;border-radius:.4rem;min-width:7rem}
.card b{display:block;font-size:1.4rem}
form.inline{display:inline}button{cursor:pointer;border:1px solid #9aa4b8;background:#fff;border-radius:.3rem;padding:.15rem .6rem}
button.danger{border-color:#c0392b;color:#c0392b}button.primary{border-color:#2d6cdf;color:#2d6cdf}
.filters{background:#fff;padding:.6rem;margin-bottom:1rem;display:flex;gap:.6rem;flex-wrap:wrap;align-items:end}
.filters label{font-size:.8rem;display:flex;flex-direction:column}
.bar{background:#e3e6eb;height:.7rem;border-radius:.35rem;position:relative;min-width:8rem}
.bar span{position:absolute;height:100%;border-radius:.35rem;background:#2d6cdf}
.error{color:#c0392b;white-space:pre-wrap;font-family:monospace;font-size:.8rem}
.notice{background:#fff8e1;padding:.5rem .8rem;margin-bottom:1rem}
pre{background:#fff;padding:.6rem;overflow:auto;font-size:.8rem}
"#;

/// A whole page: header with navigation, `body` in `<main>`.
pub fn page(title: &str, who: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · steward</title>
<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>
<header><b>steward</b><a href="/dashboard">Overview</a><a href="/dashboard/jobs">Jobs</a>
<a href="/dashboard/dead">Dead letters</a><a href="/dashboard/runs">Runs</a><a href="/dashboard/schedules">Schedules</a>
<span class="who">{who}</span>{logout}</header><main><h1>{title}</h1>{body}</main></body></html>"#,
        title = esc(title),
        who = esc(who),
        logout = if who.is_empty() {
            String::new()
        } else {
            button("/dashboard/logout", "Log out", "")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
