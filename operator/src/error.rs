//! Errors of a reconcile; each says what failed, and has a short reason for the failure metric.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Kubernetes API call failed ({action}): {source}; the reconcile is retried with backoff"
    )]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the pod cache did not sync within {0:?}: check that the operator may list and watch pods"
    )]
    PodCacheNotReady(Duration),
    #[error("the ModelService has no namespace")]
    MissingNamespace,
    #[error("serialising the mesh config failed: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Short label for `infermesh_operator_reconcile_failures_total{reason=...}`.
    pub fn reason(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube {
                source: kube::Error::Api(s),
                ..
            } if s.code == 409 => "conflict",
            Error::Kube { .. } => "kube_api",
            Error::PodCacheNotReady(_) => "pod_cache",
            Error::MissingNamespace => "missing_namespace",
            Error::Serialize(_) => "serialize",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.reason(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "finalizer_patch",
                F::UnnamedObject | F::InvalidFinalizer => "finalizer",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizer_errors_report_the_inner_reason() {
        let inner = Error::PodCacheNotReady(Duration::from_secs(1));
        let e = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            inner,
        )));
        assert_eq!(e.reason(), "pod_cache");
        assert!(e.to_string().contains("pod cache"), "{e}");
    }
}
