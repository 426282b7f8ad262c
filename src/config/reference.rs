//! One source for every setting: the [`Settings`] types, their defaults and doc comments.
//! Checked against it here: serialized settings load back as the same settings, the
//! example config is the defaults plus its sample credentials, and
//! `docs/configuration.md` has one row per key with the code's default.

use super::*;

const EXAMPLE: &str = include_str!("../../config/pushbot.example.toml");

/// Every section and optional key set (secrets inline, no `*_file`: a file's secret is read
/// into its key when loading), to a value other than the default where it has one.
const FULL: &str = r#"
[server]
listen = "127.0.0.1:9090"
public_url = "https://push.example.com/base/"
header_read_timeout = "45s"
max_connections = 77
send_rate = { count = 12, per = "90s" }
max_content_bytes = 4096
metrics = true
metrics_token = "m3tr1cs-t0ken"

[storage]
url = "postgres://app:hunter2@db.internal:6543/push"
retention = "0"
pool_size = 3

[wecom]
corp_id = "ww0123456789abcdef"
agent_id = 1000017
secret = "c0rp-s3cret"
callback_token = "MyOwnToken1"
encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA"
api_base = "http://127.0.0.1:9999/wecom"
request_timeout = "2500ms"
callback_max_age = "0s"
member_limits = [{ count = 5, per = "2s" }, { count = 100, per = "1h" }]
proxy = "socks5h://proxy-user:pr0xy-pa55@127.0.0.1:1080"

[delivery]
retry_window = "2h"
backoff_initial = "250ms"
backoff_max = "90s"
concurrency = 8
sweep_interval = "1m"
shutdown_grace = "3s"
digest_after = "off"
max_in_flight = 32
lease = "45s"
instance_id = "pushbot-1"
probe_max = "10s"
stall_after = "20s"
utc_offset = "-05:30"
quiet_hours = "22:30-06:00 strict"
fallback = ["email", "ops", "wecom", "sms"]
format = "card"

[email]
host = "smtp.example.com"
port = 2525
security = "starttls"
username = "bot@example.com"
password = "sm7p-pa55"
from = "pushbot <bot@example.com>"
timeout = "5s"
code_ttl = "5m"
codes_per_hour = 2

SMS

[destinations]
wecom_robot_base = "http://127.0.0.1:7001"
dingtalk_base = "http://127.0.0.1:7002"
feishu_base = "http://127.0.0.1:7003"
lark_base = "http://127.0.0.1:7004"
telegram_base = "http://127.0.0.1:7005"
telegram_bot_token = "123456:t3legram-t0ken"
timeout = "3s"

[destinations.ops]
kind = "wecom-robot"
url = "http://127.0.0.1:7001/cgi-bin/webhook/send?key=r0b0t-key"
members = ["alice", "bob"]

[destinations.oncall]
kind = "dingtalk"
url = "http://127.0.0.1:7002/robot/send?access_token=d1ng-t0ken"
secret = "SECd1ng"
members = "all"

[destinations.chat]
kind = "telegram"
chat_id = "-1001234567890"

[media]
max_bytes = 1048576
max_files = 2
total_bytes = 104857600
fetch_timeout = "5s"
fetch_allow = ["127.0.0.1/32", "fd00::/8"]

[console]
session_ttl = "12h"
login_ttl = "5m"
admins = ["alice"]

[groups]
max_members = 200
max_groups_per_member = 20
invite_ttl = "2d"
refresh = "5m"
join_failures = { count = 5, per = "30m" }

[[groups.wecom]]
name = "oncall"
party = [2, 3]
tag = [5]
owners = ["alice"]

[ack]
escalate_min = "30s"
urgent = false
severities = ["critical", "page"]

[log]
level = "pushbot=debug,info"
format = "json"
"#;

/// `[sms]` of each provider, every key set.
const SMS: [&str; 3] = [
    r#"[sms]
provider = "aliyun"
access_key_id = "LTAI5tExampleKeyId"
access_key_secret = "al1yun-s3cret"
sign_name = "阿里云短信测试"
template = "SMS_154950909"
code_template = "SMS_154950910"
max_variable_chars = 40
api_base = "http://127.0.0.1:7010"
daily_limit_per_member = 4
daily_limit = 50
timeout = "4s"
code_ttl = "15m"
codes_per_hour = 5
lookup_after = "90s"
"#,
    r#"[sms]
provider = "tencent"
secret_id = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
secret_key = "t3ncent-s3cret"
sdk_app_id = "1400006666"
region = "ap-beijing"
sign_name = "腾讯云"
template = "1110"
code_template = "1111"
max_variable_chars = 20
"#,
    r#"[sms]
provider = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "tw1l10-t0ken"
from = "+15005550006"
max_segments = 4
"#,
];

