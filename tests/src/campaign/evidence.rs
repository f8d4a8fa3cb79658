//! What the checker looks at once the cluster healed: every session from etcd (waited for
//! until it ends, within a bound), the stop records, the catalog, the repositories on disk
//! (after the last retention and a garbage collection), verify answers, the tasks the agents
//! still hold, and the task runs from the agents' logs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use etcd_client::GetOptions;
use prost::Message;
use sluice_proto::pb::{self, SessionState};
use tokio::time::Instant;

use super::{
    client::{Api, agent_client},
    intervals::{self, TaskRun},
    jobs::{CampaignJob, Kind},
    topology::Topology,
    workload::WorkloadLog,
};
use crate::{
    api::summary,
    manifests::{STORE_DIR, store_blobs},
    sessions::find_entries,
};

/// How long the checker's etcd reads retry while etcd elects a leader.
const ETCD_SETTLE: Duration = Duration::from_secs(30);

/// A session as it ended, with its stop record.
#[derive(Debug, Clone)]
pub struct EndedSession {
    /// The session (GetSession).
    pub session: pb::Session,
    /// `/sessions/{id}/stop`, if a stop was recorded.
    pub stop: Option<pb::StopRequest>,
    /// etcd revision that created the stop key (0: none).
    pub stop_revision: i64,
    /// etcd revision of the stop key's last write (an escalation to IMMEDIATE).
    pub stop_changed: i64,
    /// etcd revision of the last write of the session record (the STOPPED one).
    pub ended_revision: i64,
    /// Modes of the stop requests of this session that a coordinator answered OK.
    pub accepted: Vec<pb::StopMode>,
}

impl EndedSession {
    /// The stop that applies: recorded before the session's final write. A stop key written
    /// after it came too late to change anything.
    pub fn applied_stop(&self) -> Option<&pb::StopRequest> {
        self.stop.as_ref().filter(|_| self.stop_revision < self.ended_revision)
    }

    /// Whether an escalation to IMMEDIATE came after the session's final write (the mode in
    /// force at the end was then GRACEFUL).
    pub fn escalated_late(&self) -> bool {
        self.applied_stop().is_some() && self.stop_changed > self.ended_revision
    }
}

/// One entry of a restore point folder level: `<repository>/<job>/<item>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// Job.
    pub job: String,
    /// Item.
    pub item: String,
    /// Entry name (a restore point id, or `.partial-<id>`).
    pub name: String,
}

/// Everything the checks need.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Sessions that ended.
    pub ended: Vec<EndedSession>,
    /// Sessions that did not end within the bound: id and last summary.
    pub unended: Vec<(String, String)>,
    /// Session ids the workload was given that etcd does not know.
    pub unknown: Vec<String>,
    /// Catalog entries: key suffix `{job}/{item}/{rp}` and value.
    pub catalog: Vec<(String, pb::RestorePoint)>,
    /// Restore point ids whose deletion began and did not end (durable retention marks):
    /// refused by verify, their folders may be partly gone.
    pub deleting: BTreeSet<String>,
    /// Jobs by name.
    pub jobs: BTreeMap<String, CampaignJob>,
    /// Restore point folders (and partial ones) of the VM and computer jobs.
    pub folders: Vec<Folder>,
    /// Verify answers per catalogued restore point id of the VM and computer jobs.
    pub verified: BTreeMap<String, Result<(), String>>,
    /// Tasks an agent still held once every session ended: agent and description.
    pub unacked: Vec<String>,
    /// Store blobs no manifest on disk names, after a garbage collection.
    pub orphan_blobs: Vec<String>,
    /// Task runs from the agents' logs.
    pub runs: Vec<TaskRun>,
    /// What the collection itself could not do (not violations of Sluice).
    pub notes: Vec<String>,
}

