//! Turns committed metadata log entries into images, in log order, and hands
//! each `(delta, image)` to the publishers that react to it.
//!
//! Nothing is published while the loader is still catching up: a node that
//! restarts replays history (a topic created, deleted and created again under
//! the same name), and acting on each historical record would destroy the
//! data of what exists now. Publishers first see one delta from nothing to
//! the caught-up image, then each entry as it commits.

use std::sync::Arc;

use crate::delta::{MetadataDelta, ReplayError};
use crate::image::MetadataImage;
use crate::records::{decode_batch, MetadataRecord, RecordDecodeError};

/// Reacts to each new image; called in log order, never concurrently.
pub trait Publisher: Send + Sync {
    fn publish(&self, delta: &MetadataDelta, image: &Arc<MetadataImage>);
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("metadata entry {offset}: {source}")]
    Decode {
        offset: u64,
        source: RecordDecodeError,
    },
    #[error("metadata entry {offset}: {source}")]
    Replay { offset: u64, source: ReplayError },
}

/// Where publishers run: on the loader's own thread, or on a thread of
/// their own, so that their disk work (opening logs, recording leader
/// epochs) never holds up the loader, the controller's apply loop behind it,
/// or an async runtime's workers.
enum Publishing {
    Inline(Vec<Arc<dyn Publisher>>),
    Thread(std::sync::mpsc::Sender<(MetadataDelta, Arc<MetadataImage>)>),
}

impl Publishing {
    fn publish(&self, delta: MetadataDelta, image: &Arc<MetadataImage>) {
        match self {
            Publishing::Inline(publishers) => {
                for publisher in publishers {
                    publisher.publish(&delta, image);
                }
            }
            Publishing::Thread(queue) => {
                // The thread only stops when this sender is dropped.
                let _ = queue.send((delta, image.clone()));
            }
        }
    }
}

pub struct MetadataLoader {
    image: Arc<MetadataImage>,
    publishing: Publishing,
    /// The first committed offset the loader learned of: publishing starts
    /// once the image has reached it. `None` until it is known.
    catch_up_target: Option<u64>,
    caught_up: bool,
}

impl MetadataLoader {
    /// A loader that calls its publishers itself, before `load_*` returns.
    pub fn new(publishers: Vec<Arc<dyn Publisher>>) -> Self {
        Self::with(Publishing::Inline(publishers))
    }

    /// A loader whose publishers run, in order, on a thread of their own.
    pub fn with_publisher_thread(publishers: Vec<Arc<dyn Publisher>>) -> std::io::Result<Self> {
        let (queue, published) = std::sync::mpsc::channel::<(MetadataDelta, Arc<MetadataImage>)>();
        std::thread::Builder::new()
            .name("metadata-publisher".into())
            .spawn(move || {
                for (delta, image) in published {
                    for publisher in &publishers {
                        publisher.publish(&delta, &image);
                    }
                }
            })?;
        Ok(Self::with(Publishing::Thread(queue)))
    }

    fn with(publishing: Publishing) -> Self {
        Self {
            image: MetadataImage::empty(),
            publishing,
            catch_up_target: None,
            caught_up: false,
        }
    }

    pub fn image(&self) -> &Arc<MetadataImage> {
        &self.image
    }

    /// Whether publishers have been given the image (the loader caught up
    /// with the first committed offset it learned of).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    /// Tells the loader the log is committed up to `offset` (the leader's
    /// high watermark minus one, or the quorum's commit index). Only the
    /// first call sets the target; once the image reaches it, publishers
    /// get the whole image as one delta.
    pub fn set_committed_offset(&mut self, offset: u64) {
        if self.catch_up_target.is_none() {
            self.catch_up_target = Some(offset);
        }
        self.maybe_finish_catch_up();
    }

    /// Applies one committed entry. A batch that fails to decode or replay is
    /// discarded whole and the image stays where it was.
    pub fn load_entry(&mut self, offset: u64, data: &[u8]) -> Result<(), LoadError> {
        let mut delta = MetadataDelta::new(self.image.clone());
        self.replay_into(&mut delta, offset, data)?;
        self.publish(delta, offset);
        Ok(())
    }

    /// Applies records that did not come from a log (ZooKeeper mode: a
    /// controller's push, or a write this broker made to ZooKeeper itself)
    /// as the change at `offset`. Records that fail to replay are discarded
    /// whole.
    pub fn load_records(
        &mut self,
        offset: u64,
        records: &[MetadataRecord],
    ) -> Result<(), ReplayError> {
        let mut delta = MetadataDelta::new(self.image.clone());
        delta.replay_all(records)?;
        self.publish(delta, offset);
        Ok(())
    }

    /// Replaces the whole image by a snapshot taken at `offset`.
    pub fn load_snapshot(&mut self, offset: u64, data: &[u8]) -> Result<(), LoadError> {
        let mut delta = MetadataDelta::for_snapshot(self.image.clone());
        self.replay_into(&mut delta, offset, data)?;
        self.publish(delta, offset);
        Ok(())
    }

    /// Records the offset of an entry that carries no metadata (a Raft no-op).
    pub fn skip_entry(&mut self, offset: u64) {
        if offset > self.image.offset {
            let mut image = (*self.image).clone();
            image.offset = offset;
            self.image = Arc::new(image);
            self.maybe_finish_catch_up();
        }
    }

