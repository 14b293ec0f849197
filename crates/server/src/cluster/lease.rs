//! Node leases: how the cluster learns that a node died, and releases its members.
//!
//! Each node keeps a key `lease:NODE` alive by renewing its TTL (the lease) a few times
//! per lease. A node that stops (killed, frozen, cut off from Redis) lets it expire;
//! the others see a node in `nodes` without a lease and reap it: one of them takes the
//! lock `reap:NODE` (`SET NX`, with a TTL, extended while it works), and departs each of
//! the dead node's sessions with the same script a live node uses, conditional on the
//! session still being held by the dead node. So every member of a dead node leaves
//! exactly once, announced by exactly one node, even if the reaper itself dies halfway
//! (its lock expires and another continues where it stopped).
//!
//! A node whose lease expired while it was alive learns it at its next renewal
//! ([`ClusterError::LeaseLost`]): an expired key cannot be renewed, so the dead id never
//! comes back, and the node connects again under a new one.

use bytes::Bytes;
use redis::Value;

use super::entry::MAX_NODE_ID_LEN;
use super::error::ClusterError;
use super::node::NodeId;
use super::reply::{self, malformed};
use super::room::{Cluster, Departed, lease_ms};
use super::scripts;
use crate::history::SessionId;

/// Most nodes a cluster may list.
pub const MAX_NODES: usize = 4096;

/// Sessions departed per batch while reaping.
const REAP_BATCH: usize = 100;

/// What reaping a dead node did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The dead node.
    pub node: NodeId,
    /// Its members that left, as (session, nick, sequence number of the departure).
    pub departed: Vec<(SessionId, String, u64)>,
    /// The node is gone from the node set (it holds nothing any more).
    pub forgotten: bool,
}

impl Cluster {
    /// Renews this node's lease; [`ClusterError::LeaseLost`] if it had expired.
    pub async fn renew(&self) -> Result<(), ClusterError> {
        let renewed: i64 = self
            .link()
            .query(
                redis::cmd("PEXPIRE")
                    .arg(self.keys().lease(self.node().as_str()))
                    .arg(lease_ms(self)),
            )
            .await?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(ClusterError::LeaseLost)
        }
    }

    /// The other nodes whose lease has expired.
    pub async fn dead_nodes(&self) -> Result<Vec<NodeId>, ClusterError> {
        let keys = self.keys();
        let value: Value = self
            .link()
            .query(redis::cmd("SMEMBERS").arg(keys.nodes()))
            .await?;
        let listed = reply::items(&value)
            .filter(|nodes| nodes.len() <= MAX_NODES)
            .ok_or_else(|| malformed("a short list of nodes", &value))?;
        let mut nodes = Vec::with_capacity(listed.len());
        for node in listed {
            let id = reply::bytes(node)
                .filter(|id| id.len() <= MAX_NODE_ID_LEN)
                .and_then(|id| std::str::from_utf8(id).ok())
                .ok_or_else(|| malformed("a node id", node))?;
            if id != self.node().as_str() {
                nodes.push(NodeId::from_stored(id.to_string()));
            }
        }
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("EXISTS").arg(keys.lease(node.as_str()));
        }
        let answer = self.link().pipe(&pipe).await?;
        let alive = reply::items(&answer)
            .filter(|a| a.len() == nodes.len())
            .ok_or_else(|| malformed("one answer per node", &answer))?;
        let mut dead = Vec::new();
        for (node, alive) in nodes.into_iter().zip(alive) {
            if reply::number(alive).ok_or_else(|| malformed("0 or 1", alive))? == 0 {
                dead.push(node);
            }
        }
        Ok(dead)
    }

    /// Releases the members of `dead`, a node whose lease expired, announcing each
    /// departure with `payload(nick)`; `None` if another node holds the lock (it is
    /// doing it). Call it again after an error: it continues where it stopped.
    pub async fn reap(
        &self,
        dead: &NodeId,
        payload: impl Fn(&str) -> Bytes,
    ) -> Result<Option<Reaped>, ClusterError> {
        let keys = self.keys();
        if dead == self.node() {
            return Ok(None);
        }
        let lock = keys.reap(dead.as_str());
        let me = self.node().as_str();
        let ms = lease_ms(self);
        let taken: Value = self
            .link()
            .query(
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        if taken == Value::Nil {
            return Ok(None);
        }
        let alive: i64 = self
            .link()
            .query(redis::cmd("EXISTS").arg(keys.lease(dead.as_str())))
            .await?;
        let mut reaped = Reaped {
            node: dead.clone(),
            departed: Vec::new(),
            forgotten: false,
        };
        if alive == 0 {
            // Each departure takes its session out of the set, so this ends; the bound
            // is for a set that something else keeps filling.
            for _ in 0..(super::room::MAX_MEMBERS / REAP_BATCH) {
                let batch: Vec<u64> = self
                    .link()
                    .query(
                        redis::cmd("SRANDMEMBER")
                            .arg(keys.held(dead.as_str()))
                            .arg(REAP_BATCH),
                    )
                    .await?;
                if batch.is_empty() {
                    break;
                }
                for session in batch {
                    if let Departed::Left { seq, nick } = self
                        .depart_from(session, dead, true, |nick| payload(nick))
                        .await?
                    {
                        tracing::debug!(node = %dead, session, %seq, "released a dead node's member");
                        reaped.departed.push((session, nick, seq));
                    }
                }
                let mut extend = scripts::EXTEND_LOCK_SCRIPT.prepare_invoke();
                extend.key(&lock).arg(me).arg(ms);
                self.link().script(&extend).await?;
            }
        }
        reaped.forgotten = self.forget_node(dead).await?;
        Ok(Some(reaped))
    }

    /// Takes `node` off the node set if it has no lease and holds nothing; frees this
    /// node's reap lock on it.
    async fn forget_node(&self, node: &NodeId) -> Result<bool, ClusterError> {
        let keys = self.keys();
        let mut invocation = scripts::FORGET_NODE_SCRIPT.prepare_invoke();
        invocation
            .key(keys.lease(node.as_str()))
            .key(keys.held(node.as_str()))
            .key(keys.nodes())
            .key(keys.reap(node.as_str()))
            .arg(node.as_str())
            .arg(self.node().as_str());
        let value = self.link().script(&invocation).await?;
        Ok(reply::number(&value) == Some(1))
    }

    /// Leaves the cluster (a clean shutdown, after departing this node's members): drops
    /// the lease, and the node from the set if it holds nothing; any member left is
    /// released by the others as for a dead node.
    pub async fn leave_cluster(&self) -> Result<(), ClusterError> {
        let _: i64 = self
            .link()
            .query(redis::cmd("DEL").arg(self.keys().lease(self.node().as_str())))
            .await?;
        self.forget_node(self.node()).await?;
        Ok(())
    }
}
