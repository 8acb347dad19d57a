//! Where the request actor's conversions run: placing queued jobs on the converter with the
//! most free slots in the cluster (this node winning ties), the placements' bookkeeping,
//! and their leases. The actor's message handling (`request.rs`) calls into these;
//! [`remote`] is the owner's side of a conversion placed on another node.

pub mod remote;

use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorId, ActorProcessingErr, ActorRef};

use super::events::Kind;
use super::{RequestMsg, RequestState};
use crate::actors::converter::host::host_actor;
use crate::actors::converter::{self, ConvertTask, ConverterMsg, ReportTo};
use crate::actors::{CALL_TIMEOUT, Role, ask, tell};
use crate::cluster::mesh::ClusterMsg;
use crate::store::{Job, JobId, JobState, StoreError};

/// Where a conversion runs.
pub(super) struct Placement {
    /// Its fencing token.
    pub(super) attempt: i64,
    /// `None`: on this node.
    pub(super) remote: Option<Remote>,
}

/// A conversion on another node.
pub(super) struct Remote {
    /// The node's stable name.
    pub(super) node: String,
    /// Its host actor (its leaving the group means the node is gone).
    pub(super) host: Option<ActorId>,
    /// Last heard of (progress); the lease.
    pub(super) heard: Instant,
    /// The MP4 is there and converting (the lease runs from then).
    pub(super) started: bool,
}

/// Stops a placed conversion: withdrawn from its host, or canceled on this node.
pub(super) fn stop(id: JobId, placed: Placement) {
    match placed.remote {
        Some(remote) => remote::withdraw(&remote.node, &id, placed.attempt),
        None => {
            tell(Role::Converter, ConverterMsg::Cancel { id });
        }
    }
}

impl RequestState {
    pub(super) fn current(&self, id: &JobId, attempt: i64) -> bool {
        self.running.get(id).is_some_and(|p| p.attempt == attempt)
    }

    pub(super) fn current_remote(&self, id: &JobId, attempt: i64) -> bool {
        self.running
            .get(id)
            .is_some_and(|p| p.attempt == attempt && p.remote.is_some())
    }

    /// Takes a placement back and queues the job again (its next start bumps the attempt,
    /// which fences the old placement).
    pub(super) fn replace(&mut self, id: &JobId, why: &str) {
        let Some(placement) = self.running.remove(id) else {
            return;
        };
        if let Some(remote) = &placement.remote {
            tracing::warn!(job_id = %id, attempt = placement.attempt, node = %remote.node, why, "placing the job again");
            remote::withdraw(&remote.node, id, placement.attempt);
        }
        self.queue.push_front(id.clone());
    }

    /// Free slots on other nodes, most first; empty on a single node.
    pub(super) async fn remote_free(&self) -> Vec<(String, usize)> {
        if self.config.cluster.is_none() {
            return Vec::new();
        }
        let Ok(members) = ask(
            Role::Cluster,
            |reply| ClusterMsg::Members { reply },
            Duration::from_secs(2),
        )
        .await
        else {
            return Vec::new();
        };
        let now = Instant::now();
        members
            .into_iter()
            .filter(|m| m.state == "up" && self.busy_until.get(&m.node).is_none_or(|t| *t <= now))
            .filter_map(|m| {
                let status = m.status.filter(|s| !s.low_storage)?;
                // Offers in flight are not in the node's last heartbeat yet.
                let offered = self
                    .running
                    .values()
                    .filter(|p| p.remote.as_ref().is_some_and(|r| r.node == m.node && !r.started))
                    .count();
                let mut free = (status.total_slots as usize).saturating_sub(status.busy_slots as usize + offered);
                if self.freed.contains(&m.node) {
                    free = free.max(1);
                }
                (free > 0 && host_actor(&m.node).is_some()).then_some((m.node, free))
            })
            .collect()
    }

