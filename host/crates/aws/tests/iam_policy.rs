//! Keeps the IAM policy in `docs/clouds.md` honest. The first ```json block
//! of that page is the policy a platform engineer attaches to flockd; the
//! EC2 actions it allows must be exactly the EC2 operations the provider's
//! source calls (`client.<operation>()`), plus the actions EC2 authorizes
//! inside one of those calls ([`IMPLIED`]). A call the policy misses fails
//! in production with UnauthorizedOperation; an action it allows that no
//! call needs is a privilege nobody uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flockd_core::naming::tags;
use serde_json::Value;

/// Actions EC2 authorizes as part of another call, not as calls of their
/// own: (action, the source text that makes it needed, why). Each is
/// required while that text is in the provider's source, and allowed only
/// then.
const IMPLIED: &[(&str, &str, &str)] = &[(
    "ec2:CreateTags",
    ".tag_specifications(",
    "RunInstances tags the instance and its volumes at creation (TagSpecifications), \
     and EC2 authorizes those tags as ec2:CreateTags",
)];

/// Methods of the SDK's `Client` that are not EC2 operations.
const NOT_OPERATIONS: &[&str] = &["clone", "config", "from_conf", "new", "with_config"];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docs_page() -> PathBuf {
    let path = crate_dir().join("../../../docs/clouds.md");
    path.canonicalize().unwrap_or(path)
}

/// The text of the first ```json block of a Markdown page.
fn first_json_block(markdown: &str) -> Option<String> {
    let mut lines = markdown.lines();
    lines.by_ref().find(|line| line.trim() == "```json")?;
    let mut block = String::new();
    for line in lines {
        if line.trim() == "```" {
            return Some(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    None
}

/// The policy document from `docs/clouds.md`.
fn policy() -> Value {
    let path = docs_page();
    let page = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json = first_json_block(&page)
        .unwrap_or_else(|| panic!("{} has no ```json block: the IAM policy must be its first one", path.display()));
    serde_json::from_str(&json).unwrap_or_else(|e| {
        panic!("the first ```json block of {} is not valid JSON ({e}): it must be the IAM policy", path.display())
    })
}

/// The policy's statements, whether `Statement` is one object or a list.
fn statements(policy: &Value) -> Vec<&Value> {
    match &policy["Statement"] {
        Value::Array(list) => list.iter().collect(),
        Value::Object(_) => vec![&policy["Statement"]],
        other => panic!("the policy's Statement is neither an object nor a list: {other}"),
    }
}

/// A string or a list of strings, as IAM writes `Action` and `Resource`.
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(list) => list.iter().map(|v| v.as_str().expect("a list of strings")).collect(),
        Value::Null => vec![],
        other => panic!("expected a string or a list of strings, got {other}"),
    }
}

/// Every `ec2:` action an Allow statement grants. A wildcard or a NotAction
/// could grant anything, so either fails the test.
fn allowed_ec2_actions(policy: &Value) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for statement in statements(policy) {
        let sid = statement["Sid"].as_str().unwrap_or("(no Sid)");
        assert!(statement.get("NotAction").is_none(), "statement {sid} uses NotAction: list the actions instead");
        if statement["Effect"].as_str() != Some("Allow") {
            continue;
        }
        for action in strings(&statement["Action"]) {
            assert!(!action.contains(['*', '?']), "statement {sid} allows {action:?}: name each action, no wildcards");
            if action.to_ascii_lowercase().starts_with("ec2:") {
                actions.insert(action.to_owned());
            }
        }
    }
    actions
}

/// The provider's source files, `src/**/*.rs`, by path relative to the crate.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let name = path.strip_prefix(crate_dir()).unwrap().display().to_string();
                out.insert(name, strip_comments(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&crate_dir().join("src"), &mut out);
    assert!(!out.is_empty(), "no source files found under {}", crate_dir().join("src").display());
    out
}

