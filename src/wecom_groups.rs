//! Groups backed by WeCom (`[[groups.wecom]]`, issue 29 point 6): their members are a
//! WeCom department's (`user/simplelist`) or tag's (`tag/get`, its tagged departments
//! read like departments), read through the service's WeCom client and cached in
//! `group_members`.
//!
//! - At start-up ([`WecomGroups::start`]) every table becomes a `groups` row with
//!   `source = 'wecom'`, found again by name on the next start (same token); its `owners`
//!   are its owners (they are members too: they get its messages, and may mute it). A
//!   table removed from the configuration deletes its group, so its token stops working
//!   (messages it sent before stay as they are); renaming a table is removing one and
//!   adding another (a new token).
//! - A long-lived task ([`WecomGroups::spawn`]) reads every group again each
//!   `groups.refresh`; a panic in it is caught, logged and the loop restarted after
//!   [`RESTART_PAUSE`](supervise::RESTART_PAUSE), and `/healthz` reports its last pass, its panics and the groups
//!   WeCom refused ([`WecomGroups::health`]).
//! - The send path calls [`WecomGroups::refresh_if_stale`] with the group's id before it
//!   takes the membership: a WeCom-backed group not read within `groups.refresh` is read
//!   at once (a chat group costs nothing: no database read, no call).
//! - When WeCom refuses (60011: the department or tag is outside the app's visible range,
//!   可见范围), the log says which permission to grant, the last known members stay, and
//!   it is tried again at the next pass (at send time at most once a minute).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::GroupsSettings;
use crate::domain::UserId;
use crate::store::{Store, StoreError, WecomGroupSpec};
use crate::supervise::{self, FaultPoint, Supervisor};
use crate::time::UnixMillis;
use crate::wecom::client::{WeComClient, WeComError};

/// A group WeCom refused is read again at send time at most this often.
const RETRY_AT_SEND: Duration = Duration::from_secs(60);

/// One `[[groups.wecom]]` table and its group's id.
#[derive(Debug, Clone)]
struct Configured {
    id: String,
    name: String,
    party: Vec<u64>,
    tag: Vec<u64>,
    owners: Vec<UserId>,
}

/// What was refused: the department or tag (`department 2`, `department 3 (tagged 5)`,
/// `tag 5`) and WeCom's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub what: String,
    pub error: WeComError,
}

impl Refusal {
    /// What to do about it, for the log and `pushbot doctor`.
    pub fn advice(&self) -> String {
        advice(&self.what, &self.error)
    }
}

/// What to do when WeCom would not list `what`'s members.
pub fn advice(what: &str, error: &WeComError) -> String {
    match error {
        WeComError::Api { errcode: 60011, .. } => format!(
            "the app may not read {what}: add {what} to the app's visible range \
             (应用管理 → the app → 可见范围 / Visible to) in the WeCom admin console"
        ),
        WeComError::Api {
            errcode: 60003 | 60123 | 40068,
            ..
        } => format!("WeCom knows no {what}: check the ids in [[groups.wecom]] (通讯录)"),
        _ => format!("WeCom did not list {what}'s members: {error}"),
    }
}

/// Reads the members of a `[[groups.wecom]]` table from WeCom: its departments', its
/// tags' and the departments its tags name; userids as pushbot keeps them (lower case),
/// each once, sorted.
pub async fn read_members(
    client: &WeComClient,
    party: &[u64],
    tag: &[u64],
) -> Result<Vec<UserId>, Refusal> {
    let mut users = BTreeSet::new();
    let refused = |what: String| move |error| Refusal { what, error };
    let mut departments: Vec<(u64, String)> = party
        .iter()
        .map(|d| (*d, format!("department {d}")))
        .collect();
    for t in tag {
        let (tagged, parties) = client
            .tag_members(*t)
            .await
            .map_err(refused(format!("tag {t}")))?;
        users.extend(tagged.iter().map(|u| UserId::new(u)));
        departments.extend(
            parties
                .into_iter()
                .map(|d| (d, format!("department {d} (tagged {t})"))),
        );
    }
    let mut seen = BTreeSet::new();
    for (d, what) in departments {
        if !seen.insert(d) {
            continue;
        }
        let members = client.department_members(d).await.map_err(refused(what))?;
        users.extend(members.iter().map(|u| UserId::new(u)));
    }
    users.retain(|u| !u.as_str().is_empty());
    Ok(users.into_iter().collect())
}

