//! Incremental fetch sessions (KIP-227) on the leader, for followers.
//!
//! A follower fetching thousands of partitions from one leader would
//! otherwise send every partition in every request, and the leader would
//! lock, read and answer every one of them each round, most of them idle.
//! In a session the leader keeps the follower's partitions and where it
//! stands in each: a request carries only what changed (new fetch offsets,
//! partitions added or forgotten) and the answer only what the follower has
//! not seen (records, errors, a new high watermark or log start). A
//! partition whose follower had caught up, sits in the ISR and has not
//! changed since (its [`Partition::version`]) is skipped without a lock;
//! every quarter of `replica.lag.time.max.ms` a round reads them all, so
//! the follower's position in each is recorded as recent for the ISR check.
//!
//! Sessions are offered to followers only (consumers get session id 0,
//! which tells a client to keep sending full requests), and only at the
//! Fetch versions that name topics (up to 12): that is what Sluice's own
//! followers send.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use sluice_metadata::Uuid;

use crate::replica::Partition;

/// The last Fetch version whose requests name topics rather than give ids.
const TOPIC_NAMES_UNTIL: i16 = 12;
/// The first Fetch version with sessions.
const SESSIONS_FROM: i16 = 7;
/// A request's `session_epoch` asking for a new session, or for none.
const NEW_SESSION: i32 = 0;
const NO_SESSION: i32 = -1;

/// One follower's partition in a session.
pub struct SessionPartition {
    pub topic_id: Uuid,
    pub fetch_offset: i64,
    pub current_leader_epoch: i32,
    pub max_bytes: i32,
    /// The replica, once looked up, so a skipped round needs no lookup.
    pub replica: Option<Arc<Partition>>,
    /// What the last answer told the follower (-1: nothing yet).
    pub sent_high_watermark: i64,
    pub sent_log_start: i64,
    /// The partition's version when it was last answered for with the
    /// follower caught up, in the ISR and owed nothing: while the version
    /// stays, there is nothing to do for it.
    pub quiet_at: Option<u64>,
}

impl SessionPartition {
    /// Whether this round may skip the partition.
    pub fn is_quiet(&self) -> bool {
        match (self.quiet_at, &self.replica) {
            (Some(at), Some(replica)) => replica.version() == at,
            _ => false,
        }
    }
}

pub struct FetchSession {
    pub id: i32,
    replica_id: i32,
    next_epoch: i32,
    /// When a round last read every partition rather than skipping the
    /// quiet ones.
    pub refreshed_at_ms: i64,
    /// By topic name then index, so answers group a topic's partitions.
    pub partitions: BTreeMap<(String, i32), SessionPartition>,
}

/// How a follower's Fetch request stands with the sessions.
pub enum Begin {
    /// No session: answer every partition of the request, session id 0.
    Sessionless,
    /// Answer within this session; `full` when it was just created (every
    /// partition goes in the answer).
    Session { session: FetchSession, full: bool },
    /// A top-level error: the follower starts a new session.
    Refused(ResponseError),
}

/// The leader's sessions, one per follower at most.
#[derive(Default)]
pub struct FetchSessions {
    next_id: AtomicI32,
    /// A session is taken out while a request uses it and put back after
    /// (a second request on it meanwhile is refused as unknown).
    sessions: Mutex<HashMap<i32, FetchSession>>,
}

impl FetchSessions {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<i32, FetchSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_id(&self) -> i32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if id > 0 {
                return id;
            }
            // Wrapped past i32::MAX: ids start again from 1.
            self.next_id.store(0, Ordering::Relaxed);
        }
    }

    /// Checks a follower's request against its session and applies what it
    /// changes (fetch offsets, partitions added and forgotten).
    pub fn begin(&self, request: &FetchRequest, version: i16, replica_id: i32) -> Begin {
        if replica_id < 0 || !(SESSIONS_FROM..=TOPIC_NAMES_UNTIL).contains(&version) {
            return Begin::Sessionless;
        }
        let (id, epoch) = (request.session_id, request.session_epoch);
        let mut sessions = self.sessions();
        match epoch {
            NO_SESSION => {
                sessions.remove(&id);
                Begin::Sessionless
            }
            NEW_SESSION => {
                sessions.remove(&id);
                // A follower fetches from a leader over one connection: an
                // older session of the same follower is abandoned.
                sessions.retain(|_, s| s.replica_id != replica_id);
                let mut session = FetchSession {
                    id: self.new_id(),
                    replica_id,
                    next_epoch: 1,
                    refreshed_at_ms: 0,
                    partitions: BTreeMap::new(),
                };
                update(&mut session, request);
                Begin::Session {
                    session,
                    full: true,
                }
            }
            _ => {
                let Some(mut session) = sessions.remove(&id) else {
                    return Begin::Refused(ResponseError::FetchSessionIdNotFound);
                };
                if session.replica_id != replica_id || epoch != session.next_epoch {
                    let error = if session.replica_id != replica_id {
                        ResponseError::FetchSessionIdNotFound
                    } else {
                        ResponseError::InvalidFetchSessionEpoch
                    };
                    sessions.insert(id, session);
                    return Begin::Refused(error);
                }
                session.next_epoch = next_epoch(session.next_epoch);
                update(&mut session, request);
                Begin::Session {
                    session,
                    full: false,
                }
            }
        }
    }

    /// Puts a session back once its request is answered.
    pub fn finish(&self, session: FetchSession) {
        self.sessions().insert(session.id, session);
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.sessions().len()
    }
}