    fn replay_into(
        &self,
        delta: &mut MetadataDelta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), LoadError> {
        let records = decode_batch(data).map_err(|source| LoadError::Decode { offset, source })?;
        delta
            .replay_all(&records)
            .map_err(|source| LoadError::Replay { offset, source })
    }

    fn publish(&mut self, delta: MetadataDelta, offset: u64) {
        let image = delta.apply(offset);
        if self.caught_up {
            self.publishing.publish(delta, &image);
        }
        self.image = image;
        self.maybe_finish_catch_up();
    }

    /// Once the image reaches the catch-up target, publishes it whole: a
    /// delta from the empty image, so publishers see only what exists now.
    fn maybe_finish_catch_up(&mut self) {
        let reached = self
            .catch_up_target
            .is_some_and(|target| self.image.offset >= target);
        if self.caught_up || !reached {
            return;
        }
        self.caught_up = true;
        // The delta is only what publishers read the changes from; the image
        // it leads to is the one already built.
        let mut delta = MetadataDelta::new(MetadataImage::empty());
        if let Err(e) = delta.replay_all(&self.image.to_records()) {
            // The image was built by replaying records; its own records
            // always replay. Publish nothing rather than half an image.
            tracing::error!(error = %e, "the caught-up metadata image does not replay; not published");
            return;
        }
        self.publishing.publish(delta, &self.image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tests::topic;
    use crate::records::*;
    use std::sync::Mutex;
    use uuid::Uuid;

    #[derive(Default)]
    struct Seen(Mutex<Vec<u64>>);
    impl Publisher for Seen {
        fn publish(&self, _delta: &MetadataDelta, image: &Arc<MetadataImage>) {
            self.0.lock().unwrap().push(image.offset);
        }
    }

    #[test]
    fn bad_batches_are_discarded_whole() {
        let seen = Arc::new(Seen::default());
        let mut loader = MetadataLoader::new(vec![seen.clone()]);
        loader.set_committed_offset(0);
        let id = Uuid::new_v4();
        let topic = MetadataRecord::Topic(TopicRecord {
            name: "t".into(),
            topic_id: id,
        });
        loader.load_entry(1, &encode_batch(&[topic])).unwrap();

        // The second record of this batch is bad, so the first must not show.
        let bad = [
            MetadataRecord::Topic(TopicRecord {
                name: "u".into(),
                topic_id: Uuid::new_v4(),
            }),
            MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: Uuid::new_v4(),
            }),
        ];
        assert!(loader.load_entry(2, &encode_batch(&bad)).is_err());
        assert!(loader.load_entry(3, b"not json").is_err());
        assert!(loader.image().topic("u").is_none());
        assert_eq!(loader.image().offset, 1);
        assert_eq!(*seen.0.lock().unwrap(), vec![0, 1]);

        let snapshot = encode_batch(&loader.image().to_records());
        let mut fresh = MetadataLoader::new(vec![]);
        fresh.load_snapshot(1, &snapshot).unwrap();
        assert!(fresh.image().topic("t").is_some());
    }

    /// Remembers every local change publishers were told about.
    #[derive(Default)]
    struct Changes(Mutex<Vec<(u64, crate::LocalChanges)>>);
    impl Publisher for Changes {
        fn publish(&self, delta: &MetadataDelta, image: &Arc<MetadataImage>) {
            self.0
                .lock()
                .unwrap()
                .push((image.offset, delta.local_changes(1)));
        }
    }

    #[test]
    fn history_replayed_on_restart_is_published_as_the_caught_up_image_only() {
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        let changes = Arc::new(Changes::default());
        let mut loader = MetadataLoader::new(vec![changes.clone()]);
        loader.set_committed_offset(3);
        loader
            .load_entry(1, &encode_batch(&topic("t", old, 1, vec![1])))
            .unwrap();
        let remove = MetadataRecord::RemoveTopic(RemoveTopicRecord { topic_id: old });
        loader.load_entry(2, &encode_batch(&[remove])).unwrap();
        assert!(!loader.is_caught_up());
        assert!(
            changes.0.lock().unwrap().is_empty(),
            "history was published"
        );
        loader
            .load_entry(3, &encode_batch(&topic("t", new, 1, vec![1])))
            .unwrap();
        assert!(loader.is_caught_up());

        // One delta: the new topic's partition, and no removal of `t-0`.
        let seen = changes.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, 3);
        assert_eq!(seen[0].1.updated, vec![(new, 0)]);
        assert!(seen[0].1.removed.is_empty());

        // From then on, every entry is published as it comes.
        let remove = MetadataRecord::RemoveTopic(RemoveTopicRecord { topic_id: new });
        loader.load_entry(4, &encode_batch(&[remove])).unwrap();
        let seen = changes.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].1.removed, vec![("t".to_string(), new, 0)]);
    }

    #[test]
    fn an_empty_log_is_caught_up_at_once_and_noops_count() {
        let changes = Arc::new(Changes::default());
        let mut loader = MetadataLoader::new(vec![changes.clone()]);
        loader.set_committed_offset(0);
        assert!(loader.is_caught_up());
        assert_eq!(changes.0.lock().unwrap().len(), 1);

        let mut loader = MetadataLoader::new(vec![]);
        loader.set_committed_offset(2);
        loader.skip_entry(1);
        assert!(!loader.is_caught_up());
        loader.skip_entry(2);
        assert!(loader.is_caught_up());
    }
}
