//! Turns committed metadata log entries into images, in log order, and hands
//! each `(delta, image)` to the publishers that react to it.

use std::sync::Arc;

use crate::delta::{MetadataDelta, ReplayError};
use crate::image::MetadataImage;
use crate::records::{decode_batch, RecordDecodeError};

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

pub struct MetadataLoader {
    image: Arc<MetadataImage>,
    publishers: Vec<Arc<dyn Publisher>>,
}

impl MetadataLoader {
    pub fn new(publishers: Vec<Arc<dyn Publisher>>) -> Self {
        Self {
            image: MetadataImage::empty(),
            publishers,
        }
    }

    pub fn image(&self) -> &Arc<MetadataImage> {
        &self.image
    }

    /// Applies one committed entry. A batch that fails to decode or replay is
    /// discarded whole and the image stays where it was.
    pub fn load_entry(&mut self, offset: u64, data: &[u8]) -> Result<(), LoadError> {
        let mut delta = MetadataDelta::new(self.image.clone());
        self.replay_into(&mut delta, offset, data)?;
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
        for publisher in &self.publishers {
            publisher.publish(&delta, &image);
        }
        self.image = image;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(*seen.0.lock().unwrap(), vec![1]);

        let snapshot = encode_batch(&loader.image().to_records());
        let mut fresh = MetadataLoader::new(vec![]);
        fresh.load_snapshot(1, &snapshot).unwrap();
        assert!(fresh.image().topic("t").is_some());
    }
}
