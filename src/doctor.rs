//! `pushbot doctor`: checks a set-up from the configuration to WeCom and back, and says in
//! words (Chinese and English) what to fix.
//!
//! Checks run in order and print one line each, starting with `✓` (pass), `✗` (fail), `!`
//! (works, but should be fixed: it does not fail the run) or `–` (skipped), with the fix
//! indented under every `✗` and `!`: the configuration (a load error
//! stops here), the database, WeCom's `gettoken`, the app (`agent/get`), each
//! WeCom-backed group (`[[groups.wecom]]`: may the app list its departments' and tags'
//! members, 可见范围), the callback URL
//! (a signed URL check against `server.public_url`, like the one WeCom makes) and SMTP.
//! Nothing is sent to anyone; the only write is the database's health probe. Secrets (the
//! corp secret, the access token, the callback Token and key, the SMTP password) are never
//! printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::{Host, Url};

use crate::app::{Egress, http_client, wecom_http_client};
use crate::config::{DEFAULT_CONFIG_FILE, Settings};
use crate::delivery::Channel as _;
use crate::delivery::destinations::Check as DestCheck;
use crate::delivery::email::EmailChannel;
use crate::delivery::sms::Check;
use crate::error::chain;
use crate::store::{Store, StoreError, chmod_command, exposed_files};
use crate::time::UnixMillis;
use crate::wecom::client::{AgentInfo, WeComClient, WeComError, describe, untrusted_ip};
use crate::wecom::crypto::WeComCrypto;

/// Output width the lines are wrapped to.
const WIDTH: usize = 80;
/// The callback check waits this long for an answer.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Pass,
    Fail,
    /// Works, but should be fixed (database files other users can read).
    Warn,
    Skip,
}

impl Mark {
    fn symbol(self) -> &'static str {
        match self {
            Self::Pass => "✓",
            Self::Fail => "✗",
            Self::Warn => "!",
            Self::Skip => "–",
        }
    }
}

/// One check's line: what was found, in Chinese and English, and what to do about it.
struct Finding {
    mark: Mark,
    zh: String,
    en: String,
    /// Indented under the line: the fix for a failure, the reason for a skip.
    notes: Vec<String>,
}

impl Finding {
    fn new(mark: Mark, zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self {
            mark,
            zh: zh.into(),
            en: en.into(),
            notes: Vec::new(),
        }
    }

    fn pass(zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(Mark::Pass, zh, en)
    }

    fn fail(zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(Mark::Fail, zh, en)
    }

    fn warn(zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(Mark::Warn, zh, en)
    }

    fn skip(zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(Mark::Skip, zh, en)
    }

    fn note(mut self, text: impl Into<String>) -> Self {
        self.notes.push(text.into());
        self
    }

    fn notes(mut self, texts: impl IntoIterator<Item = String>) -> Self {
        self.notes.extend(texts);
        self
    }
}

/// Prints findings as they come and counts them.
struct Report<'a> {
    out: &'a mut (dyn Write + Send),
    failed: usize,
    warned: usize,
    skipped: usize,
}

impl Report<'_> {
    fn print(&mut self, finding: Finding) {
        match finding.mark {
            Mark::Fail => self.failed += 1,
            Mark::Warn => self.warned += 1,
            Mark::Skip => self.skipped += 1,
            Mark::Pass => {}
        }
        let head = format!("{} {} · {}", finding.mark.symbol(), finding.zh, finding.en);
        let mut lines = wrap("", "  ", &head);
        for note in &finding.notes {
            lines.extend(wrap("    ", "    ", note));
        }
        for line in lines {
            // A closed stdout (`| head`) is not worth a panic.
            let _ = writeln!(self.out, "{line}");
        }
    }

    fn summary(&mut self) {
        let (zh_skipped, en_skipped) = match self.skipped {
            0 => (String::new(), String::new()),
            n => (format!("，{n} 项跳过"), format!(", {n} skipped")),
        };
        let line = match (self.failed, self.warned) {
            (0, 0) => format!("全部通过{zh_skipped} · all checks passed{en_skipped}"),
            (0, w) => format!(
                "无未通过项，{w} 项警告{zh_skipped} · nothing failed, {w} {}{en_skipped}: \
                 fix the lines marked !",
                plural(w, "warning", "warnings")
            ),
            (n, _) => {
                format!("{n} 项未通过{zh_skipped} · {n} failed{en_skipped}: fix them, run again")
            }
        };
        let _ = writeln!(self.out);
        for line in wrap("", "", &line) {
            let _ = writeln!(self.out, "{line}");
        }
    }
}

/// Where the database check looks.
#[derive(Clone, Copy)]
pub enum Database<'a> {
    /// Opens `storage.url` as `pushbot serve` does (`pushbot doctor`).
    Open,
    /// The running server's own store (the operators' page in the console).
    Running(&'a Store),
}

/// Runs every check, printing to `out`; `true` when none failed (skips are fine).
pub async fn run(config: Option<&Path>, out: &mut (dyn Write + Send)) -> bool {
    let _ = writeln!(out, "pushbot doctor {}\n", env!("CARGO_PKG_VERSION"));
    let mut report = Report {
        out,
        failed: 0,
        warned: 0,
        skipped: 0,
    };
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(err) => {
            report.print(
                Finding::fail("配置无法加载", "the configuration cannot be loaded")
                    .note(chain(&err))
                    .note(
                        "修正该项后重新运行 · Fix that setting and run pushbot doctor again \
                         (pushbot check-config shows what was read).",
                    ),
            );
            report.summary();
            return false;
        }
    };
    checks(
        &mut report,
        &settings,
        &config_source(config),
        Database::Open,
    )
    .await
}

