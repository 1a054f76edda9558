//! The dashboard's HTML: one layout and the small pieces every page uses, written with maud,
//! which escapes every interpolated value (a payload, an error, a tenant's name) unless it is
//! wrapped in `PreEscaped`. Pages are server-rendered with forms for actions; one small script
//! (`live.js`) refreshes the parts of a page marked `data-live` without a reload.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::fmt::Display;

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
        (Some(from), Some(to)) => ms((to - from).num_milliseconds()),
        _ => "—".into(),
    }
}

/// Milliseconds as operators read them.
pub fn ms(ms: i64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// A state as a coloured badge (`class="state state-dead"`…).
pub fn badge(state: impl Display) -> Markup {
    let state = state.to_string();
    html! { span class={ "state state-" (state) } { (state) } }
}

/// A POST button (a one-button form) to `action`.
pub fn button(action: &str, label: &str, class: &str) -> Markup {
    html! {
        form method="post" action=(action) class="inline" {
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A progress bar from `left` to `left + width` (fractions of the whole).
pub fn bar(id: &str, left: f64, width: f64) -> Markup {
    let style = format!(
        "left:{:.1}%;width:{:.1}%",
        left * 100.0,
        (width * 100.0).max(0.5)
    );
    html! { div.bar id=(id) { span style=(style) {} } }
}

/// The notice after an action (`?done=…`), when there is one.
pub fn notice(text: Option<String>) -> Markup {
    html! { @if let Some(text) = text { p.notice id="notice" { (text) } } }
}

/// An SVG bar chart of values per minute, oldest first (`values.len()` bars), with a hover
/// title per bar.
pub fn minute_chart(id: &str, label: &str, values: &[i64], colour: &str) -> Markup {
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let (width, height) = (720.0, 100.0);
    let bar = width / values.len().max(1) as f64;
    let view = format!("0 0 {width} {}", height + 16.0);
    html! {
        svg id=(id) width=(width) height=(height + 16.0) viewBox=(view) role="img" aria-label=(label) {
            @for (i, n) in values.iter().enumerate() {
                @let h = height * (*n as f64) / (max as f64);
                rect x=(i as f64 * bar) y=(height - h) width=(bar - 2.0) height=(h) fill=(colour) {
                    title { (n) " · " (label) }
                }
            }
            text x="0" y=(height + 13.0) font-size="11" fill="#555" { "-" (values.len()) " min" }
            text x=(width) y=(height + 13.0) font-size="11" fill="#555" text-anchor="end" { "now · max " (max) "/min" }
        }
    }
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}
header a{color:#cfd6e4;text-decoration:none}header a:hover{color:#fff}
header .who{margin-left:auto;font-size:.85rem;color:#9aa4b8}
main{padding:1rem 1.2rem}h1{font-size:1.3rem;margin:.2rem 0 1rem}h2{font-size:1.05rem}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1rem}
th,td{border-bottom:1px solid #e3e6eb;padding:.35rem .5rem;text-align:left;font-size:.9rem;vertical-align:top}
th{background:#eef0f4}.num{text-align:right}
.state{padding:.1rem .45rem;border-radius:.6rem;font-size:.8rem;background:#e3e6eb}
.state-completed,.state-ENABLED,.state-active{background:#d4f2dc}.state-dead,.state-failed,.state-ERROR{background:#f8d3d3}
.state-running,.state-compensating,.state-UPGRADING,.state-PROVISIONING{background:#d6e6fb}.state-retryable,.state-PENDING_APPROVAL,.state-paused{background:#fbe9c7}
.state-cancelled,.state-compensated,.state-DISABLED,.state-SUSPENDED{background:#e0e0e0}.state-available,.state-scheduled,.state-queued,.state-pending{background:#eef0f4}
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
.pager{display:flex;gap:1rem;align-items:center}
.graph{display:flex;flex-wrap:wrap;gap:.4rem;align-items:stretch;margin-bottom:1rem}
.node{background:#fff;border:2px solid #cfd6e4;border-radius:.4rem;padding:.4rem .6rem;min-width:9rem;font-size:.85rem}
.node.comp{border-style:dashed}.arrow{align-self:center;color:#9aa4b8}
.level{display:flex;flex-direction:column;gap:.4rem;justify-content:center}
.node-completed{border-color:#5cb85c}.node-failed{border-color:#c0392b}.node-running{border-color:#2d6cdf}.node-compensated{border-color:#9aa4b8}
pre{background:#fff;padding:.6rem;overflow:auto;font-size:.8rem;margin:.2rem 0}
details{margin:.2rem 0}
"#;

/// A whole page: header with navigation, `body` in `<main>`.
pub fn layout(title: &str, who: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · steward" }
                meta name="viewport" content="width=device-width";
                style { (PreEscaped(STYLE)) }
                @if !who.is_empty() { script src="/dashboard/live.js" defer {} }
            }
            body {
                header {
                    b { "steward" }
                    a href="/dashboard" { "Overview" }
                    a href="/dashboard/queues" { "Queues" }
                    a href="/dashboard/jobs" { "Jobs" }
                    a href="/dashboard/dead" { "Dead letters" }
                    a href="/dashboard/runs" { "Runs" }
                    a href="/dashboard/workers" { "Workers" }
                    a href="/dashboard/modules" { "Modules" }
                    a href="/dashboard/audit" { "Audit" }
                    a href="/dashboard/schedules" { "Schedules" }
                    span.who { (who) }
                    @if !who.is_empty() { (button("/dashboard/logout", "Log out", "")) }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The script that keeps `data-live` parts of a page current: every 3 s it fetches the same
/// URL and swaps each such element (by id) for its fresh copy. It pauses while the tab is
/// hidden or a field of a live part has focus, and stops on an error answer (a logged-out
/// session gets the login page on its next navigation). No build step, no third-party code.
pub const LIVE_JS: &str = r#""use strict";
(function () {
  const live = () => document.querySelectorAll("[data-live][id]");
  if (!live().length) return;
  let timer = null;
  async function refresh() {
    if (document.hidden) return;
    const focused = document.activeElement;
    if (focused && focused.closest("[data-live]") && focused.matches("input,select,textarea")) return;
    let answer;
    try {
      answer = await fetch(location.href, { credentials: "same-origin", redirect: "manual" });
    } catch (e) { return; }
    if (!answer.ok) { clearInterval(timer); return; }
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    for (const part of live()) {
      const next = fresh.getElementById(part.id);
      if (next) part.replaceWith(document.importNode(next, true));
    }
    document.documentElement.dataset.liveAt = String(Date.now());
  }
  timer = setInterval(refresh, 3000);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolated_text_is_escaped() {
        let markup = html! { p title=(r#"x" onclick="y"#) { (r#"<a href="x">'&'</a>"#) } };
        assert_eq!(
            markup.into_string(),
            r#"<p title="x&quot; onclick=&quot;y">&lt;a href=&quot;x&quot;&gt;'&amp;'&lt;/a&gt;</p>"#
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