/// The settings as a config file.
fn text(settings: &Settings) -> String {
    toml::to_string(settings).unwrap_or_else(|e| panic!("settings serialize: {e}"))
}

/// Loads `text`, writes it, loads that, writes it again: the same text, or a panic saying
/// where they part.
fn round_trip(text_in: &str) -> String {
    let first = text(&Settings::from_toml(text_in).unwrap_or_else(|e| panic!("{e}\n{text_in}")));
    let again = Settings::from_toml(&first).unwrap_or_else(|e| panic!("{e}\n{first}"));
    assert_eq!(
        text(&again),
        first,
        "written settings load as other settings"
    );
    first
}

/// Every dotted key path of a TOML table (arrays and inline values as leaves).
fn toml_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(t) => toml_keys(t, &format!("{path}."), out),
            _ => out.push(path),
        }
    }
}

#[test]
fn written_settings_load_as_the_same_settings() {
    round_trip(EXAMPLE);
    for sms in SMS {
        let full = FULL.replace("\nSMS\n", &format!("\n{sms}\n"));
        let written = round_trip(&full);
        // Nothing set is lost on the way (a field that is not written would still round
        // trip: to its default).
        let (mut set, mut kept) = (Vec::new(), Vec::new());
        toml_keys(&full.parse().unwrap(), "", &mut set);
        toml_keys(&written.parse().unwrap(), "", &mut kept);
        for key in &set {
            assert!(kept.contains(key), "{key} is not written:\n{written}");
        }
        // Secrets are written as they are: this is a config file.
        for secret in [
            "m3tr1cs-t0ken",
            "hunter2",
            "c0rp-s3cret",
            "MyOwnToken1",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFA",
            "pr0xy-pa55",
            "sm7p-pa55",
            "t3legram-t0ken",
            "r0b0t-key",
            "SECd1ng",
        ] {
            assert!(written.contains(secret), "{secret} missing:\n{written}");
        }
        let provider_secret = ["al1yun-s3cret", "t3ncent-s3cret", "tw1l10-t0ken"]
            .into_iter()
            .find(|s| sms.contains(s));
        assert!(provider_secret.is_some_and(|s| written.contains(s)));
        // Durations the short way, offsets and routes as written.
        for line in [
            "per = \"90s\"",
            "retention = \"0\"",
            "request_timeout = \"2500ms\"",
            "callback_max_age = \"0s\"",
            "per = \"1h\"",
            "digest_after = \"off\"",
            "sweep_interval = \"1m\"",
            "utc_offset = \"-05:30\"",
            "quiet_hours = \"22:30-06:00 strict\"",
            "fallback = [\"email\", \"ops\", \"wecom\", \"sms\"]",
            "members = [\"alice\", \"bob\"]",
            "members = \"all\"",
            "fetch_allow = [\"127.0.0.1/32\", \"fd00::/8\"]",
        ] {
            assert!(written.contains(line), "{line} missing:\n{written}");
        }
    }
}

#[test]
fn durations_and_offsets_are_written_as_they_are_read() {
    for (d, written) in [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(10), "10ms"),
        (Duration::from_millis(2500), "2500ms"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(900), "15m"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_secs(86_400), "1d"),
        (Duration::from_secs(30 * 86_400), "30d"),
        (Duration::from_micros(1500), "1500us"),
        (Duration::from_nanos(7), "7ns"),
    ] {
        assert_eq!(format_duration(d), written);
        assert_eq!(
            humantime::parse_duration(written).ok(),
            Some(d),
            "{written}"
        );
    }
    for offset in ["+08:00", "-05:30", "+00:00", "+14:00", "-00:45"] {
        let text = format!(
            "{}\n[delivery]\nutc_offset = \"{offset}\"\n",
            required(EXAMPLE)
        );
        let settings = Settings::from_toml(&text).unwrap();
        let written = serde_json::to_value(&settings.delivery).unwrap();
        assert_eq!(written["utc_offset"], offset);
    }
}