/// The same checks as [`run`] on settings already loaded (`source` says from where), for
/// a running server: the operators' page runs them against the configuration the server
/// runs with, on its own database connection.
pub async fn run_loaded(
    settings: &Settings,
    source: &str,
    database: Database<'_>,
    out: &mut (dyn Write + Send),
) -> bool {
    let _ = writeln!(out, "pushbot doctor {}\n", env!("CARGO_PKG_VERSION"));
    let mut report = Report {
        out,
        failed: 0,
        warned: 0,
        skipped: 0,
    };
    checks(&mut report, settings, source, database).await
}

async fn checks(
    report: &mut Report<'_>,
    settings: &Settings,
    source: &str,
    database: Database<'_>,
) -> bool {
    report.print(Finding::pass(
        "配置已加载",
        format!("configuration loaded from {source}"),
    ));
    report.print(public_url(settings.server.public_url.url()));
    report.print(Finding::pass(
        "EncodingAESKey 格式正确",
        "EncodingAESKey: 43 characters, a valid AES key",
    ));
    report.print(Finding::pass(
        "AgentId 为数字",
        format!("wecom.agent_id = {}", settings.wecom.agent_id.get()),
    ));
    report.print(sample_credentials(settings));
    report.print(match database {
        Database::Open => self::database(settings).await,
        Database::Running(store) => running_database(settings, store).await,
    });
    let (token, app, groups) = wecom(settings).await;
    report.print(token);
    report.print(app);
    for finding in groups {
        report.print(finding);
    }
    report.print(callback(settings).await);
    report.print(smtp(settings).await);
    report.print(sms(settings).await);
    for finding in destinations(settings).await {
        report.print(finding);
    }
    report.summary();
    report.failed == 0
}

fn config_source(config: Option<&Path>) -> String {
    match config {
        Some(path) => path.display().to_string(),
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => DEFAULT_CONFIG_FILE.to_owned(),
        None => "the environment (no pushbot.toml here)".to_owned(),
    }
}

/// Whether a URL's host is this machine (where plain http is acceptable).
fn is_local(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn public_url(url: &Url) -> Finding {
    let shown = url.as_str().trim_end_matches('/');
    if url.scheme() == "https" {
        Finding::pass("公网地址为 HTTPS", format!("public_url {shown}"))
    } else if is_local(url) {
        Finding::pass(
            "公网地址为本机",
            format!("public_url {shown} (local, for trials)"),
        )
    } else {
        Finding::fail(
            "公网地址不是 HTTPS",
            format!("public_url {shown} is not https"),
        )
        .note("企业微信回调和消息全文页必须能被手机通过 HTTPS 访问。")
        .note(
            "WeCom's callback and the message pages (/m/…) must be reachable by members' \
             phones over HTTPS: put pushbot behind nginx or Caddy with a certificate and set \
             server.public_url = \"https://…\".",
        )
    }
}

fn sample_credentials(settings: &Settings) -> Finding {
    if !settings.uses_sample_credentials() {
        return Finding::pass(
            "回调凭据非示例值",
            "callback Token and EncodingAESKey are not the samples",
        );
    }
    let which = match (
        settings.wecom.callback_token.is_public_sample(),
        settings.wecom.encoding_aes_key.is_public_sample(),
    ) {
        (true, true) => "callback Token and EncodingAESKey are",
        (true, false) => "callback Token is",
        _ => "EncodingAESKey is",
    };
    Finding::fail("仍在使用示例凭据", format!("{which} the public samples"))
        .note("在 接收消息 → 设置API接收 页面 随机获取 Token 和 EncodingAESKey 并写入配置。")
        .note(
            "Anyone can forge callbacks with the sample and get a push token for any \
             member; while it is set pushbot listens on 127.0.0.1 only. Generate your own \
             (随机获取) in the app's 接收消息 → 设置API接收 page and put them in \
             wecom.callback_token and wecom.encoding_aes_key.",
        )
}

async fn database(settings: &Settings) -> Finding {
    let url = settings.storage.url.as_str();
    let shown = settings.storage.url.sqlite_path().map_or_else(
        || settings.storage.url.redacted(),
        |p| p.display().to_string(),
    );
    let postgres = settings.storage.url.engine() == crate::store::Engine::Postgres;
    let file = settings.storage.url.sqlite_path();
    let existed = file.is_some_and(Path::exists);
    // Before opening: a running service's -wal and -shm are there now.
    let exposed = file.map(exposed_files).unwrap_or_default();
    // Exactly as the service opens it: the directory is checked for writing, the file
    // created if needed, migrations applied.
    let store = match Store::connect(url).await {
        Ok(store) => store,
        Err(err) => {
            let fix = match &err {
                _ if postgres => {
                    "Check that PostgreSQL runs and is reachable from this machine, and the \
                     user, password and database in storage.url (or PUSHBOT_STORAGE__URL)."
                }
                StoreError::Migrate(_) => {
                    "The database was written by a newer pushbot (or changed by hand): run \
                     that version, or point storage.url at another file."
                }
                _ => {
                    "Make the file and its directory writable by the user pushbot runs as, \
                     or point storage.url at a writable place (sqlite:///data/pushbot.db)."
                }
            };
            return Finding::fail(
                "数据库无法打开",
                format!("database {shown} cannot be opened"),
            )
            .note(chain(&err))
            .note(if postgres {
                "确认 PostgreSQL 可连接，且 storage.url 中的用户、密码和数据库正确。"
            } else {
                "确认数据库文件及其目录可写。"
            })
            .note(fix);
        }
    };
    // The health probe: one row rewritten in a committed transaction, as /healthz does.
    let probe = store.check_health().await;
    store.close().await;
    // A database doctor created is removed again, so that `pushbot serve` creates it as the
    // user it runs as (doctor may have been run as root).
    let verdict = match file {
        Some(path) if !existed => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
            "new, writes OK (not kept)"
        }
        _ => "migrated, writes OK",
    };
    match probe {
        Ok(()) if !exposed.is_empty() => exposed_finding(&shown, verdict, &exposed),
        Ok(()) => Finding::pass("数据库可读写", format!("database {shown}: {verdict}")),
        Err(err) => unwritable(&shown, &err, "pushbot doctor"),
    }
}

