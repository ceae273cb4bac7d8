//! A 3-node KV cluster in one process for tests: real TCP on 127.0.0.1 between the nodes
//! (peer transport) and from clients (gRPC), each node with its own WAL in a temp dir.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::*;
use flotilla_kv::proto::etcdserverpb as pb;
use flotilla_kv::proto::etcdserverpb::kv_client::KvClient;
use flotilla_kv::server::{KvServer, KvServerConfig, MemberInfo};
use tonic::transport::Channel;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Node {
    pub host: Arc<NodeHost>,
    pub transport: Transport,
    pub server: Arc<KvServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub struct Cluster {
    pub peer_addrs: BTreeMap<NodeId, SocketAddr>,
    pub client_addrs: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    pub nodes: BTreeMap<NodeId, Node>,
    kv_cfg: KvServerConfig,
}

impl Cluster {
    pub async fn new(n: u64) -> Cluster {
        Cluster::with(n, |_| {}).await
    }

    pub async fn with(n: u64, tweak: impl Fn(&mut KvServerConfig)) -> Cluster {
        let mut peer_listeners = BTreeMap::new();
        let mut client_listeners = BTreeMap::new();
        let mut c = Cluster {
            peer_addrs: BTreeMap::new(),
            client_addrs: BTreeMap::new(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            kv_cfg: KvServerConfig::default(),
        };
        for id in 1..=n {
            let p = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            c.peer_addrs.insert(id, p.local_addr().unwrap());
            c.client_addrs.insert(id, l.local_addr().unwrap());
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            peer_listeners.insert(id, p);
            client_listeners.insert(id, l);
        }
        c.kv_cfg = KvServerConfig {
            cluster_id: 7,
            members: (1..=n)
                .map(|id| MemberInfo {
                    id,
                    name: format!("node{id}"),
                    peer_urls: vec![format!("http://{}", c.peer_addrs[&id])],
                    client_urls: vec![format!("http://{}", c.client_addrs[&id])],
                })
                .collect(),
            lease_check_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(10),
            ..KvServerConfig::default()
        };
        tweak(&mut c.kv_cfg);
        for id in 1..=n {
            let p = peer_listeners.remove(&id).unwrap();
            let l = client_listeners.remove(&id).unwrap();
            c.start_with(id, p, l).await;
        }
        c
    }

    pub async fn start_with(
        &mut self,
        id: NodeId,
        peer: tokio::net::TcpListener,
        client: tokio::net::TcpListener,
    ) {
        let (transport, inbound) = Transport::start(TransportConfig::new(id, 7), peer).unwrap();
        for (&p, &addr) in &self.peer_addrs {
            if p != id {
                transport.set_peer(p, addr);
            }
        }
        let backend =
            Arc::new(WalBackend::open(self.dirs[&id].path(), Default::default()).unwrap());
        let cfg = NodeHostConfig {
            tick_interval: Duration::from_millis(20),
            ..NodeHostConfig::new(id)
        };
        let host = Arc::new(NodeHost::start(cfg, backend, Arc::new(transport.clone())).unwrap());
        tokio::spawn(pump_inbound(host.inbound_sink(), inbound));
        let server = KvServer::start(host.clone(), self.kv_cfg.clone())
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.clone().serve(client, async move {
            let _ = stopped.await;
        }));
        self.nodes.insert(
            id,
            Node {
                host,
                transport,
                server,
                stop: Some(stop),
            },
        );
    }

    /// Crash-stops a node: no graceful shutdown; its WAL keeps what was synced.
    pub async fn kill(&mut self, id: NodeId) {
        let mut node = self.nodes.remove(&id).unwrap();
        node.server.shutdown();
        let _ = node.stop.take().unwrap().send(());
        node.host.shutdown();
        node.transport.shutdown().await;
    }

    pub async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for (&id, n) in &self.nodes {
                if n.host.leader(1) == Some(id) {
                    return id;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn follower(&self) -> NodeId {
        let leader = self.leader().await;
        *self.nodes.keys().find(|&&id| id != leader).unwrap()
    }

    pub fn channel(&self, id: NodeId) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.client_addrs[&id]))
            .unwrap()
            .connect_lazy()
    }

    /// `127.0.0.1:port` of each live node's client (etcd gRPC) listener.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .keys()
            .map(|id| self.client_addrs[id].to_string())
            .collect()
    }

    pub fn kv(&self, id: NodeId) -> KvClient<Channel> {
        KvClient::new(self.channel(id))
    }
}

pub fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn get(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

pub async fn value_at(
    kv: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
) -> Option<Vec<u8>> {
    let r = kv
        .range(pb::RangeRequest {
            serializable,
            ..get(key)
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs.first().map(|kv| kv.value.clone())
}