/// Rust source without its comments (a `client.x()` in a doc comment is not
/// a call). String and char literals are kept as they are.
fn strip_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            ('"', _) => {
                out.push('"');
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        out.push(chars[i]);
                        i += 1;
                    }
                    out.push(chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    out.push('"');
                    i += 1;
                }
            }
            // A char literal such as '"' or '\'' (a lifetime has no closing quote).
            ('\'', Some(c)) if c == '\\' || chars.get(i + 2) == Some(&'\'') => {
                let from = if c == '\\' { i + 3 } else { i + 2 };
                let end = (from..chars.len()).find(|&j| chars[j] == '\'').unwrap_or(chars.len() - 1);
                out.extend(&chars[i..=end]);
                i = end + 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The methods called on anything named `client` (`self.client` or a
/// `client: &Client` parameter): `client.describe_instances()`, also with
/// the dot on the next line, as rustfmt breaks long chains.
fn client_calls(source: &str) -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    for (at, _) in source.match_indices("client") {
        if source[..at].chars().next_back().is_some_and(is_ident) {
            continue; // http_client, aws_smithy_http_client
        }
        let rest = source[at + "client".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('.') else { continue };
        let rest = rest.trim_start();
        let method: String = rest.chars().take_while(|&c| is_ident(c)).collect();
        if method.is_empty() || !rest[method.len()..].trim_start().starts_with('(') {
            continue; // a field, not a call
        }
        if !NOT_OPERATIONS.contains(&method.as_str()) {
            calls.insert(method);
        }
    }
    calls
}

/// `run_instances` → `RunInstances`.
fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// `ec2:<Operation>` → the source files that call it.
fn called_operations(sources: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    let mut called: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (file, source) in sources {
        for method in client_calls(source) {
            called.entry(format!("ec2:{}", pascal_case(&method))).or_default().push(file.clone());
        }
    }
    called
}

/// The operation names the provider puts in its errors, `classify("Op", e)`.
fn classified_operations(sources: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for source in sources.values() {
        for (at, _) in source.match_indices("classify(\"") {
            let rest = &source[at + "classify(\"".len()..];
            named.insert(format!("ec2:{}", &rest[..rest.find('"').unwrap()]));
        }
    }
    named
}

#[test]
fn the_policy_allows_exactly_the_ec2_operations_the_provider_calls() {
    let sources = sources();
    let called = called_operations(&sources);
    assert!(
        called.contains_key("ec2:RunInstances"),
        "the scan found no client.run_instances() call in src/ (found: {:?}): fix the scanner in this test",
        called.keys().collect::<Vec<_>>()
    );
    let mut required: BTreeMap<String, String> =
        called.iter().map(|(action, files)| (action.clone(), format!("called in {}", files.join(", ")))).collect();
    for (action, needle, why) in IMPLIED {
        if let Some(file) = sources.iter().find(|(_, source)| source.contains(needle)).map(|(file, _)| file) {
            required.entry((*action).to_owned()).or_insert_with(|| format!("{why} ({needle} in {file})"));
        }
    }
    let allowed = allowed_ec2_actions(&policy());

    let missing: Vec<String> = required
        .iter()
        .filter(|(action, _)| !allowed.contains(*action))
        .map(|(action, why)| format!("{action} ({why})"))
        .collect();
    let extra: Vec<&String> = allowed.iter().filter(|action| !required.contains_key(*action)).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "the policy does not allow {}: the provider would fail with UnauthorizedOperation",
            missing.join("; ")
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "the policy allows {extra:?}, which the provider never calls: remove them (least privilege)"
        ));
    }
    assert!(problems.is_empty(), "{}:\n{}", docs_page().display(), problems.join("\n"));
}

/// Guards the scanner: an operation the provider names in its errors but the
/// scan did not find is called some way the scan does not see (a client
/// under another name), and the comparison above would be blind to it.
#[test]
fn every_operation_the_provider_names_in_its_errors_is_a_call_the_scan_found() {
    let sources = sources();
    let called = called_operations(&sources);
    let unseen: Vec<String> =
        classified_operations(&sources).into_iter().filter(|op| !called.contains_key(op)).collect();
    assert!(
        unseen.is_empty(),
        "classify() names {unseen:?} but no client.<operation>() call for them was found: \
         teach the scanner in this test how the provider calls them"
    );
}

/// The implied actions are allowed only inside the call that implies them:
/// ec2:CreateTags with `ec2:CreateAction`, so it cannot retag existing
/// instances.
#[test]
fn implied_actions_are_allowed_only_inside_the_call_that_implies_them() {
    let policy = policy();
    for statement in statements(&policy) {
        let actions = strings(&statement["Action"]);
        for (action, _, _) in IMPLIED {
            if statement["Effect"].as_str() == Some("Allow") && actions.contains(action) {
                let condition = &statement["Condition"]["StringEquals"]["ec2:CreateAction"];
                assert!(
                    !strings(condition).is_empty(),
                    "statement {} allows {action} without a StringEquals ec2:CreateAction condition",
                    statement["Sid"]
                );
            }
        }
    }
}

/// A condition on a tag flockd does not set would deny every call.
#[test]
fn the_policy_conditions_name_tags_the_provider_sets() {
    let flockd_tags = [tags::CLUSTER, tags::RESOURCE, tags::LAUNCH_KEY, tags::WORKER_PREFIX];
    let policy = policy();
    let mut cluster_conditions = 0;
    for statement in statements(&policy) {
        let Some(operators) = statement["Condition"].as_object() else { continue };
        for keys in operators.values() {
            for key in keys.as_object().into_iter().flat_map(|keys| keys.keys()) {
                let tag = ["aws:RequestTag/", "aws:ResourceTag/", "ec2:ResourceTag/"]
                    .iter()
                    .find_map(|prefix| key.strip_prefix(prefix));
                if let Some(tag) = tag {
                    assert!(
                        flockd_tags.contains(&tag),
                        "statement {} has a condition on tag {tag:?}, which flockd does not set (it sets {flockd_tags:?})",
                        statement["Sid"]
                    );
                    cluster_conditions += usize::from(tag == tags::CLUSTER);
                }
            }
        }
    }
    assert!(cluster_conditions > 0, "no statement is scoped by the {:?} tag", tags::CLUSTER);
}

#[test]
fn the_scanner_finds_calls_across_lines_and_ignores_comments_fields_and_lookalikes() {
    let source = strip_comments(
        r#"
        // self.client.delete_vpc() in a comment
        /* client.create_vpc() */
        let url = "http://example.com"; let c = '"'; let q = '\''; let s = "\"// not a comment"; self.client.reboot_instances();
        let call = self
            .client
            .describe_instances()
            .max_results(5);
        let mut call = client
            .run_instances()
            .client_token(&self.client_token);
        let http_client = builder.build(); http_client.send();
        let other = self.client.clone();
        spec.call(&self.client, subnet);
        self.client.terminate_instances().instance_ids(id);
        "#,
    );
    let found: Vec<String> = client_calls(&source).into_iter().collect();
    assert_eq!(found, ["describe_instances", "reboot_instances", "run_instances", "terminate_instances"]);
    assert_eq!(pascal_case("describe_instances"), "DescribeInstances");
    assert_eq!(first_json_block("a\n```toml\nx\n```\n```json\n{}\n```\n").as_deref(), Some("{}\n"));
}