/// The database at `shown` refused a write: what to do, then run `again` once more.
fn unwritable(shown: &str, err: &(dyn std::error::Error + 'static), again: &str) -> Finding {
    Finding::fail(
        "数据库不可写",
        format!("database {shown} does not take writes"),
    )
    .note(chain(err))
    .note(format!(
        "Disk full, a read-only mount or an I/O error: free space or remount, then run \
         {again} again."
    ))
}

/// The running server's database: its health probe (as `/healthz` makes it) and the
/// files' permissions. Nothing is opened, migrated or removed.
async fn running_database(settings: &Settings, store: &Store) -> Finding {
    let shown = settings.storage.url.sqlite_path().map_or_else(
        || settings.storage.url.redacted(),
        |p| p.display().to_string(),
    );
    let exposed = settings
        .storage
        .url
        .sqlite_path()
        .map(exposed_files)
        .unwrap_or_default();
    let verdict = "in use by this server, writes OK";
    match store.check_health().await {
        Ok(()) if !exposed.is_empty() => exposed_finding(&shown, verdict, &exposed),
        Ok(()) => Finding::pass("数据库可读写", format!("database {shown}: {verdict}")),
        Err(err) => unwritable(&shown, &err, "the checks"),
    }
}

/// A database that works but that other users of the machine can read.
fn exposed_finding(shown: &str, verdict: &str, exposed: &[(PathBuf, u32)]) -> Finding {
    let files = exposed
        .iter()
        .map(|(path, mode)| format!("{} ({mode:04o})", path.display()))
        .collect::<Vec<_>>()
        .join(", ");
    Finding::warn(
        "数据库文件其他用户可读",
        format!("database {shown}: {verdict}, but other users can read it"),
    )
    .note(format!("Readable by others: {files}."))
    .note("数据库保存着所有成员的推送令牌和消息页密钥，请只允许 pushbot 的用户读写：")
    .note(
        "It holds every member's push token and every page key. Let only the user \
         pushbot runs as read it (new files are created 0600; pushbot does not change \
         the mode of existing ones):",
    )
    .note(chmod_command(exposed))
}

/// `gettoken`, then `agent/get` with the token.
/// The app check, and one check per WeCom-backed group (`[[groups.wecom]]`) when the
/// access token works.
async fn wecom(settings: &Settings) -> (Finding, Finding, Vec<Finding>) {
    let skipped = || {
        Finding::skip(
            "应用检查已跳过",
            "app check skipped: it needs an access token (see above)",
        )
    };
    let http = match wecom_http_client(settings) {
        Ok(http) => http,
        Err(err) => {
            let finding = Finding::fail(
                "无法创建 HTTP 客户端",
                "cannot set up the HTTP client for WeCom",
            )
            .note(chain(&err));
            return (finding, skipped(), Vec::new());
        }
    };
    let client = WeComClient::new(http, &settings.wecom);
    let via = settings
        .wecom
        .proxy
        .as_ref()
        .map(|proxy| format!(" via {proxy}"))
        .unwrap_or_default();
    if let Err(err) = client.access_token().await {
        let d = diagnose(&err, settings);
        let finding = Finding::fail(d.zh, format!("gettoken{via}: {}", d.en)).notes(d.fixes);
        return (finding, skipped(), Vec::new());
    }
    let token = Finding::pass(
        "企业微信凭据有效",
        format!("gettoken{via}: wecom.corp_id and wecom.secret accepted"),
    );
    let app = match client.agent_info().await {
        Ok(info) => app_finding(&info, settings.wecom.agent_id.get()),
        Err(err) => {
            let d = diagnose(&err, settings);
            Finding::fail(d.zh, format!("agent/get: {}", d.en)).notes(d.fixes)
        }
    };
    let mut groups = Vec::with_capacity(settings.groups.wecom.len());
    for group in &settings.groups.wecom {
        groups.push(wecom_group(&client, group, settings.groups.max_members).await);
    }
    (token, app, groups)
}

/// Whether the app may read a WeCom-backed group's departments and tags.
async fn wecom_group(
    client: &WeComClient,
    group: &crate::config::WecomGroup,
    max_members: u32,
) -> Finding {
    let name = &group.name;
    match crate::wecom_groups::read_members(client, &group.party, &group.tag).await {
        Ok(members) if members.len() > max_members as usize => Finding::fail(
            format!("群组 {name} 成员过多"),
            format!(
                "group {name:?}: WeCom lists {} members, more than groups.max_members \
                 ({max_members})",
                members.len()
            ),
        )
        .note("调大 groups.max_members，或减少 party/tag。")
        .note("Raise groups.max_members or name fewer departments and tags."),
        Ok(members) => Finding::pass(
            format!("群组 {name} 可读取成员"),
            format!(
                "group {name:?}: WeCom lists {} {}",
                members.len(),
                plural(members.len(), "member", "members")
            ),
        ),
        Err(refusal) => {
            let finding = Finding::fail(
                format!("群组 {name} 无法读取成员"),
                format!(
                    "group {name:?}: WeCom would not list {}'s members ({})",
                    refusal.what, refusal.error
                ),
            );
            let finding = if matches!(refusal.error, WeComError::Api { errcode: 60011, .. }) {
                finding.note(format!(
                    "在 应用管理 → 应用 → 可见范围 中加入 {}。",
                    refusal.what
                ))
            } else {
                finding
            };
            finding.note(format!("{}.", refusal.advice())).note(
                "Until then the group keeps its last known members · \
                     在此之前，群组沿用上次读取到的成员。",
            )
        }
    }
}

fn app_finding(info: &AgentInfo, agent_id: i64) -> Finding {
    let (users, parties, tags) = info.visible_counts();
    let name = &info.name;
    if info.is_closed() {
        return Finding::fail(
            "应用已停用",
            format!("app \"{name}\" ({agent_id}) is disabled"),
        )
        .note("应用管理 → 应用 → 启用。")
        .note("Enable it: 应用管理 (App Management) → the app → 启用 (Enable).");
    }
    if users + parties + tags == 0 {
        return Finding::fail(
            "应用可见范围为空",
            format!("app \"{name}\" ({agent_id}): nobody is in its visible range"),
        )
        .note("应用管理 → 应用 → 可见范围 → 添加成员或部门。")
        .note(
            "No member can receive its messages: add members or departments under \
             应用管理 → the app → 可见范围 (Visible to).",
        );
    }
    Finding::pass(
        "应用可发消息",
        format!(
            "app \"{name}\": visible to {users} {}, {parties} {}, {tags} {}",
            plural(users, "member", "members"),
            plural(parties, "department", "departments"),
            plural(tags, "tag", "tags"),
        ),
    )
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// A WeCom failure in words: a short name for the line, and the fix.
struct Diagnosis {
    zh: String,
    en: String,
    fixes: Vec<String>,
}

fn diagnosis(zh: &str, en: String, fixes: &[&str]) -> Diagnosis {
    Diagnosis {
        zh: zh.to_owned(),
        en,
        fixes: fixes.iter().map(|f| (*f).to_owned()).collect(),
    }
}

const SAME_APP: &str = "wecom.secret and wecom.agent_id must belong to the same self-built \
                        app: 应用管理 → 自建 → the app shows its AgentId and Secret. The \
                        Secret of another app or of 通讯录同步 does not work here.";

fn diagnose(err: &WeComError, settings: &Settings) -> Diagnosis {
    match err {
        WeComError::Api { errcode, message } => diagnose_errcode(*errcode, message),
        WeComError::Transport(text) => diagnose_network(text, settings),
        WeComError::Http(status) => {
            let mut d = diagnosis(
                "HTTP 错误",
                format!("the WeCom API answered HTTP {status}"),
                &[],
            );
            d.fixes.push(if *status == 407 {
                "The proxy wants a login: write it into wecom.proxy as \
                 http://user:password@host:port."
                    .to_owned()
            } else {
                format!(
                    "wecom.api_base is {}: it should be https://qyapi.weixin.qq.com, or a \
                     proxy that passes WeCom's API through unchanged.",
                    settings.wecom.api_base.base()
                )
            });
            d
        }
        WeComError::Decode(text) => Diagnosis {
            zh: "应答无法识别".to_owned(),
            en: format!("not an answer of WeCom's API ({text})"),
            fixes: vec![format!(
                "wecom.api_base is {}: it should be https://qyapi.weixin.qq.com.",
                settings.wecom.api_base.base()
            )],
        },
        WeComError::InvalidUser(user) => Diagnosis {
            zh: "成员无效".to_owned(),
            en: err.to_string(),
            fixes: vec![format!("Add {user} to the app's visible range (可见范围).")],
        },
    }
}

fn diagnose_errcode(errcode: i64, message: &str) -> Diagnosis {
    let en = |what: &str| format!("{what} (errcode {errcode})");
    match errcode {
        40001 => diagnosis(
            "Secret 错误",
            en("invalid secret"),
            &[
                "wecom.secret 不是该应用的 Secret。",
                "wecom.secret is not this app's Secret: open 应用管理 → 自建 → the app, \
                 view its Secret (查看, sent to you in WeCom) and copy it again.",
            ],
        ),
        40013 => diagnosis(
            "企业ID 错误",
            en("invalid corp id"),
            &[
                "wecom.corp_id 应为 我的企业 → 企业信息 → 企业ID。",
                "wecom.corp_id must be the CorpID at 我的企业 → 企业信息 (My Company → \
                 Company Info), e.g. ww0123456789abcdef.",
            ],
        ),
        40091 => diagnosis(
            "Secret 无效或已重置",
            en("secret invalid or revoked"),
            &[
                "Secret 可能已被重置，请重新获取。",
                "The Secret was reset in the console (which revokes the old one) or is not \
                 valid: view the current Secret and update wecom.secret.",
            ],
        ),
        41004 => diagnosis(
            "缺少 Secret",
            en("secret missing"),
            &["Set wecom.secret (or PUSHBOT_WECOM__SECRET) to the app's Secret."],
        ),
        40014 | 42001 => diagnosis(
            "access_token 无效",
            en("the access token was refused just after it was issued"),
            &[
                "Unusual: check this machine's clock, and that nothing else resets the \
                 app's Secret; then run pushbot doctor again.",
            ],
        ),
        60020 => untrusted(message),
        301002 | 60011 | 48002 => diagnosis(
            "应用无权限",
            en("no privilege"),
            &["Secret 与 AgentId 必须属于同一个自建应用。", SAME_APP],
        ),
        40056 => diagnosis(
            "AgentId 错误",
            en("invalid agent id"),
            &[
                "wecom.agent_id 应为该应用页面上的 AgentId。",
                "wecom.agent_id must be the AgentId on the app's page (应用管理 → 自建 → \
                 the app).",
                SAME_APP,
            ],
        ),
        -1 | 45009 | 45033 | 45011 => diagnosis(
            "企业微信繁忙",
            en("WeCom is busy or rate-limiting"),
            &["Run pushbot doctor again in a minute."],
        ),
        _ => Diagnosis {
            zh: "企业微信返回错误".to_owned(),
            en: en("WeCom API error"),
            fixes: vec![
                message.to_owned(),
                format!("Look it up: https://open.work.weixin.qq.com/devtool/query?e={errcode}"),
            ],
        },
    }
}

/// 60020: the app's trusted IPs (企业可信IP) do not include the IP WeCom saw.
fn untrusted(message: &str) -> Diagnosis {
    let ip = untrusted_ip(message);
    let shown = ip.unwrap_or("this machine's egress IP");
    let mut fixes = vec![
        format!("把 {shown} 加入 应用管理 → 自建应用 → 应用 → 企业可信IP。"),
        format!(
            "Add {shown} under 应用管理 → 自建应用 → the app → 企业可信IP (\"Trusted IPs\"): \
             apps created after 2022-06-20 may call WeCom's API only from listed IPs."
        ),
        "Egress IP changes (home broadband)? Send WeCom calls through a proxy with a fixed \
         IP: wecom.proxy = \"http://host:3128\"."
            .to_owned(),
    ];
    if ip.is_none() {
        fixes.push(format!("WeCom said: {message}"));
    }
    Diagnosis {
        zh: "IP 未列入企业可信IP".to_owned(),
        en: format!(
            "IP {} is not trusted (errcode 60020)",
            ip.unwrap_or("of this machine")
        ),
        fixes,
    }
}

/// What kind of network failure a transport error's text describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetFault {
    Dns,
    Tls,
    Refused,
    Unreachable,
    Timeout,
    Other,
}

fn net_fault(text: &str) -> NetFault {
    let t = text.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if any(&[
        "dns error",
        "lookup address",
        "name or service not known",
        "no address associated",
        "name resolution",
    ]) {
        NetFault::Dns
    } else if any(&["certificate", "tls", "handshake", "alert"]) {
        NetFault::Tls
    } else if any(&["refused"]) {
        NetFault::Refused
    } else if any(&["unreachable", "no route"]) {
        NetFault::Unreachable
    } else if any(&["timed out", "timeout"]) {
        NetFault::Timeout
    } else {
        NetFault::Other
    }
}

fn diagnose_network(text: &str, settings: &Settings) -> Diagnosis {
    let api = settings.wecom.api_base.url();
    let host = api.host_str().unwrap_or("the WeCom API");
    let proxy = settings.wecom.proxy.is_some();
    let (zh, en, fix) = match net_fault(text) {
        NetFault::Dns => (
            "域名解析失败",
            format!("cannot resolve {host}"),
            "This machine cannot look the host up: check its DNS (/etc/resolv.conf, the \
             container's network), or go out through a proxy (wecom.proxy)."
                .to_owned(),
        ),
        NetFault::Tls => (
            "TLS 握手失败",
            format!("TLS with {host} failed"),
            "Something in between (a proxy inspecting HTTPS?) shows a certificate pushbot \
             does not trust; it trusts only the built-in Mozilla roots. An http:// proxy in \
             wecom.proxy tunnels TLS untouched."
                .to_owned(),
        ),
        NetFault::Refused => (
            "连接被拒绝",
            format!("connection to {host} refused"),
            format!(
                "Nothing accepts the connection: a firewall, a wrong wecom.api_base ({}){}.",
                api.as_str().trim_end_matches('/'),
                if proxy {
                    ", or wecom.proxy is down"
                } else {
                    ""
                }
            ),
        ),
        NetFault::Unreachable => (
            "网络不可达",
            format!("no route to {host}"),
            "This machine has no route to the internet: check its network or use a proxy \
             (wecom.proxy)."
                .to_owned(),
        ),
        NetFault::Timeout => (
            "连接超时",
            format!(
                "no answer from {host} within {}s",
                settings.wecom.request_timeout.as_secs_f32()
            ),
            format!(
                "Outbound HTTPS to {host}:443 seems blocked: open it in the firewall, or go \
                 out through a proxy (wecom.proxy)."
            ),
        ),
        NetFault::Other => (
            "网络错误",
            format!("cannot reach {host}"),
            "Check this machine's network and wecom.api_base / wecom.proxy.".to_owned(),
        ),
    };
    Diagnosis {
        zh: zh.to_owned(),
        en,
        fixes: vec![text.to_owned(), fix],
    }
}

/// The URL check WeCom makes when the callback URL is saved, made from this machine.
async fn callback(settings: &Settings) -> Finding {
    let url = format!("{}/wecom/callback", settings.public_base());
    let crypto = WeComCrypto::from_config(
        &settings.wecom.callback_token,
        &settings.wecom.encoding_aes_key,
        &settings.wecom.corp_id,
    );
    let plain = doctor_echo();
    let echostr = crypto.encrypt(&plain);
    let timestamp = UnixMillis::now().as_secs().to_string();
    let nonce = format!("{:010}", rand::random::<u32>());
    let signature = crypto.signature(&timestamp, &nonce, &echostr);
    let http = match http_client(CALLBACK_TIMEOUT, Egress::Direct) {
        Ok(http) => http,
        Err(err) => {
            return Finding::fail("回调检查失败", "cannot set up the HTTP client")
                .note(chain(&err));
        }
    };
    let sent = http
        .get(&url)
        .query(&[
            ("msg_signature", signature.as_str()),
            ("timestamp", timestamp.as_str()),
            ("nonce", nonce.as_str()),
            ("echostr", echostr.as_str()),
        ])
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => return callback_unreachable(&url, err),
    };
    let status = response.status();
    let landed = response.url().clone();
    let body = response.text().await.unwrap_or_default();
    if !same_place(&landed, &url) {
        // Without the query, which holds the signed echo.
        let mut to = landed;
        to.set_query(None);
        return Finding::fail("回调地址被重定向", format!("{url} redirects"))
            .note(format!("to {to} (which answered HTTP {})", status.as_u16()))
            .note(
                "Set server.public_url to the address that answers: WeCom's URL check may \
                 not follow redirects, and message links should not bounce.",
            );
    }
    if status.is_success() && body == plain {
        return Finding::pass("回调地址可用", format!("{url} answers the URL check"));
    }
    callback_wrong(&url, status, &body)
}