/// The WeCom-backed groups of this service (none without `[[groups.wecom]]`). Clones
/// share one state.
#[derive(Clone, Default)]
pub struct WecomGroups {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    store: Store,
    client: Arc<WeComClient>,
    supervisor: Supervisor,
    groups: Vec<Configured>,
    refresh: Duration,
    max_members: u32,
    /// Held while reading from WeCom, so the loop and sends never read a group twice at
    /// once; holds when a read last failed, per group id.
    reading: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// Unix ms when the loop last began a pass.
    last_pass: AtomicI64,
    panics: AtomicU64,
    /// Per group name: why its last read failed (until one succeeds).
    refused: Mutex<BTreeMap<String, String>>,
}

/// What `/healthz` says about the refresh loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub groups: usize,
    pub last_pass_age: Duration,
    pub refresh: Duration,
    pub panics: u64,
    /// Group name → what to do.
    pub refused: BTreeMap<String, String>,
}

impl Health {
    /// The loop has not begun a pass for two periods and a minute: it is stuck.
    pub fn stalled(&self) -> bool {
        self.last_pass_age > self.refresh * 2 + Duration::from_secs(60)
    }
}

impl std::fmt::Debug for WecomGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WecomGroups")
            .field(
                "groups",
                &self.inner.as_ref().map_or(0, |inner| inner.groups.len()),
            )
            .finish_non_exhaustive()
    }
}

impl WecomGroups {
    /// Makes the configured groups rows (deleting those no longer configured) and sets
    /// their owners; nothing is read from WeCom yet.
    pub async fn start(
        store: &Store,
        client: Arc<WeComClient>,
        settings: &GroupsSettings,
    ) -> Result<Self, StoreError> {
        let mut specs = Vec::with_capacity(settings.wecom.len());
        for table in &settings.wecom {
            // Checked when the configuration was loaded.
            let name = crate::groups::normalize_name(&table.name)
                .unwrap_or_else(|_| table.name.trim().to_owned());
            specs.push(WecomGroupSpec {
                name,
                owners: table.owners.iter().map(|o| UserId::new(o)).collect(),
            });
        }
        let (rows, removed) = store.sync_wecom_groups(&specs).await?;
        for name in removed {
            tracing::info!(
                group = %name,
                "deleted the WeCom-backed group {name:?}: it is no longer in [[groups.wecom]] \
                 (its token no longer works)"
            );
        }
        if settings.wecom.is_empty() {
            return Ok(Self::default());
        }
        let groups = rows
            .into_iter()
            .zip(&settings.wecom)
            .zip(specs)
            .map(|((row, table), spec)| Configured {
                id: row.id,
                name: row.name,
                party: table.party.clone(),
                tag: table.tag.clone(),
                owners: spec.owners,
            })
            .collect();
        Ok(Self {
            inner: Some(Arc::new(Inner {
                store: store.clone(),
                client,
                supervisor: store.supervisor().clone(),
                groups,
                refresh: settings.refresh,
                max_members: settings.max_members,
                reading: tokio::sync::Mutex::new(HashMap::new()),
                last_pass: AtomicI64::new(UnixMillis::now().as_millis()),
                panics: AtomicU64::new(0),
                refused: Mutex::new(BTreeMap::new()),
            })),
        })
    }

    /// Starts the refresh loop (nothing when no group is WeCom-backed); it runs until the
    /// handle is aborted. A pass that panics is logged and the loop starts again after
    /// [`RESTART_PAUSE`](supervise::RESTART_PAUSE).
    pub fn spawn(&self) -> Option<tokio::task::JoinHandle<()>> {
        let inner = Arc::clone(self.inner.as_ref()?);
        Some(tokio::spawn(async move {
            supervise::keep_running(
                "WeCom group refresh",
                "WeCom-backed groups' refresh loop",
                &inner.panics,
                || Arc::clone(&inner).run(),
            )
            .await;
        }))
    }

    /// Reads the WeCom-backed group `group_id`'s members from WeCom when they were last
    /// read more than `groups.refresh` ago (or never). For the send path, before it takes
    /// the membership: a chat group (or any id not WeCom-backed) returns at once without
    /// a database read. Never fails: when WeCom refuses, the last known members stay (and
    /// the log says why); a group refused is read again here at most once a minute.
    pub async fn refresh_if_stale(&self, group_id: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let Some(group) = inner.groups.iter().find(|g| g.id == group_id) else {
            return;
        };
        if inner.fresh(group).await {
            return;
        }
        let mut reading = inner.reading.lock().await;
        if reading
            .get(group_id)
            .is_some_and(|at| at.elapsed() < RETRY_AT_SEND.min(inner.refresh))
        {
            return;
        }
        // Someone may have read it while we waited.
        if inner.fresh(group).await {
            return;
        }
        inner_read(inner, group, &mut reading).await;
    }

    /// Reads every WeCom-backed group now (what the loop does each `groups.refresh`).
    pub async fn refresh_all(&self) {
        if let Some(inner) = &self.inner {
            inner.refresh_all().await;
        }
    }

