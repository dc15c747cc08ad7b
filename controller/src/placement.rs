//! Where new partition replicas go.

use sluice_metadata::controller_api::ControllerError;

/// Assigns `rf` distinct brokers to each of `count` partitions numbered from
/// `first_partition`, rotating the starting broker so leaders (the first
/// replica) spread evenly and each partition's followers are the next brokers
/// in id order.
pub fn assign_replicas(
    brokers: &[i32],
    count: i32,
    rf: i16,
    first_partition: i32,
) -> Result<Vec<Vec<i32>>, ControllerError> {
    let rf = rf as usize;
    if brokers.is_empty() {
        return Err(ControllerError::BrokerNotAvailable(
            "There are no registered, unfenced brokers to place replicas on.".into(),
        ));
    }
    if rf > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
            brokers.len()
        )));
    }
    let n = brokers.len();
    Ok((0..count)
        .map(|i| {
            let start = (first_partition + i) as usize % n;
            (0..rf).map(|r| brokers[(start + r) % n]).collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_leaders_and_keeps_replicas_distinct() {
        let plan = assign_replicas(&[1, 2, 3], 6, 3, 0).unwrap();
        let leaders: Vec<i32> = plan.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
        for replicas in &plan {
            let mut sorted = replicas.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
        }
        assert_eq!(assign_replicas(&[1, 2, 3], 1, 1, 4).unwrap(), vec![vec![2]]);
    }

    #[test]
    fn refuses_impossible_replication() {
        assert!(matches!(
            assign_replicas(&[1], 1, 3, 0),
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            assign_replicas(&[], 1, 1, 0),
            Err(ControllerError::BrokerNotAvailable(_))
        ));
    }
}