/// The callback key is written as it was given, though its last character carries bits
/// beyond the key that are ignored (as in the documentation sample's).
#[test]
fn the_callback_key_is_written_as_it_was_given() {
    let sample = crate::wecom::credentials::SAMPLE_ENCODING_AES_KEY;
    let settings = Settings::from_toml(&required(EXAMPLE)).unwrap();
    let written = text(&settings);
    assert!(
        written.contains(&format!("encoding_aes_key = \"{sample}\"")),
        "{written}"
    );
    let again = Settings::from_toml(&written).unwrap();
    assert!(again.uses_sample_credentials());
    // The same key with the ignored bits set otherwise is the same key (the sample).
    let other_bits = sample.replace("B2C", "B2A");
    let text = required(EXAMPLE).replace(sample, &other_bits);
    assert!(
        Settings::from_toml(&text)
            .unwrap()
            .uses_sample_credentials()
    );
}

/// Panics, naming `what` and the lines that differ, unless `left` and `right` are the same.
fn assert_same(left: &str, right: &str, what: &str) {
    if left == right {
        return;
    }
    let only = |a: &str, b: &str| -> Vec<String> {
        let theirs: Vec<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !theirs.contains(l))
            .map(str::to_owned)
            .collect()
    };
    panic!(
        "{what}\n  these lines: {:?}\n  instead of: {:?}\nin:\n{left}",
        only(left, right),
        only(right, left)
    );
}

/// Only the keys a config file must have (`server.public_url`, the WeCom app's
/// credentials), with `config`'s values.
fn required(config: &str) -> String {
    let config: toml::Table = config.parse().unwrap();
    let mut out = toml::Table::new();
    for (section, keys) in [
        ("server", &["public_url"][..]),
        (
            "wecom",
            &[
                "corp_id",
                "agent_id",
                "secret",
                "callback_token",
                "encoding_aes_key",
            ][..],
        ),
    ] {
        let mut table = toml::Table::new();
        for key in keys {
            let value = config
                .get(section)
                .and_then(|s| s.get(key))
                .unwrap_or_else(|| panic!("{section}.{key} is not in the example"));
            table.insert((*key).to_owned(), value.clone());
        }
        out.insert(section.to_owned(), toml::Value::Table(table));
    }
    toml::to_string(&out).unwrap()
}

/// The example config is the defaults and its sample credentials: a default changed in
/// the code (or in the example) makes this fail.
#[test]
fn the_example_config_is_the_defaults_with_sample_credentials() {
    let example = text(&Settings::from_toml(EXAMPLE).unwrap());
    let defaults = text(&Settings::from_toml(&required(EXAMPLE)).unwrap());
    assert_same(
        &example,
        &defaults,
        "config/pushbot.example.toml (left) is not the code's defaults (right)",
    );
}

/// The example's commented-out `[email]`, `[sms]`, `[destinations]` and `[media]`
/// sections, as they are once uncommented (up to the first `[destinations.NAME]`).
fn example_section(name: &str) -> toml::Table {
    let header = format!("# [{name}]");
    let lines: Vec<&str> = EXAMPLE
        .lines()
        .skip_while(|l| *l != header)
        .take_while(|l| l.starts_with('#') && !l.starts_with("# [destinations."))
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect();
    assert!(lines.len() > 3, "no {header} in the example");
    let text = lines.join("\n");
    let parsed: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    match parsed.get(name) {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => panic!("{header} is not a table"),
    }
}