    /// The refresh loop's state, for `/healthz`; `None` without WeCom-backed groups.
    pub fn health(&self) -> Option<Health> {
        let inner = self.inner.as_ref()?;
        let last = UnixMillis::from_millis(inner.last_pass.load(Ordering::Relaxed));
        Some(Health {
            groups: inner.groups.len(),
            last_pass_age: UnixMillis::now().since(last),
            refresh: inner.refresh,
            panics: inner.panics.load(Ordering::Relaxed),
            refused: inner
                .refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        })
    }
}

impl Inner {
    async fn run(self: Arc<Self>) {
        loop {
            self.last_pass
                .store(UnixMillis::now().as_millis(), Ordering::Relaxed);
            self.supervisor
                .faults()
                .panic_at(FaultPoint::GroupRefreshPanic);
            self.refresh_all().await;
            tokio::time::sleep(self.refresh).await;
        }
    }

    async fn refresh_all(&self) {
        for group in &self.groups {
            let mut reading = self.reading.lock().await;
            inner_read(self, group, &mut reading).await;
        }
    }

    /// Whether `group` was read within `groups.refresh` (a storage error counts as fresh:
    /// the send goes on with what is stored).
    async fn fresh(&self, group: &Configured) -> bool {
        match self.store.wecom_group_refreshed_at(&group.id).await {
            Ok(Some(at)) => UnixMillis::now().since(at) < self.refresh,
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(group = %group.name, error = %crate::error::chain(&err), "could not read when the WeCom-backed group was last refreshed");
                true
            }
        }
    }

    fn set_refused(&self, name: &str, why: Option<String>) {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match why {
            Some(why) => refused.insert(name.to_owned(), why),
            None => refused.remove(name),
        };
    }
}

/// Reads one group from WeCom and stores its members; on failure keeps the last ones.
async fn inner_read(inner: &Inner, group: &Configured, reading: &mut HashMap<String, Instant>) {
    let members = match read_members(&inner.client, &group.party, &group.tag).await {
        Ok(members) => members,
        Err(refusal) => {
            let advice = refusal.advice();
            tracing::error!(
                group = %group.name,
                error = %refusal.error,
                "could not read the members of the WeCom-backed group {:?}: {advice}; \
                 its last known members keep getting its messages",
                group.name
            );
            inner.set_refused(&group.name, Some(advice));
            reading.insert(group.id.clone(), Instant::now());
            return;
        }
    };
    if members.len() > inner.max_members as usize {
        let advice = format!(
            "WeCom lists {} members, more than groups.max_members ({}): raise it or name \
             fewer departments and tags",
            members.len(),
            inner.max_members
        );
        tracing::error!(group = %group.name, "the WeCom-backed group {:?}: {advice}; its last known members are kept", group.name);
        inner.set_refused(&group.name, Some(advice));
        reading.insert(group.id.clone(), Instant::now());
        return;
    }
    match inner
        .store
        .replace_wecom_members(&group.id, &group.owners, &members)
        .await
    {
        Ok(_) => {
            tracing::debug!(group = %group.name, members = members.len(), "read the WeCom-backed group's members");
            inner.set_refused(&group.name, None);
            reading.remove(&group.id);
        }
        Err(err) => {
            tracing::warn!(group = %group.name, error = %crate::error::chain(&err), "could not store the WeCom-backed group's members; trying again later");
            reading.insert(group.id.clone(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(errcode: i64) -> WeComError {
        WeComError::Api {
            errcode,
            message: format!("errcode {errcode}"),
        }
    }

    #[test]
    fn advice_names_what_to_grant_or_fix() {
        let refused = Refusal {
            what: "department 3 (tagged 5)".to_owned(),
            error: api(60011),
        };
        let text = refused.advice();
        assert!(
            text.contains("add department 3 (tagged 5) to the app's visible range")
                && text.contains("可见范围"),
            "{text}"
        );
        for code in [60003, 60123, 40068] {
            let text = advice("tag 5", &api(code));
            assert!(text.contains("WeCom knows no tag 5"), "{code}: {text}");
        }
        let text = advice("tag 5", &WeComError::Http(502));
        assert!(text.contains("HTTP 502"), "{text}");
    }

    #[test]
    fn the_loop_counts_as_stalled_after_two_periods_and_a_minute() {
        let health = |age: u64| Health {
            groups: 1,
            last_pass_age: Duration::from_secs(age),
            refresh: Duration::from_secs(600),
            panics: 0,
            refused: BTreeMap::new(),
        };
        assert!(!health(1260).stalled());
        assert!(health(1261).stalled());
    }
}
