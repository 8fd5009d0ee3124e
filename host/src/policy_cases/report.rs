//! Case results, and how they read on a terminal.

use std::fmt::Write;
use std::time::Duration;

use flockd_core::Plan;
use flockd_wasm::CacheOutcome;
use flockd_wasm::engine::LogLevel;

#[derive(Clone, Debug)]
pub struct CaseOutcome {
    pub name: String,
    /// Each way the result differs from the expectation; empty when it passed.
    pub mismatches: Vec<String>,
    /// The plan the policy returned, or why the call failed.
    pub result: Result<Plan, String>,
    /// The call ran out of time (its deadline, not the policy, failed it).
    pub timed_out: bool,
    pub logs: Vec<(LogLevel, String)>,
    pub elapsed: Duration,
}

impl CaseOutcome {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct FileOutcome {
    pub source: String,
    /// The policy as the file named it.
    pub policy: String,
    /// Content digest of the component that ran.
    pub digest: String,
    /// How the compile cache served the component (`None`: no cache).
    pub cache: Option<CacheOutcome>,
    pub cases: Vec<CaseOutcome>,
}

impl FileOutcome {
    pub fn all_passed(&self) -> bool {
        self.cases.iter().all(CaseOutcome::passed)
    }

    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }

    /// One line per case, and under each failure what differed, the plan the
    /// policy actually returned (with reasons) and what it logged.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let cache = match self.cache {
            Some(CacheOutcome::Hit) => "; from the compile cache",
            Some(CacheOutcome::Miss | CacheOutcome::Rebuilt) => "; compiled and cached",
            Some(CacheOutcome::Uncached) | None => "",
        };
        let _ = writeln!(out, "{} ({}, version {}{cache})", self.source, self.policy, self.digest);
        // A call that ran out of time fails the same way on a loaded
        // machine as a wrong policy does: say how to give it longer.
        let deadline = self.cases.iter().any(|c| c.timed_out && !c.passed());
        for case in &self.cases {
            if case.passed() {
                let _ = writeln!(out, "  ok      {}", case.name);
                continue;
            }
            let _ = writeln!(out, "  FAILED  {}", case.name);
            for mismatch in &case.mismatches {
                let _ = writeln!(out, "          - {mismatch}");
            }
            match &case.result {
                Ok(plan) => {
                    let _ = writeln!(out, "          actual plan:");
                    if plan.is_empty() {
                        let _ = writeln!(out, "            (empty)");
                    }
                    for l in &plan.launches {
                        let _ = writeln!(out, "            launch {} × {}: {}", l.count, l.resource, l.reason);
                    }
                    for t in &plan.terminations {
                        let _ = writeln!(out, "            terminate {} ({:?}): {}", t.instance, t.cause, t.reason);
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "          call failed: {e}");
                }
            }
            if !case.logs.is_empty() {
                let _ = writeln!(out, "          policy log:");
                for (level, line) in &case.logs {
                    let _ = writeln!(out, "            {level:?}: {line}");
                }
            }
        }
        let _ = writeln!(
            out,
            "  {} cases: {} ok, {} FAILED",
            self.cases.len(),
            self.cases.len() - self.failed(),
            self.failed()
        );
        if deadline {
            let _ = writeln!(
                out,
                "  a call ran out of time: on a busy machine or for a large policy (Python, JavaScript) give it longer with --timeout-ms (the config's [[policy]] timeout-ms)"
            );
        }
        out
    }
}

/// A case file's outcome, or why it could not run (keyed by the file as named).
pub type FileResult = (String, Result<FileOutcome, String>);