/// Collects the evidence; sessions get `bound` to end.
pub async fn collect(
    topology: &Topology,
    api: &Api,
    jobs: &[CampaignJob],
    workload: &WorkloadLog,
    bound: Duration,
) -> Result<Evidence, String> {
    let workload_ids: Vec<String> = workload.sessions.iter().map(|s| s.id.clone()).collect();
    let mut etcd = topology.etcd_client().await?;
    let prefix = topology.prefix.clone();
    let mut evidence = Evidence {
        jobs: jobs.iter().map(|j| (j.job.name.clone(), j.clone())).collect(),
        ..Evidence::default()
    };
    let ids = session_ids(&mut etcd, &prefix).await?;
    evidence.unknown = workload_ids.iter().filter(|id| !ids.contains(*id)).cloned().collect();
    let (ended, unended) = wait_ended(api, &ids, bound).await;
    evidence.unended = unended;
    wait_quiet(topology, &mut etcd, &prefix, &mut evidence).await?;
    for session in ended {
        let key = format!("{prefix}/sessions/{}/stop", session.id);
        let (stop, stop_revision) = match get_one(&mut etcd, &key).await? {
            Some((value, revision)) => {
                let stop = pb::StopRequest::decode(value.as_slice())
                    .map_err(|e| format!("undecodable {key}: {e}"))?;
                (Some(stop), revision)
            }
            None => (None, 0),
        };
        let stop_changed = mod_revision(&mut etcd, &key).await?;
        let record = format!("{prefix}/sessions/{}", session.id);
        let ended_revision = mod_revision(&mut etcd, &record).await?;
        let accepted = workload.accepted_stops.get(&session.id).cloned().unwrap_or_default();
        evidence.ended.push(EndedSession {
            session,
            stop,
            stop_revision,
            stop_changed,
            ended_revision,
            accepted,
        });
    }
    evidence.catalog = catalog(&mut etcd, &prefix).await?;
    evidence.deleting = deleting(&mut etcd, &prefix).await?;
    collect_garbage(topology, jobs, &mut evidence).await;
    evidence.folders = folders(jobs);
    for (_, rp) in &evidence.catalog {
        let on_disk = evidence.jobs.get(&rp.job).is_some_and(|j| j.kind != Kind::Sim)
            && !evidence.deleting.contains(&rp.id);
        if on_disk {
            evidence.verified.insert(rp.id.clone(), verify(api, rp).await);
        }
    }
    for agent in &topology.agents {
        let kills = topology.kills.get(agent.id());
        evidence.runs.extend(intervals::read(agent.id(), &agent.stderr_log(), kills));
    }
    Ok(evidence)
}

async fn session_ids(
    etcd: &mut etcd_client::Client,
    prefix: &str,
) -> Result<BTreeSet<String>, String> {
    let root = format!("{prefix}/sessions/");
    let options = GetOptions::new().with_prefix().with_keys_only();
    let got = get(etcd, &root, Some(options)).await.map_err(|e| format!("list sessions: {e}"))?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let id = key.strip_prefix(&root)?.to_string();
            (!id.contains('/')).then_some(id)
        })
        .collect())
}

/// The value of `key` and the revision that created it.
async fn get_one(
    etcd: &mut etcd_client::Client,
    key: &str,
) -> Result<Option<(Vec<u8>, i64)>, String> {
    let got = get(etcd, key, None).await.map_err(|e| format!("get {key}: {e}"))?;
    Ok(got.kvs().first().map(|kv| (kv.value().to_vec(), kv.create_revision())))
}

