//! `clearml.conf` for a launched machine. HOCON quoted strings use JSON's
//! escapes and take `$` literally, so every value is written as a JSON
//! string and any byte sequence survives.

use super::BootstrapSettings;

/// The exact bytes the start-up script writes to `clearml.conf`.
pub fn render_clearml_conf(settings: &BootstrapSettings) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("strings always serialize");
    let mut conf = String::from("# Written by flockd's start-up script.\n");
    conf.push_str(&format!(
        "api {{\n  api_server: {}\n  web_server: {}\n  files_server: {}\n  credentials {{\n    access_key: {}\n    secret_key: {}\n  }}\n}}\n",
        q(&settings.api_host),
        q(&settings.web_host),
        q(&settings.files_host),
        q(settings.access_key.expose()),
        q(settings.secret_key.expose()),
    ));
    if settings.git_user.is_some() || settings.git_pass.is_some() {
        conf.push_str("agent {\n");
        if let Some(user) = &settings.git_user {
            conf.push_str(&format!("  git_user: {}\n", q(user)));
        }
        if let Some(pass) = &settings.git_pass {
            conf.push_str(&format!("  git_pass: {}\n", q(pass.expose())));
        }
        conf.push_str("}\n");
    }
    if let Some(s3) = &settings.s3 {
        conf.push_str(&format!(
            "sdk {{\n  aws {{\n    s3 {{\n      key: {}\n      secret: {}\n",
            q(s3.key.expose()),
            q(s3.secret.expose())
        ));
        if let Some(region) = &s3.region {
            conf.push_str(&format!("      region: {}\n", q(region)));
        }
        conf.push_str("    }\n  }\n}\n");
    }
    if let Some(extra) = &settings.extra_clearml_conf {
        conf.push_str("# extra-clearml-conf\n");
        conf.push_str(extra);
        if !extra.ends_with('\n') {
            conf.push('\n');
        }
    }
    conf
}
