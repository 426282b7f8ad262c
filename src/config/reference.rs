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
            "fallback = [\"email\", \"ops\", \"wecom\", \"sms\"]",
            "members = [\"alice\", \"bob\"]",
            "members = \"all\"",
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

#[test]
fn the_callback_key_is_written_as_the_same_key() {
    // The documentation sample's last character carries bits beyond the key.
    let settings = Settings::from_toml(&required(EXAMPLE)).unwrap();
    let written = text(&settings);
    let again = Settings::from_toml(&written).unwrap();
    assert_eq!(
        again.wecom.encoding_aes_key,
        settings.wecom.encoding_aes_key
    );
    assert!(again.uses_sample_credentials());
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
    assert_eq!(
        example, defaults,
        "config/pushbot.example.toml and the code's defaults differ"
    );
}

/// The example's commented-out `[email]`, `[sms]` and `[destinations]` sections, as they
/// are once uncommented (up to the first `[destinations.NAME]`).
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
            "password",
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
            "access_key_secret",
        ),
        ("destinations", &[][..], "telegram_bot_token"),
    ] {
        let mut section = example_section(name);
        section.insert(secret.to_owned(), toml::Value::String("x".to_owned()));
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
            if own_values.contains(&key.as_str()) || key == secret {
                continue;
            }
            let mut without = section.clone();
            without.remove(&key);
            assert_eq!(
                load(&without),
                shown,
                "the example's {name}.{key} is not the default"
            );
        }
    }
}