/// After i32::MAX, epochs go on from 1 (0 asks for a new session).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

/// The partitions a request forgets, then those it adds or moves (a
/// partition forgotten and added in one request, as when its topic was
/// deleted and made again, stays).
fn update(session: &mut FetchSession, request: &FetchRequest) {
    for forgotten in &request.forgotten_topics_data {
        let name = forgotten.topic.0.as_str();
        for index in &forgotten.partitions {
            session.partitions.remove(&(name.to_string(), *index));
        }
    }
    for topic in &request.topics {
        let name = topic.topic.0.as_str();
        for p in &topic.partitions {
            let key = (name.to_string(), p.partition);
            let entry = session
                .partitions
                .entry(key)
                .or_insert_with(|| SessionPartition {
                    topic_id: topic.topic_id,
                    fetch_offset: -1,
                    current_leader_epoch: -1,
                    max_bytes: 0,
                    replica: None,
                    sent_high_watermark: -1,
                    sent_log_start: -1,
                    quiet_at: None,
                });
            entry.topic_id = topic.topic_id;
            entry.fetch_offset = p.fetch_offset;
            entry.current_leader_epoch = p.current_leader_epoch;
            entry.max_bytes = p.partition_max_bytes;
            // The follower says something moved: look at it this round.
            entry.quiet_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn request(id: i32, epoch: i32, partitions: &[(&str, i32, i64)]) -> FetchRequest {
        let topics = partitions
            .iter()
            .map(|&(topic, partition, offset)| {
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1024)])
            })
            .collect();
        FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    fn session(begin: Begin) -> (FetchSession, bool) {
        match begin {
            Begin::Session { session, full } => (session, full),
            Begin::Sessionless => panic!("sessionless"),
            Begin::Refused(e) => panic!("refused: {e:?}"),
        }
    }

    fn refused(begin: Begin) -> ResponseError {
        match begin {
            Begin::Refused(e) => e,
            _ => panic!("not refused"),
        }
    }

    #[test]
    fn consumers_and_topic_id_versions_get_no_session() {
        let sessions = FetchSessions::default();
        let asking = request(0, 0, &[("t", 0, 0)]);
        assert!(matches!(
            sessions.begin(&asking, 12, -1),
            Begin::Sessionless
        ));
        assert!(matches!(sessions.begin(&asking, 13, 2), Begin::Sessionless));
        assert!(matches!(sessions.begin(&asking, 6, 2), Begin::Sessionless));
        assert_eq!(sessions.count(), 0);
    }

    #[test]
    fn a_session_follows_offsets_additions_and_forgotten_partitions() {
        let sessions = FetchSessions::default();
        let (first, full) = session(sessions.begin(
            &request(0, 0, &[("a", 0, 5), ("a", 1, 7), ("b", 0, 0)]),
            12,
            2,
        ));
        assert!(full);
        assert_eq!(first.partitions.len(), 3);
        let id = first.id;
        assert!(id > 0);
        sessions.finish(first);

        let mut next = request(id, 1, &[("a", 1, 9), ("c", 0, 3)]);
        next.forgotten_topics_data = vec![ForgottenTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("b")))
            .with_partitions(vec![0])];
        let (second, full) = session(sessions.begin(&next, 12, 2));
        assert!(!full);
        let offsets: Vec<((String, i32), i64)> = second
            .partitions
            .iter()
            .map(|(k, p)| (k.clone(), p.fetch_offset))
            .collect();
        assert_eq!(
            offsets,
            vec![
                (("a".into(), 0), 5),
                (("a".into(), 1), 9),
                (("c".into(), 0), 3)
            ]
        );
        sessions.finish(second);
        // The epoch moved on: the same epoch again is refused, and so is
        // the session from another follower.
        assert_eq!(
            refused(sessions.begin(&request(id, 1, &[]), 12, 2)),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert_eq!(
            refused(sessions.begin(&request(id, 2, &[]), 12, 3)),
            ResponseError::FetchSessionIdNotFound
        );
        let (third, _) = session(sessions.begin(&request(id, 2, &[]), 12, 2));
        sessions.finish(third);
    }

    #[test]
    fn unknown_and_closed_sessions_are_refused_and_a_new_one_replaces_the_old() {
        let sessions = FetchSessions::default();
        assert_eq!(
            refused(sessions.begin(&request(42, 1, &[]), 12, 2)),
            ResponseError::FetchSessionIdNotFound
        );
        let (old, _) = session(sessions.begin(&request(0, 0, &[("a", 0, 0)]), 12, 2));
        let old_id = old.id;
        sessions.finish(old);
        // The same follower starting over (after a reconnect) drops the old one.
        let (new, _) = session(sessions.begin(&request(0, 0, &[("a", 0, 0)]), 12, 2));
        assert_ne!(new.id, old_id);
        sessions.finish(new);
        assert_eq!(sessions.count(), 1);
        assert_eq!(
            refused(sessions.begin(&request(old_id, 1, &[]), 12, 2)),
            ResponseError::FetchSessionIdNotFound
        );
        // Epoch -1 closes a session and fetches without one.
        let id = *sessions.sessions().keys().next().unwrap();
        assert!(matches!(
            sessions.begin(&request(id, -1, &[("a", 0, 0)]), 12, 2),
            Begin::Sessionless
        ));
        assert_eq!(sessions.count(), 0);
    }

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(1), 2);
    }
}