/// The echo the doctor's URL check sends: shaped like WeCom's (see
/// [`crate::wecom::checks::is_url_echo`]), or the gateway would refuse to answer it.
fn doctor_echo() -> String {
    format!("pushbot-doctor-{:016x}", rand::random::<u64>())
}

/// Whether the answer came from the URL asked (not after a redirect), query aside.
fn same_place(landed: &Url, asked: &str) -> bool {
    Url::parse(asked).is_ok_and(|asked| {
        landed.scheme() == asked.scheme()
            && landed.host() == asked.host()
            && landed.port_or_known_default() == asked.port_or_known_default()
            && landed.path() == asked.path()
    })
}

fn callback_unreachable(url: &str, err: reqwest::Error) -> Finding {
    let connect = err.is_connect() || err.is_timeout();
    let text = describe(err.without_url());
    let fault = net_fault(&text);
    let reason = match fault {
        NetFault::Dns => "host name not found",
        NetFault::Refused => "connection refused",
        NetFault::Unreachable => "no route",
        NetFault::Timeout => "no answer in 3 s",
        NetFault::Tls => "TLS failed",
        NetFault::Other => "connection failed",
    };
    if fault == NetFault::Tls {
        return Finding::fail("回调地址证书无效", format!("{url}: {reason}"))
            .note(text)
            .note(
                "WeCom needs HTTPS with a certificate for this host name from a public CA \
                 (Let's Encrypt will do), with its intermediate certificates.",
            );
    }
    if fault == NetFault::Other && !connect {
        return Finding::fail("回调地址应答中断", format!("{url}: {reason}"))
            .note(text)
            .note(
                "Something accepted the connection but gave no answer: check the reverse proxy.",
            );
    }
    Finding::skip("回调地址未检查", format!("{url}: {reason}")).note(
        "Not reachable from this machine. Is pushbot serve running? Behind NAT, or on an \
         address that works only from outside, WeCom may still reach it: saving the URL \
         in 接收消息 → 设置API接收 makes WeCom check it.",
    )
}