/// What the example shows for a key the reader may leave out is the default: the example's
/// commented-out sections, uncommented, load, and leaving out any key but those it fills in
/// for the reader's own values gives the same settings.
#[test]
fn the_example_sections_show_the_defaults() {
    for (name, own_values, secret) in [
        (
            "email",
            &["host", "port", "username", "from"][..],
            Some("password"),
        ),
        (
            "sms",
            &[
                "provider",
                "access_key_id",
                "sign_name",
                "template",
                "code_template",
                "max_variable_chars",
            ][..],
            Some("access_key_secret"),
        ),
        ("destinations", &[][..], Some("telegram_bot_token")),
        ("media", &[][..], None),
    ] {
        let mut section = example_section(name);
        if let Some(secret) = secret {
            section.insert(secret.to_owned(), toml::Value::String("x".to_owned()));
        }
        let load = |section: &toml::Table| {
            let mut config: toml::Table = required(EXAMPLE).parse().unwrap();
            config.insert(name.to_owned(), toml::Value::Table(section.clone()));
            let config = toml::to_string(&config).unwrap();
            Settings::from_toml(&config)
                .map(|s| text(&s))
                .unwrap_or_else(|e| panic!("the example's [{name}]: {e}\n{config}"))
        };
        let shown = load(&section);
        let keys: Vec<String> = section.keys().cloned().collect();
        for key in keys {
            if own_values.contains(&key.as_str()) || Some(key.as_str()) == secret {
                continue;
            }
            let mut without = section.clone();
            without.remove(&key);
            assert_same(
                &shown,
                &load(&without),
                &format!("the example's {name}.{key} is not the default"),
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// docs/configuration.md
// ------------------------------------------------------------------------------------------

const DOC: &str = include_str!("../../docs/configuration.md");

/// The doc's sections, in order: one per table (the README links to these anchors).
const SECTIONS: [&str; 12] = [
    "server",
    "storage",
    "wecom",
    "delivery",
    "email",
    "sms",
    "destinations",
    "media",
    "console",
    "groups",
    "ack",
    "log",
];

/// The keys each section must have, every section present, one shared destination called
/// `NAME`: the settings every row's default is checked against.
const BASE: &str = r#"
[server]
public_url = "https://push.example.com"
[wecom]
corp_id = "wx5823bf96d3bd56c7"
agent_id = 1000002
secret = "s3cr3t"
callback_token = "QDG6eK"
encoding_aes_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
[email]
host = "smtp.example.com"
from = "pushbot <bot@example.com>"
[sms]
provider = "aliyun"
[destinations.NAME]
kind = "webhook"
"#;

/// Settings as the loader's serde reads them (defaults applied), without the checks that
/// need more than each key's own value (an SMS provider's credentials, a destination's URL):
/// how the defaults of keys in optional sections are seen.
fn defaults_of(config: &toml::Table) -> Result<Settings, String> {
    let text = toml::to_string(config).map_err(|e| e.to_string())?;
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .set_default("wecom.api_base", DEFAULT_API_BASE)
        .and_then(|b| b.build())
        .and_then(config::Config::try_deserialize::<Settings>)
        .map_err(|e| ConfigError::from_config(e).to_string())
}

/// Every key of `value` (serialized settings) by its dotted path: nested tables walked,
/// arrays and `{ count, per }` inline tables as one key, shared destinations as `NAME`.
fn setting_keys(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    let serde_json::Value::Object(map) = value else {
        out.push(path.to_owned());
        return;
    };
    let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
    names.sort_unstable();
    if !path.is_empty() && names == ["count", "per"] {
        out.push(path.to_owned());
        return;
    }
    for (key, child) in map {
        let key = if path == "destinations" && child.is_object() {
            "NAME"
        } else {
            key.as_str()
        };
        let child_path = if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        };
        setting_keys(child, &child_path, out);
    }
}

/// One `| `key` | default | meaning |` row of the doc.
#[derive(Debug)]
struct Row {
    section: String,
    key: String,
    default: String,
    meaning: String,
}

fn rows() -> Vec<Row> {
    let mut section = String::new();
    let mut rows = Vec::new();
    for line in DOC.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim().to_owned();
            continue;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let [key, default, meaning] = cells[..] else {
            panic!("not a | Key | Default | Meaning | row: {line}");
        };
        assert!(!meaning.is_empty(), "{key} has no meaning: {line}");
        let code = |cell: &str| {
            cell.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .map(str::to_owned)
        };
        let key = code(key).unwrap_or_else(|| panic!("the key in backticks: {line}"));
        let default = match default {
            "required" | "unset" => default.to_owned(),
            _ => code(default)
                .unwrap_or_else(|| panic!("a default in backticks, `required` or `unset`: {line}")),
        };
        rows.push(Row {
            section: section.clone(),
            key,
            default,
            meaning: meaning.to_owned(),
        });
    }
    rows
}

/// The table at `path` (all but its last part) in `config`, created as needed.
fn parent<'a>(config: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    path.iter().fold(config, |table, part| {
        match table
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            other => panic!("{part} is not a table: {other}"),
        }
    })
}

