//! The etcd v3 API's protobuf types and tonic services (generated at build time from
//! `proto/`, whose package names and field numbers are etcd's), plus Flotilla's internal
//! forwarding service.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's `mvccpb`: key-values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb`: KV, Watch, Lease, Cluster, Maintenance.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's `v3lockpb`: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// Flotilla's node-to-node write forwarding.
pub mod forward {
    tonic::include_proto!("flotilla.forward");
}