    /// Places queued jobs: each on the converter with the most free slots in the cluster,
    /// this node's winning ties.
    pub(super) async fn dispatch(&mut self, myself: &ActorRef<RequestMsg>) -> Result<(), ActorProcessingErr> {
        self.expire_leases();
        // Under the reserve (as last measured, on the tick), nothing new is placed: a
        // conversion writes an MP3 here (or brings one back here).
        if self.draining.is_some() || self.queue.is_empty() || self.facts.storage().low {
            return Ok(());
        }
        let status = ask(Role::Converter, |reply| ConverterMsg::Status { reply }, CALL_TIMEOUT).await;
        // The converter may be restarting: then only other nodes take work.
        let mut local = status.map_or(0, |(busy, total)| total.saturating_sub(busy));
        let mut remote = self.remote_free().await;
        self.freed.clear();
        while !self.queue.is_empty() {
            let best = remote
                .iter_mut()
                .filter(|(_, free)| *free > 0)
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
            let target = match best {
                Some((node, free)) if *free > local => {
                    *free -= 1;
                    Some(node.clone())
                }
                _ if local > 0 => {
                    local -= 1;
                    None
                }
                _ => break,
            };
            let Some(id) = self.queue.pop_front() else { break };
            let key = id.clone();
            let attempt = match self.db.run(move |s| s.start(&key, JobState::Converting)).await {
                Ok(attempt) => attempt,
                Err(StoreError::Conflict { .. }) => continue, // canceled meanwhile
                Err(e) => {
                    self.queue.push_front(id);
                    return Err(e.into());
                }
            };
            let key = id.clone();
            let job = self.db.run(move |s| s.job(&key)).await?;
            let Some(job) = job else { continue };
            self.announce(Kind::Progress, &job);
            if let Some(node) = target {
                self.place_remote(myself, &job, attempt, node);
                continue;
            }
            let task = ConvertTask {
                id: id.clone(),
                attempt,
                input: self.files.input(&id),
                output: self.files.output(&id),
                options: self.config.convert_options(job.bitrate_kbps, job.vbr_quality),
                report: ReportTo::Request,
            };
            if !converter::start(task).await {
                self.queue.push_front(id);
                break;
            }
            tracing::info!(job_id = %id, attempt, "conversion placed on this node");
            self.running.insert(id, Placement { attempt, remote: None });
        }
        Ok(())
    }

    /// Starts streaming `job` to `node`; the task reports back with `Placed`.
    pub(super) fn place_remote(&mut self, myself: &ActorRef<RequestMsg>, job: &Job, attempt: i64, node: String) {
        let host = host_actor(&node).map(|c| c.get_id());
        self.running.insert(
            job.id.clone(),
            Placement {
                attempt,
                remote: Some(Remote {
                    node: node.clone(),
                    host,
                    heard: Instant::now(),
                    started: false,
                }),
            },
        );
        let (id, input, me) = (job.id.clone(), self.files.input(&job.id), myself.clone());
        let (bitrate, vbr) = (job.bitrate_kbps, job.vbr_quality);
        let owner = self.config.node_name.clone();
        tokio::spawn(async move {
            let result = remote::place(&node, &owner, &id, attempt, &input, bitrate, vbr).await;
            let _ = me.send_message(RequestMsg::Placed {
                id,
                attempt,
                node,
                result,
            });
        });
    }

    /// Re-places remote conversions not heard of for a [`remote::LEASE`].
    pub(super) fn expire_leases(&mut self) {
        let expired: Vec<JobId> = self
            .running
            .iter()
            .filter(|(_, p)| {
                p.remote
                    .as_ref()
                    .is_some_and(|r| r.started && r.heard.elapsed() > remote::LEASE)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.replace(&id, "lease expired");
        }
    }

    /// Hosts left `placement.v1` (their node died or was fenced): their jobs are placed again.
    pub(super) async fn hosts_left(
        &mut self,
        myself: &ActorRef<RequestMsg>,
        cells: &[ActorCell],
    ) -> Result<(), ActorProcessingErr> {
        let gone: Vec<ActorId> = cells.iter().map(ActorCell::get_id).collect();
        let lost: Vec<JobId> = self
            .running
            .iter()
            .filter(|(_, p)| {
                p.remote
                    .as_ref()
                    .and_then(|r| r.host)
                    .is_some_and(|host| gone.contains(&host))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            self.replace(id, "its node left the cluster");
        }
        if !lost.is_empty() {
            self.dispatch(myself).await?;
        }
        Ok(())
    }
}
