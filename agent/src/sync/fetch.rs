//! A standby fetching from its group's primary: the current manifest
//! (refused unless it comes from the group's primary at the epoch this
//! node knows, or a later one, and checks whole), then the content of
//! every file it does not already hold, each written to the staging
//! directory, bounded by its announced size, hashed and synced before it
//! counts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::peer_service_client::PeerServiceClient;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use super::apply::Staging;
use super::manifest::{self, MAX_ENTRIES, Manifest, hex};
use super::peer::MAX_MESSAGE;
use super::rate::RateLimit;

/// A peer that sends nothing for this long is given up.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Where to fetch from, as this node's assignment says.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub group: String,
    pub epoch: u64,
    pub primary: String,
    pub address: String,
}

/// What the primary answered.
pub enum Answer {
    /// The copy held is the current snapshot.
    Current { epoch: u64 },
    /// A newer snapshot, checked whole.
    Newer { manifest: Manifest, epoch: u64 },
}

pub fn client(channel: Channel) -> PeerServiceClient<Channel> {
    PeerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// What a peer's error said, cut to a line's length.
fn said(status: &tonic::Status) -> String {
    status.message().chars().take(300).collect()
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, String> {
    match tokio::time::timeout(STALL_LIMIT, stream.message()).await {
        Err(_) => Err(format!("the primary sent nothing for {STALL_LIMIT:?}")),
        Ok(Err(status)) => Err(said(&status)),
        Ok(Ok(message)) => Ok(message),
    }
}

/// Asks `source` for the current snapshot of `sync`; `have` is the
/// snapshot held, `held_epoch` the epoch it came from.
pub async fn manifest(
    client: &mut PeerServiceClient<Channel>,
    source: &Source,
    sync: &str,
    have: &str,
    held_epoch: u64,
) -> Result<Answer, String> {
    let request = pb::ManifestRequest {
        group: source.group.clone(),
        sync: sync.to_owned(),
        epoch: source.epoch,
        have: have.to_owned(),
    };
    let mut stream = tokio::time::timeout(STALL_LIMIT, client.get_manifest(request))
        .await
        .map_err(|_| "the primary did not answer".to_owned())?
        .map_err(|s| said(&s))?
        .into_inner();
    let Some(pb::ManifestPart {
        part: Some(pb::manifest_part::Part::Header(header)),
    }) = next(&mut stream).await?
    else {
        return Err("the answer does not start with a manifest header".into());
    };
    if header.node != source.primary {
        return Err(format!(
            "the peer at {} is {:?}, not the group's primary {}",
            source.address,
            header.node.chars().take(63).collect::<String>(),
            source.primary
        ));
    }
    if header.epoch < source.epoch || header.epoch < held_epoch {
        return Err(format!(
            "refused a snapshot from epoch {}: this node knows epoch {} and holds a copy from epoch {held_epoch}",
            header.epoch, source.epoch
        ));
    }
    if header.unchanged {
        return Ok(Answer::Current {
            epoch: header.epoch,
        });
    }
    if header.entries > MAX_ENTRIES as u64 {
        return Err(format!(
            "the manifest announces {} entries, more than {MAX_ENTRIES}",
            header.entries
        ));
    }
    let mut entries = Vec::new();
    let mut weight = 0usize;
    while let Some(part) = next(&mut stream).await? {
        let Some(pb::manifest_part::Part::Entries(page)) = part.part else {
            return Err("a second manifest header".into());
        };
        if entries.len() + page.entries.len() > usize::try_from(header.entries).unwrap_or(0) {
            return Err("the manifest holds more entries than it announced".into());
        }
        weight = weight.saturating_add(page.entries.iter().map(manifest::weight).sum::<usize>());
        if weight > manifest::MAX_BYTES {
            return Err(format!(
                "the manifest weighs more than {} bytes",
                manifest::MAX_BYTES
            ));
        }
        entries.extend(page.entries);
    }
    if entries.len() as u64 != header.entries {
        return Err("the manifest ended before all its entries".into());
    }
    // Checking and hashing a large manifest is work: off the async threads
    // (the agent's heartbeats must not wait for it).
    let manifest = tokio::task::spawn_blocking(move || Manifest::check(entries))
        .await
        .map_err(|e| format!("checking the manifest stopped: {e}"))??;
    if manifest.id != header.snapshot {
        return Err("the manifest's entries do not match its snapshot id".into());
    }
    Ok(Answer::Newer {
        manifest,
        epoch: header.epoch,
    })
}

/// One standby's transfer of one sync.
pub struct Transfer<'a> {
    pub source: &'a Source,
    pub sync: &'a str,
    pub staging: &'a Staging,
    pub limit: Option<&'a RateLimit>,
    /// Bytes of content received, counted as they arrive.
    pub received: &'a AtomicU64,
}

/// Fetches every file of `manifest` whose content is neither held
/// (`have`) nor already staged, into the staging directory.
pub async fn contents(
    client: &mut PeerServiceClient<Channel>,
    transfer: &Transfer<'_>,
    manifest: &Manifest,
    have: &HashSet<Vec<u8>>,
) -> Result<(), String> {
    let mut fetched: HashSet<&[u8]> = HashSet::new();
    for entry in &manifest.entries {
        if entry.kind != pb::EntryKind::File as i32
            || have.contains(&entry.sha256)
            || !fetched.insert(&entry.sha256)
            || transfer.staging.object(&entry.sha256).exists()
        {
            continue;
        }
        fetch_file(client, transfer, entry).await?;
    }
    Ok(())
}

async fn fetch_file(
    client: &mut PeerServiceClient<Channel>,
    transfer: &Transfer<'_>,
    entry: &pb::SyncEntry,
) -> Result<(), String> {
    let Transfer {
        source,
        sync,
        staging,
        limit,
        received,
    } = *transfer;
    let request = pb::ReadFileRequest {
        group: source.group.clone(),
        sync: sync.to_owned(),
        epoch: source.epoch,
        path: entry.path.clone(),
        sha256: entry.sha256.clone(),
    };
    let mut stream = tokio::time::timeout(STALL_LIMIT, client.read_file(request))
        .await
        .map_err(|_| "the primary did not answer".to_owned())?
        .map_err(|s| said(&s))?
        .into_inner();
    let object = staging.object(&entry.sha256);
    let part = object.with_extension("part");
    let shown = if entry.path.is_empty() {
        "the file"
    } else {
        &entry.path
    };
    let result = async {
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| format!("cannot stage {shown}: {e}"))?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        while let Some(chunk) = next(&mut stream).await? {
            size = size.saturating_add(chunk.data.len() as u64);
            if size > entry.size {
                return Err(format!("{shown}: the primary sent more than its {} bytes", entry.size));
            }
            if let Some(limit) = limit {
                limit.take(chunk.data.len()).await;
            }
            context.update(&chunk.data);
            file.write_all(&chunk.data)
                .await
                .map_err(|e| format!("cannot stage {shown}: {e}"))?;
            received.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        if size != entry.size || context.finish().as_ref() != entry.sha256.as_slice() {
            return Err(format!(
                "{shown}: the content received does not match its hash (it changed on the primary, or was corrupted): fetched again"
            ));
        }
        file.sync_all()
            .await
            .map_err(|e| format!("cannot stage {shown}: {e}"))?;
        tokio::fs::rename(&part, &object)
            .await
            .map_err(|e| format!("cannot stage {shown}: {e}"))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    tracing::debug!(file = shown, sha256 = %hex(&entry.sha256), ok = result.is_ok(), "fetched");
    result
}
