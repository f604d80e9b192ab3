//! Helpers shared by the end-to-end tests, which run against the cluster named by `KUBECONFIG`.

pub mod webhook;