/// `docs/configuration.md` has a section per table, a row per key `Settings` has and none
/// other, and each row's default is the code's: adding a key without documenting it, or
/// changing a default without the doc, fails here.
#[test]
fn the_configuration_doc_lists_every_key_with_its_default() {
    let headings: Vec<&str> = DOC
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    assert_eq!(headings, SECTIONS, "the doc's sections");

    let base: toml::Table = BASE.parse().unwrap();
    let defaults = defaults_of(&base).unwrap();
    let written = text(&defaults);
    let json = serde_json::to_value(&defaults).unwrap();
    let mut keys = Vec::new();
    setting_keys(&json, "", &mut keys);
    keys.sort();

    let rows = rows();
    let mut documented: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    documented.sort_unstable();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !documented.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "keys without a row in docs/configuration.md: {missing:?}"
    );
    let unknown: Vec<&&str> = documented
        .iter()
        .filter(|k| !keys.iter().any(|key| key == *k))
        .collect();
    assert!(
        unknown.is_empty(),
        "rows in docs/configuration.md for keys Settings does not have: {unknown:?}"
    );
    let mut twice = documented.clone();
    twice.dedup();
    assert_eq!(twice, documented, "a key has two rows");

    for row in &rows {
        let path: Vec<&str> = row.key.split('.').collect();
        let (name, tables) = path.split_last().unwrap();
        assert_eq!(
            tables[0], row.section,
            "{} is under ## {}",
            row.key, row.section
        );
        match row.default.as_str() {
            "required" => {
                let mut without = base.clone();
                parent(&mut without, tables).remove(*name);
                assert!(
                    defaults_of(&without).is_err(),
                    "{} is documented as required, but loads without it",
                    row.key
                );
            }
            "unset" => {
                let value = path.iter().fold(&json, |v, part| {
                    let part = if v.get(part).is_none() && *part == "NAME" {
                        "name"
                    } else {
                        part
                    };
                    &v[part]
                });
                assert!(
                    value.is_null(),
                    "{} is documented as unset, but defaults to {value}",
                    row.key
                );
            }
            default => {
                let value: toml::Table = format!("value = {default}").parse().unwrap_or_else(|e| {
                    panic!("{}: `{default}` is not a TOML value: {e}", row.key)
                });
                let mut with = base.clone();
                parent(&mut with, tables).insert((*name).to_owned(), value["value"].clone());
                let settings = defaults_of(&with)
                    .unwrap_or_else(|e| panic!("{} = {default} does not load: {e}", row.key));
                assert_same(
                    &text(&settings),
                    &written,
                    &format!(
                        "docs/configuration.md says {} = {default} by default; the code does not",
                        row.key
                    ),
                );
            }
        }
    }
}

/// Each key's doc comment in `src/config.rs`, by dotted path, its lines joined.
fn doc_comments() -> Vec<(String, String)> {
    const SOURCE: &str = include_str!("../config.rs");
    let mut out = Vec::new();
    for (structure, prefix) in [
        ("ServerSettings", "server"),
        ("StorageSettings", "storage"),
        ("WeComSettings", "wecom"),
        ("DeliverySettings", "delivery"),
        ("EmailSettings", "email"),
        ("SmsSettings", "sms"),
        ("DestinationsSettings", "destinations"),
        ("DestinationSettings", "destinations.NAME"),
        ("MediaSettings", "media"),
        ("ConsoleSettings", "console"),
        ("GroupsSettings", "groups"),
        ("AckSettings", "ack"),
        ("LogSettings", "log"),
    ] {
        let header = format!("pub struct {structure} {{");
        let body = SOURCE
            .split_once(&header)
            .and_then(|(_, rest)| rest.split_once("\n}\n"))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("no {header} in src/config.rs"));
        let mut doc: Vec<&str> = Vec::new();
        for line in body.lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("///") {
                doc.push(text.trim());
            } else if let Some((field, _)) = line
                .strip_prefix("pub ")
                .and_then(|rest| rest.split_once(':'))
            {
                // `[destinations.NAME]` tables, each a key of its own.
                if field != "named" {
                    out.push((format!("{prefix}.{field}"), doc.join(" ")));
                }
                doc.clear();
            }
        }
    }
    out
}

/// The Meaning column is each key's doc comment in the code: the code says what a setting
/// means, and the doc says the same.
#[test]
fn the_configuration_doc_says_what_the_code_says() {
    let rows = rows();
    let comments = doc_comments();
    let mut wrong = Vec::new();
    for (key, comment) in &comments {
        let comment = comment.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            !comment.is_empty(),
            "{key} has no doc comment in src/config.rs"
        );
        let Some(row) = rows.iter().find(|r| &r.key == key) else {
            // A key without a row is reported by the test above.
            continue;
        };
        if row.meaning != comment {
            wrong.push(format!("{key}\n  doc:  {}\n  code: {comment}", row.meaning));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md and the doc comments in src/config.rs differ:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        comments.len(),
        rows.len(),
        "a key whose doc comment was not found"
    );
}
