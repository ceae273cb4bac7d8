//! Placeholder until the wire codec lands: the envelope the node host exchanges with peers.

use flotilla_raft::Message;

/// Identifies a Raft group within a node host.
pub type GroupId = u64;

/// One Raft message for one group.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The group.
    pub group: GroupId,
    /// The message.
    pub msg: Message,
}