/// `policy test --format json`: one object per case file.
pub fn json(results: &[FileResult]) -> serde_json::Value {
    let files: Vec<serde_json::Value> = results
        .iter()
        .map(|(file, result)| match result {
            Err(e) => serde_json::json!({ "file": file, "error": e }),
            Ok(o) => serde_json::json!({
                "file": file,
                "policy": o.policy,
                "version": o.digest,
                "passed": o.all_passed(),
                "cases": o.cases.iter().map(|c| serde_json::json!({
                    "name": c.name,
                    "passed": c.passed(),
                    "mismatches": c.mismatches,
                    "error": c.result.as_ref().err(),
                    "timed-out": c.timed_out,
                    "elapsed-ms": c.elapsed.as_secs_f64() * 1e3,
                })).collect::<Vec<_>>(),
            }),
        })
        .collect();
    serde_json::json!({ "files": files })
}

/// `policy test --format junit`: JUnit XML, a test suite per case file (a
/// file that cannot run is one errored test), as CI systems read it.
pub fn junit(results: &[FileResult]) -> String {
    let mut out =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"flockd policy test\">\n");
    for (file, result) in results {
        match result {
            Err(e) => {
                let _ = writeln!(out, "  <testsuite name=\"{}\" tests=\"1\" failures=\"0\" errors=\"1\">", xml(file));
                let _ = writeln!(
                    out,
                    "    <testcase name=\"load\" classname=\"{}\"><error message=\"{}\"/></testcase>",
                    xml(file),
                    xml(e)
                );
            }
            Ok(o) => {
                let _ = writeln!(
                    out,
                    "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\">",
                    xml(file),
                    o.cases.len(),
                    o.failed()
                );
                for c in &o.cases {
                    let head = format!(
                        "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.6}\"",
                        xml(&c.name),
                        xml(&o.policy),
                        c.elapsed.as_secs_f64()
                    );
                    if c.passed() {
                        let _ = writeln!(out, "{head}/>");
                    } else {
                        let mut detail = c.mismatches.join("\n");
                        if let Err(e) = &c.result {
                            detail.push_str(&format!("\ncall failed: {e}"));
                        }
                        let message = c.mismatches.first().map_or("failed", String::as_str);
                        let _ = writeln!(
                            out,
                            "{head}><failure message=\"{}\">{}</failure></testcase>",
                            xml(message),
                            xml(&detail)
                        );
                    }
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Text as XML attribute or element content.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters, even escaped.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(timed_out: bool, result: Result<Plan, String>) -> FileOutcome {
        let case = CaseOutcome {
            name: "c".into(),
            mismatches: vec!["expected a plan".into()],
            result,
            timed_out,
            logs: vec![],
            elapsed: Duration::ZERO,
        };
        FileOutcome {
            source: "cases.toml".into(),
            policy: "p.wasm".into(),
            digest: "d".into(),
            cache: None,
            cases: vec![case],
        }
    }

    #[test]
    fn a_case_that_ran_out_of_time_says_how_to_give_it_longer() {
        let timed_out = outcome(true, Err("timed out after 50ms (deadline exceeded)".into())).render();
        assert!(timed_out.contains("--timeout-ms"), "{timed_out}");
        let wrong = outcome(false, Err("the policy said no".into())).render();
        assert!(!wrong.contains("--timeout-ms"), "{wrong}");
    }

    #[test]
    fn junit_escapes_what_a_policy_wrote_and_counts_failures() {
        let mut failed = outcome(false, Err("<boom> & \"quotes\"\u{1}".into()));
        failed.cases[0].name = "a < b".into();
        let xml = junit(&[("cases.toml".into(), Ok(failed)), ("bad.toml".into(), Err("cannot read".into()))]);
        assert!(xml.contains(r#"<testsuite name="cases.toml" tests="1" failures="1" errors="0">"#), "{xml}");
        assert!(xml.contains(r#"name="a &lt; b""#), "{xml}");
        assert!(xml.contains("call failed: &lt;boom&gt; &amp; &quot;quotes&quot;\u{fffd}"), "{xml}");
        assert!(xml.contains(r#"<error message="cannot read"/>"#), "{xml}");
        assert_eq!(xml.matches("<testsuite ").count(), xml.matches("</testsuite>").count(), "{xml}");
    }
}