fn callback_wrong(url: &str, status: reqwest::StatusCode, body: &str) -> Finding {
    // pushbot's own errors are JSON with a `message`.
    let said = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| snippet(body));
    let fix = match status.as_u16() {
        200..=299 => {
            "It answered, but not with the echo: another service is there, or a pushbot \
             with a different wecom.encoding_aes_key. Check where the reverse proxy sends \
             /wecom/callback."
        }
        401 => {
            "The signature was refused: the pushbot answering there has a different \
             wecom.callback_token. Restart it with this configuration."
        }
        400 => {
            "The echo was refused: the pushbot answering there has a different \
             wecom.encoding_aes_key or wecom.corp_id (restart it with this configuration), \
             or, if it said \"stale\", its clock and this machine's differ."
        }
        404 | 405 => {
            "No callback handler there: check server.public_url, and that the reverse \
             proxy passes /wecom/callback (with its query string) to pushbot."
        }
        502..=504 => {
            "The reverse proxy cannot reach pushbot: is pushbot serve running, and is the \
             proxy's upstream server.listen?"
        }
        _ => "Unexpected answer: check that server.public_url leads to this pushbot.",
    };
    let mut finding = Finding::fail(
        "回调地址应答错误",
        format!("{url} answered HTTP {}", status.as_u16()),
    );
    if !said.is_empty() {
        finding = finding.note(format!("It said: {said}"));
    }
    finding.note(fix)
}