/// The revision of the last write of `key` (0 when absent).
async fn mod_revision(etcd: &mut etcd_client::Client, key: &str) -> Result<i64, String> {
    let got = get(etcd, key, None).await.map_err(|e| format!("get {key}: {e}"))?;
    Ok(got.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// Polls every session until all are STOPPED or `bound` passes.
async fn wait_ended(
    api: &Api,
    ids: &BTreeSet<String>,
    bound: Duration,
) -> (Vec<pb::Session>, Vec<(String, String)>) {
    let deadline = Instant::now() + bound;
    let mut ended: BTreeMap<String, pb::Session> = BTreeMap::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let open: Vec<String> = ids.iter().filter(|id| !ended.contains_key(*id)).cloned().collect();
        for id in &open {
            let request = pb::GetSessionRequest { session_id: id.clone(), ..Default::default() };
            match api
                .call(0, |mut c| {
                    let request = request.clone();
                    async move { c.get_session(request).await }
                })
                .await
            {
                Ok(session) if session.state() == SessionState::Stopped => {
                    ended.insert(id.clone(), session);
                }
                Ok(session) => {
                    last.insert(id.clone(), summary(&session));
                }
                Err(status) => {
                    last.insert(
                        id.clone(),
                        format!("GetSession: {:?}: {}", status.code(), status.message()),
                    );
                }
            }
        }
        if ended.len() == ids.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let unended = ids
        .iter()
        .filter(|id| !ended.contains_key(*id))
        .map(|id| (id.clone(), last.get(id).cloned().unwrap_or_default()))
        .collect();
    (ended.into_values().collect(), unended)
}

/// Longest the cluster may take, once every session ended, to acknowledge every task and to
/// finish retention.
const QUIET_BOUND: Duration = Duration::from_secs(60);

/// Waits until no agent holds a task and no retention is under way (no deletion mark), two
/// looks in a row; whatever agents still hold then is recorded as unacknowledged.
async fn wait_quiet(
    topology: &Topology,
    etcd: &mut etcd_client::Client,
    prefix: &str,
    evidence: &mut Evidence,
) -> Result<(), String> {
    let deadline = Instant::now() + QUIET_BOUND;
    let marks = format!("{prefix}/restore-points-deleting/");
    let mut quiet_looks = 0;
    loop {
        let mut held = Vec::new();
        let stuck: BTreeSet<&str> = evidence.unended.iter().map(|(id, _)| id.as_str()).collect();
        for agent in &topology.agents {
            let mut client = agent_client(&agent.url());
            let request = pb::ListTasksRequest { session_id: String::new() };
            match client.list_tasks(request).await {
                Ok(listed) => held.extend(
                    listed
                        .into_inner()
                        .tasks
                        .iter()
                        .filter(|t| {
                            !stuck.contains(t.key.as_ref().map_or("", |k| k.session_id.as_str()))
                        })
                        .map(|t| {
                            let key = t.key.clone().unwrap_or_default();
                            let outcome =
                                t.outcome.as_ref().map_or("running", |o| o.state().as_str_name());
                            format!(
                                "{}: {}/{}#{} epoch {} {outcome}",
                                agent.id(),
                                key.session_id,
                                key.item_index,
                                key.attempt,
                                t.epoch
                            )
                        }),
                ),
                Err(status) => held.push(format!("{}: ListTasks {:?}", agent.id(), status.code())),
            }
        }
        let options = GetOptions::new().with_prefix().with_keys_only();
        let deleting = get(etcd, &marks, Some(options)).await.map_err(|e| e.to_string())?;
        let quiet = held.is_empty() && deleting.kvs().is_empty();
        quiet_looks = if quiet { quiet_looks + 1 } else { 0 };
        if quiet_looks >= 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            evidence.unacked = held;
            if !deleting.kvs().is_empty() {
                evidence
                    .notes
                    .push(format!("{} retention marks still there", deleting.kvs().len()));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn catalog(
    etcd: &mut etcd_client::Client,
    prefix: &str,
) -> Result<Vec<(String, pb::RestorePoint)>, String> {
    let root = format!("{prefix}/restore-points/");
    let got = get(etcd, &root, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("read the catalog: {e}"))?;
    got.kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).trim_start_matches(&root).to_string();
            let rp = pb::RestorePoint::decode(kv.value())
                .map_err(|e| format!("undecodable {key}: {e}"))?;
            Ok((key, rp))
        })
        .collect()
}

/// Ids of the restore points with a deletion mark left.
async fn deleting(
    etcd: &mut etcd_client::Client,
    prefix: &str,
) -> Result<BTreeSet<String>, String> {
    let root = format!("{prefix}/restore-points-deleting/");
    let options = GetOptions::new().with_prefix().with_keys_only();
    let got = get(etcd, &root, Some(options)).await.map_err(|e| format!("read marks: {e}"))?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| String::from_utf8_lossy(kv.key()).rsplit('/').next().map(str::to_owned))
        .collect())
}

