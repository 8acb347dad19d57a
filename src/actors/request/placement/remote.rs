//! Placement as the owner sees it: offering one of this node's jobs to another node's host
//! (`converter/host.rs`), streaming it the MP4, withdrawing it, and taking its result back.
//! Every message carries the job's attempt, the fencing token: the owner accepts a result
//! only for the attempt it placed last (asked of the request actor), so a late result from
//! a fenced or re-placed host is refused.
//!
//! ```text
//! owner: request ──Offer/Input──▶ host (placement.v1) ──Convert──▶ converter (host's pool)
//! owner: jobs    ◀──Progress/Result── host   (receive: staged in tmp/, then Delivered)
//! ```

use std::path::Path;
use std::time::Duration;

use crate::actors::converter::host::{Answer, Attempt, HostMsg, Offer, Piece, Status, answer, host_actor};
use crate::actors::converter::{Failure, Outcome};
use crate::actors::request::RequestMsg;
use crate::actors::{CALL_TIMEOUT, Role, ask, tell};
use crate::cluster::call_actor;
use crate::cluster::pieces::{next_chunk, stage};
use crate::config::Config;
use crate::store::{Files, JobId, Produced};

/// An owner that hears nothing from a placed conversion for this long re-places it.
pub const LEASE: Duration = Duration::from_secs(20);

/// Why a placement did not start.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The host has no free slot.
    #[error("{0} has no free converter slot")]
    Busy(String),
    /// The host is unreachable or failed.
    #[error("{0}")]
    Failed(String),
}

/// Offers attempt `attempt` of job `id` (owned by `owner`, this node) to `node` and
/// streams it the MP4 at `input`.
pub async fn place(
    node: &str,
    owner: &str,
    id: &JobId,
    attempt: i64,
    input: &Path,
    bitrate_kbps: Option<u16>,
    vbr_quality: Option<u8>,
) -> Result<(), PlaceError> {
    let failed = |e: &dyn std::fmt::Display| PlaceError::Failed(format!("placing on {node}: {e}"));
    let host = host_actor(node).ok_or_else(|| failed(&"not connected"))?;
    let mut file = tokio::fs::File::open(input).await.map_err(|e| failed(&e))?;
    let size = file.metadata().await.map_err(|e| failed(&e))?.len();
    let offer = Offer {
        job_id: id.to_string(),
        attempt,
        size,
        bitrate_kbps: bitrate_kbps.map(u32::from),
        vbr_quality: vbr_quality.map(u32::from),
        owner: owner.to_string(),
    };
    let answer = call_actor(&host, node, |reply| HostMsg::Offer(offer, reply))
        .await
        .map_err(|e| failed(&e))?;
    match Status::of(answer.status) {
        Status::Ok => {}
        Status::Busy => return Err(PlaceError::Busy(node.to_string())),
        _ => return Err(failed(&answer.message)),
    }
    let mut offset = 0u64;
    loop {
        let data = next_chunk(&mut file).await.map_err(|e| failed(&e))?;
        let len = data.len() as u64;
        let last = offset + len >= size;
        let piece = Piece {
            job_id: id.to_string(),
            attempt,
            offset,
            data,
            last,
            total: size,
            ..Piece::default()
        };
        let answer = call_actor(&host, node, |reply| HostMsg::Input(piece, reply))
            .await
            .map_err(|e| failed(&e))?;
        match Status::of(answer.status) {
            Status::Ok if last => return Ok(()),
            Status::Ok => offset += len,
            Status::Busy => return Err(PlaceError::Busy(node.to_string())),
            _ => return Err(failed(&answer.message)),
        }
    }
}

/// Tells `node`'s host to drop attempt `attempt` of `id` (best effort).
pub fn withdraw(node: &str, id: &JobId, attempt: i64) {
    if let Some(host) = host_actor(node) {
        let _ = host.send_message(HostMsg::Cancel(Attempt {
            job_id: id.to_string(),
            attempt,
        }));
    }
}

/// The owner's side of a result piece (called by the jobs actor): checks the fencing token
/// with the request actor, stages the MP3 in `tmp/`, and hands it over on the last piece.
pub async fn receive(config: &Config, piece: Piece) -> Answer {
    let Some(id) = JobId::parse(&piece.job_id) else {
        return answer(Status::Error, "bad job id");
    };
    let attempt = piece.attempt;
    if piece.offset == 0 || piece.last {
        let current = ask(
            Role::Request,
            |reply| RequestMsg::IsCurrent {
                id: id.clone(),
                attempt,
                reply,
            },
            CALL_TIMEOUT,
        )
        .await;
        match current {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(job_id = %id, attempt, "stale conversion result refused");
                return answer(Status::Refused, "this attempt was fenced; the job was placed again");
            }
            Err(e) => return answer(Status::Error, e.to_string()),
        }
    }
    if !piece.error_code.is_empty() {
        let outcome: Outcome = Err(Failure::from_wire(
            piece.failed(),
            piece.error_code,
            piece.error_message,
        ));
        tell(Role::Request, RequestMsg::Converted { id, attempt, outcome });
        return answer(Status::Ok, "");
    }
    let staged = Files::at(&config.data_dir)
        .tmp_dir()
        .join(format!("result-{id}.{attempt}.part"));
    let written = stage(&staged, piece.offset, &piece.data, piece.last.then_some(piece.total)).await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&staged).await;
        return answer(Status::Error, e.to_string());
    }
    if !piece.last {
        return answer(Status::Ok, "");
    }
    let produced = Produced {
        mp3_bytes: i64::try_from(piece.total).unwrap_or(i64::MAX),
        duration_ms: i64::try_from(piece.duration_ms).unwrap_or(i64::MAX),
        warnings: Some(piece.warnings).filter(|w| !w.is_empty()),
    };
    let taken = ask(
        Role::Request,
        |reply| RequestMsg::Delivered {
            id: id.clone(),
            attempt,
            staged: staged.clone(),
            produced,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await;
    match taken {
        Ok(true) => answer(Status::Ok, ""),
        Ok(false) => {
            let _ = tokio::fs::remove_file(&staged).await;
            tracing::info!(job_id = %id, attempt, "stale conversion result refused");
            answer(Status::Refused, "this attempt was fenced; the job was placed again")
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&staged).await;
            answer(Status::Error, e.to_string())
        }
    }
}