/// The start of a body, on one line, for showing what answered.
fn snippet(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = line.chars().take(100).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    cut
}

async fn smtp(settings: &Settings) -> Finding {
    let Some(email) = &settings.email else {
        return Finding::skip(
            "未配置邮件",
            "no [email] section: no e-mail fallback or verification codes",
        );
    };
    let login = if email.username.is_some() {
        "login OK"
    } else {
        "connected (no login configured)"
    };
    let checked = match EmailChannel::new(email) {
        Ok(channel) => channel.check().await.map_err(|e| e.to_string()),
        Err(err) => Err(chain(&err)),
    };
    match checked {
        Ok(what) => Finding::pass("SMTP 可用", format!("{what}: {login}")),
        Err(err) => Finding::fail(
            "SMTP 不可用",
            format!("SMTP {}:{} failed", email.host, email.port()),
        )
        .note(err)
        .note(
            "Check [email] host, port and security (465 \"tls\", 587 \"starttls\"), \
             username and password: QQ and 163 mail want the 授权码, Gmail an app password.",
        ),
    }
}

/// Checks the SMS provider's credentials and templates with a call that sends nothing,
/// where the provider has one (Twilio has none for templates: only the account).
async fn sms(settings: &Settings) -> Finding {
    let Some(sms) = &settings.sms else {
        return Finding::skip("未配置短信", "no [sms] section: no SMS fallback");
    };
    let provider = match http_client(sms.timeout, Egress::Environment)
        .map_err(|e| chain(&e))
        .and_then(|http| crate::delivery::sms::build(sms, http).map_err(|e| e.to_string()))
    {
        Ok(provider) => provider,
        Err(err) => return Finding::fail("短信配置错误", format!("[sms]: {err}")),
    };
    let label = provider.label();
    match provider.check().await {
        Check::Ok(what) => Finding::pass("短信可用", format!("{label}: {what}")),
        Check::Failed(what) => Finding::fail("短信不可用", format!("{label}: {what}")).note(
            "Check [sms]: the key pair, sign_name, template and code_template \
             (approved in the provider's console), and the server clock.",
        ),
        Check::CannotCheck(why) => Finding::warn(
            "短信未能检查",
            format!("{label}: cannot check without sending a text: {why}"),
        ),
    }
}