/// Has the computer agent collect the garbage of each computer repository, then lists the
/// blobs that no manifest on disk names.
async fn collect_garbage(topology: &Topology, jobs: &[CampaignJob], evidence: &mut Evidence) {
    let Some(agent) = topology.agents.last() else { return };
    for job in jobs.iter().filter(|j| j.kind == Kind::Computer) {
        let repository = job.repository();
        let mut client = agent_client(&agent.url());
        let request = pb::CollectGarbageRequest { repository: repository.display().to_string() };
        match client.collect_garbage(request).await {
            Ok(answer) if !answer.get_ref().skipped.is_empty() => {
                evidence
                    .notes
                    .push(format!("CollectGarbage skipped: {}", answer.get_ref().skipped));
            }
            Ok(_) => {}
            Err(status) => evidence.notes.push(format!("CollectGarbage: {status:?}")),
        }
        let named = named_blobs(&repository);
        let orphans = store_blobs(&repository).into_iter().filter(|b| !named.contains(b));
        evidence
            .orphan_blobs
            .extend(orphans.map(|b| format!("{}/{STORE_DIR}/{b}", repository.display())));
    }
}

/// Blobs named by any computer manifest under the repository (not in the store).
fn named_blobs(repository: &std::path::Path) -> BTreeSet<String> {
    let manifests = find_entries(repository, |name| name == "manifest.json");
    let mut named = BTreeSet::new();
    for path in manifests.iter().filter(|p| !p.starts_with(repository.join(STORE_DIR))) {
        let Some(folder) = path.parent() else { continue };
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        if let Ok(manifest) = crate::manifests::Manifest::parse(&text, folder) {
            named.extend(manifest.blobs());
        }
    }
    named
}

/// Every entry at `<repository>/<job>/<item>/` of the VM and computer jobs.
fn folders(jobs: &[CampaignJob]) -> Vec<Folder> {
    let mut found = Vec::new();
    for job in jobs.iter().filter(|j| j.kind != Kind::Sim) {
        let root: PathBuf = job.repository().join(&job.job.name);
        for item in read_names(&root) {
            for name in read_names(&root.join(&item)) {
                found.push(Folder { job: job.job.name.clone(), item: item.clone(), name });
            }
        }
    }
    found
}

fn read_names(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

async fn verify(api: &Api, rp: &pb::RestorePoint) -> Result<(), String> {
    let request =
        pb::VerifyRestorePointRequest { job: rp.job.clone(), restore_point_id: rp.id.clone() };
    match api
        .call(0, |mut c| {
            let request = request.clone();
            async move { c.verify_restore_point(request).await }
        })
        .await
    {
        Ok(answer) if answer.ok => Ok(()),
        Ok(answer) => Err(answer.problems.join("; ")),
        Err(status) => {
            Err(format!("VerifyRestorePoint: {:?}: {}", status.code(), status.message()))
        }
    }
}

/// A read of `key`, again while etcd answers UNAVAILABLE (a leader election right after the
/// nemesis healed a member: "leader changed"), for at most `ETCD_SETTLE`.
async fn get(
    etcd: &mut etcd_client::Client,
    key: &str,
    options: Option<GetOptions>,
) -> Result<etcd_client::GetResponse, etcd_client::Error> {
    let deadline = Instant::now() + ETCD_SETTLE;
    let mut pause = Duration::from_millis(50);
    loop {
        match etcd.get(key, options.clone()).await {
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}
