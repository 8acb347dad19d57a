//! Who votes in the metadata group, decided the same way on every node from what
//! discovery sees: the first [`VOTERS`] nodes in the StatefulSet's ordinal order vote, every
//! other node is a learner (it gets the log, it does not vote). Pure rules, no I/O: the
//! leader applies [`plan`] to the membership it has and the nodes it sees.
//!
//! - Scale-up: a new node is added as a learner and promoted once caught up, if it is
//!   among the first voters (e.g. the second and third pods of a cluster that was one).
//! - Scale-down: the leaving pods are the highest ordinals; they leave the voters before
//!   they hand their jobs over, and a learner that caught up takes their place.
//! - One node is a one-voter group; two nodes are two voters (allowed, not fault-tolerant:
//!   losing either stops writes).

use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Voters in a cluster of at least this many nodes (fewer nodes: all of them).
pub const VOTERS: usize = 3;

/// A stable name's StatefulSet ordinal (`mp4tomp3-12` → 12), if it has one.
fn ordinal(name: &str) -> Option<u64> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Ordinal order: `x-2` before `x-10`; names without an ordinal after, by name.
fn by_ordinal(a: &String, b: &String) -> Ordering {
    match (ordinal(a), ordinal(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The voters of a cluster whose nodes (this one included) are `names`: the first `count`
/// in ordinal order.
pub fn voters(names: &[String], count: usize) -> BTreeSet<String> {
    let mut sorted: Vec<String> = names.to_vec();
    sorted.sort_by(by_ordinal);
    sorted.dedup();
    sorted.into_iter().take(count.max(1)).collect()
}

/// What the leader changes, one step at a time (openraft applies one change at once).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to add as learners (seen, not yet members).
    pub add_learners: Vec<String>,
    /// The new voter set, when it changes.
    pub set_voters: Option<BTreeSet<String>>,
}

/// The next changes for a group whose voters and learners are `voters` and `learners`,
/// when the nodes that should be in the cluster are `wanted` (discovery, less the pods
/// that are leaving) and `caught_up` are the learners whose log has caught up.
///
/// A voter that is no longer wanted is removed at once; a wanted node among the first
/// [`VOTERS`] becomes a voter only once caught up (until then the old voters stay, so
/// the group never has fewer voters than it can commit with).
pub fn plan(
    voters: &BTreeSet<String>,
    learners: &BTreeSet<String>,
    wanted: &[String],
    caught_up: &BTreeSet<String>,
    count: usize,
) -> Plan {
    let add_learners = wanted
        .iter()
        .filter(|n| !voters.contains(*n) && !learners.contains(*n))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let target = self::voters(wanted, count);
    let mut next: BTreeSet<String> = voters.iter().filter(|v| wanted.contains(v)).cloned().collect();
    for n in &target {
        if !next.contains(n) && caught_up.contains(n) {
            next.insert(n.clone());
        }
    }
    // Voters beyond the target leave once the target's voters are all in.
    if target.iter().all(|t| next.contains(t)) {
        next.retain(|v| target.contains(v));
    }
    let set_voters = (next != *voters && !next.is_empty()).then_some(next);
    Plan {
        add_learners,
        set_voters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        names(list).into_iter().collect()
    }

    #[test]
    fn voters_are_the_first_ordinals_whatever_the_order_seen() {
        let seen = names(&["m-10", "m-2", "m-0", "m-1", "m-3"]);
        assert_eq!(voters(&seen, 3), set(&["m-0", "m-1", "m-2"]));
        assert_eq!(voters(&seen, 5), set(&["m-0", "m-1", "m-2", "m-3", "m-10"]));
        assert_eq!(voters(&names(&["m-0"]), 3), set(&["m-0"]), "one node votes alone");
        assert_eq!(voters(&names(&["m-1", "m-0"]), 3), set(&["m-0", "m-1"]), "two vote");
        // Names without ordinals (static peers) sort by name, after any ordinal.
        assert_eq!(
            voters(&names(&["node-c", "node-a", "node-b", "node-d"]), 3),
            set(&["node-a", "node-b", "node-c"])
        );
    }

    #[test]
    fn scale_up_adds_learners_and_promotes_them_once_caught_up() {
        let one = set(&["m-0"]);
        let wanted = names(&["m-0", "m-1", "m-2", "m-3"]);
        let p = plan(&one, &BTreeSet::new(), &wanted, &BTreeSet::new(), 3);
        assert_eq!(p.add_learners, names(&["m-1", "m-2", "m-3"]));
        assert_eq!(p.set_voters, None, "nobody is promoted before catching up");
        let learners = set(&["m-1", "m-2", "m-3"]);
        let p = plan(&one, &learners, &wanted, &set(&["m-1"]), 3);
        assert_eq!(p.set_voters, Some(set(&["m-0", "m-1"])));
        let p = plan(&set(&["m-0", "m-1"]), &learners, &wanted, &set(&["m-2", "m-3"]), 3);
        assert_eq!(p.set_voters, Some(set(&["m-0", "m-1", "m-2"])), "m-3 stays a learner");
        let p = plan(&set(&["m-0", "m-1", "m-2"]), &learners, &wanted, &learners, 3);
        assert_eq!(p, Plan::default(), "nothing left to do");
    }

    #[test]
    fn leaving_voters_are_removed_at_once_and_replaced_when_a_learner_caught_up() {
        let three = set(&["m-0", "m-1", "m-2"]);
        // Scale 5 -> 2: m-2, m-3, m-4 leave.
        let p = plan(
            &three,
            &set(&["m-3", "m-4"]),
            &names(&["m-0", "m-1"]),
            &set(&["m-3", "m-4"]),
            3,
        );
        assert_eq!(p.set_voters, Some(set(&["m-0", "m-1"])));
        // m-1 is lost for good (its pod replaced by a new empty m-1 that is catching up):
        // m-1 goes from the voters only when it is no longer wanted; a wanted m-3 that
        // caught up does not displace a wanted voter.
        let p = plan(
            &three,
            &set(&["m-3"]),
            &names(&["m-0", "m-1", "m-2", "m-3"]),
            &set(&["m-3"]),
            3,
        );
        assert_eq!(p.set_voters, None);
        // A voter beyond the first three (after a scale-down and up) gives way once the
        // first three are in.
        let p = plan(
            &set(&["m-0", "m-1", "m-3"]),
            &set(&["m-2"]),
            &names(&["m-0", "m-1", "m-2", "m-3"]),
            &set(&["m-2"]),
            3,
        );
        assert_eq!(p.set_voters, Some(set(&["m-0", "m-1", "m-2"])));
    }
}