/// One line per shared destination (`[destinations.NAME]`): Telegram chats are checked
/// with calls that send nothing; the other kinds have none (their first message is the
/// check), so their line says so.
async fn destinations(settings: &Settings) -> Vec<Finding> {
    let configured = match settings.destinations.configured() {
        Ok(configured) => configured,
        Err(err) => return vec![Finding::fail("目的地配置错误", err.to_string())],
    };
    let timeout = settings.destinations.timeout;
    let http = match http_client(timeout, Egress::Environment) {
        Ok(http) => http,
        Err(err) => return vec![Finding::fail("目的地不可用", chain(&err))],
    };
    let dest_settings = crate::delivery::destinations::Settings {
        telegram_bot_token: settings.destinations.telegram_bot_token.clone(),
        timeout,
    };
    let mut findings = Vec::new();
    for d in configured {
        let what = format!(
            "{} ({}, {})",
            d.name,
            d.destination.kind().label(),
            d.destination.masked()
        );
        findings.push(match d.destination.check(&http, &dest_settings).await {
            DestCheck::Ok(done) => Finding::pass("目的地可用", format!("{what}: {done}")),
            DestCheck::Failed(why) => Finding::fail("目的地不可用", format!("{what}: {why}")),
            DestCheck::Unavailable(why) => Finding::skip("目的地未检查", format!("{what}: {why}")),
        });
    }
    findings
}

/// Columns a character takes in a terminal: 2 for CJK and other wide characters.
fn char_width(c: char) -> usize {
    let wide = matches!(u32::from(c),
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD);
    if wide { 2 } else { 1 }
}

/// Columns `s` takes in a terminal (CJK characters count two).
pub fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `text` in lines of at most [`WIDTH`] columns, the first starting with `first`, the
/// others with `indent`. Breaks at spaces, and between wide (CJK) characters when a run of
/// them does not fit; a longer word (a URL) gets a line of its own.
fn wrap(first: &str, indent: &str, text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_owned();
    let mut used = display_width(first);
    let mut empty = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let gap = usize::from(!empty);
        if used + gap + display_width(word) <= WIDTH {
            if !empty {
                line.push(' ');
            }
            line.push_str(word);
            used += gap + display_width(word);
            empty = false;
            continue;
        }
        if word.chars().any(|c| char_width(c) == 2) {
            let first_width = word.chars().next().map_or(0, char_width);
            if !empty && used + 1 + first_width <= WIDTH {
                line.push(' ');
                used += 1;
            }
            for c in word.chars() {
                if used + char_width(c) > WIDTH {
                    lines.push(std::mem::replace(&mut line, indent.to_owned()));
                    used = display_width(indent);
                }
                line.push(c);
                used += char_width(c);
            }
            empty = false;
            continue;
        }
        if !empty {
            lines.push(std::mem::replace(&mut line, indent.to_owned()));
            used = display_width(indent);
        }
        line.push_str(word);
        used += display_width(word);
        empty = false;
    }
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doctor_echo_is_one_the_gateway_answers() {
        for _ in 0..100 {
            let echo = doctor_echo();
            assert!(crate::wecom::checks::is_url_echo(&echo), "{echo:?}");
        }
    }

    #[test]
    fn lines_fit_eighty_columns_counting_chinese_as_two() {
        let text = "把 203.0.113.7 加入 应用管理 → 自建应用 → 应用 → 企业可信IP。".repeat(3);
        for line in wrap("    ", "    ", &text) {
            assert!(display_width(&line) <= WIDTH, "{line:?}");
            assert!(line.starts_with("    "), "{line:?}");
        }
        let english = "Add the address under the app's trusted IPs: apps created after \
                       2022-06-20 may call WeCom's API only from listed IPs.";
        let lines = wrap("", "  ", english);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines.join(" ").replace("   ", " "), english);
        // A word longer than a line stands alone rather than being cut.
        let url = format!("https://example.com/{}", "x".repeat(90));
        let lines = wrap("    ", "    ", &format!("see {url} now"));
        assert_eq!(lines, ["    see", &format!("    {url}"), "    now"]);
    }

    #[test]
    fn network_failures_are_told_apart() {
        let cases = [
            (
                "error sending request: client error (Connect): dns error: failed to lookup address information: Name or service not known",
                NetFault::Dns,
            ),
            (
                "error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)",
                NetFault::Refused,
            ),
            ("timed out", NetFault::Timeout),
            (
                "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer",
                NetFault::Tls,
            ),
            (
                "error sending request: tcp connect error: Network is unreachable (os error 101)",
                NetFault::Unreachable,
            ),
            (
                "connection closed before message completed",
                NetFault::Other,
            ),
        ];
        for (text, fault) in cases {
            assert_eq!(net_fault(text), fault, "{text}");
        }
    }

    #[test]
    fn every_credential_errcode_is_explained() {
        for (errcode, words) in [
            (40001, "invalid secret"),
            (40013, "invalid corp id"),
            (40091, "revoked"),
            (41004, "secret missing"),
            (42001, "access token"),
            (301002, "no privilege"),
            (60011, "no privilege"),
            (40056, "agent id"),
        ] {
            let d = diagnose_errcode(errcode, "errmsg");
            assert!(d.en.contains(words), "{errcode}: {}", d.en);
            assert!(d.en.contains(&errcode.to_string()), "{}", d.en);
            assert!(!d.fixes.is_empty() && !d.zh.is_empty());
        }
    }

    #[test]
    fn an_untrusted_ip_is_named_with_the_console_path_and_the_proxy() {
        let d = diagnose_errcode(
            60020,
            "WeCom refused … (errcode 60020: not allow to access from your ip, hint: [1], from ip: 203.0.113.7, more info at https://open.work.weixin.qq.com/devtool/query?e=60020)",
        );
        assert!(d.en.contains("203.0.113.7"), "{}", d.en);
        let fixes = d.fixes.join("\n");
        assert!(
            fixes.contains("企业可信IP") && fixes.contains("应用管理"),
            "{fixes}"
        );
        assert!(fixes.contains("wecom.proxy"), "{fixes}");
        // Without an IP in the message, the message itself is shown.
        let d = diagnose_errcode(60020, "not allow to access from your ip");
        assert!(
            d.fixes.iter().any(|f| f.contains("not allow")),
            "{:?}",
            d.fixes
        );
    }

    #[test]
    fn public_url_must_be_https_unless_local() {
        let mark = |url: &str| public_url(&Url::parse(url).unwrap()).mark;
        assert_eq!(mark("https://push.example.com"), Mark::Pass);
        assert_eq!(mark("http://localhost:8080"), Mark::Pass);
        let plain = public_url(&Url::parse("http://push.example.com/").unwrap());
        assert_eq!(plain.mark, Mark::Fail);
        assert!(
            plain.en.contains("http://push.example.com is not https"),
            "{}",
            plain.en
        );
        assert!(
            plain.notes.iter().any(|n| n.contains("phones")),
            "{:?}",
            plain.notes
        );
    }

    #[test]
    fn the_app_must_be_enabled_and_visible_to_someone() {
        let info: AgentInfo = serde_json::from_str(
            r#"{"agentid":1000005,"name":"推送","allow_userinfos":{"user":[{"userid":"a"}]},
                "allow_partys":{"partyid":[1,2]},"allow_tags":{"tagid":[3]},"close":0}"#,
        )
        .unwrap();
        let ok = app_finding(&info, 1000005);
        assert_eq!(ok.mark, Mark::Pass);
        assert_eq!(
            ok.en,
            "app \"推送\": visible to 1 member, 2 departments, 1 tag"
        );
        let closed = app_finding(
            &AgentInfo {
                close: 1,
                ..info.clone()
            },
            1000005,
        );
        assert_eq!(closed.mark, Mark::Fail);
        assert!(
            closed.notes.iter().any(|n| n.contains("启用")),
            "{:?}",
            closed.notes
        );
        let nobody = app_finding(
            &AgentInfo {
                name: info.name.clone(),
                ..AgentInfo::default()
            },
            1000005,
        );
        assert_eq!(nobody.mark, Mark::Fail);
        assert!(nobody.en.contains("nobody"), "{}", nobody.en);
    }

    #[test]
    fn loopback_hosts_are_local() {
        for url in [
            "http://localhost:8080",
            "http://127.0.0.1:1",
            "http://[::1]:8080",
        ] {
            assert!(is_local(&Url::parse(url).unwrap()), "{url}");
        }
        for url in ["http://push.example.com", "http://10.0.0.1"] {
            assert!(!is_local(&Url::parse(url).unwrap()), "{url}");
        }
    }
}
