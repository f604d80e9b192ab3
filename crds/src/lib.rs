//! The infermesh API: the `ModelService` custom resource (`infermesh.io/v1alpha1`) and the names
//! every component agrees on. Pure types, no I/O.

pub mod crd;
pub mod duration;
pub mod mesh;
pub mod model_service;

pub use model_service::{ModelService, ModelServiceSpec, ModelServiceStatus};

/// API group of every infermesh resource.
pub const GROUP: &str = "infermesh.io";
/// API version served today.
pub const VERSION: &str = "v1alpha1";

/// Annotation on a namespace (`enabled`) or pod (`enabled` / `disabled`) that drives injection.
pub const INJECT_ANNOTATION: &str = "infermesh.io/inject";

/// Name of the sidecar container the webhook injects; a pod that has it is "meshed".
pub const SIDECAR_CONTAINER: &str = "infermesh-sidecar";

/// Label the webhook puts on every pod it injects (value [`SIDECAR_INJECTED`]); the Service
/// fronting a ModelService selects it too, so kube-proxy sends only to pods whose sidecar listens
/// on the Service's target port.
pub const SIDECAR_LABEL: &str = "infermesh.io/sidecar";
/// Value of [`SIDECAR_LABEL`].
pub const SIDECAR_INJECTED: &str = "injected";

/// Response header of the sidecar's `/ready` naming the mesh config revision it enforces.
pub const REVISION_HEADER: &str = "x-infermesh-revision";

/// Label users put on every pod of a ModelService (value: the ModelService's name); the Service
/// that fronts the ModelService selects pods by it.
pub const MODELSERVICE_LABEL: &str = "infermesh.io/modelservice";

/// Sidecar ports, fixed across the mesh.
pub mod ports {
    /// Requests for a ModelService arrive here.
    pub const INBOUND: u16 = 15006;
    /// The model container reaches other ModelServices through this port.
    pub const OUTBOUND: u16 = 15001;
    /// `/ready`, `/live`, `/metrics`, `/config`.
    pub const ADMIN: u16 = 15020;
}

/// `group/version` as Kubernetes writes it in `apiVersion`.
pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_joins_group_and_version() {
        assert_eq!(api_version(), "infermesh.io/v1alpha1");
    }

    #[test]
    fn sidecar_ports_are_distinct() {
        let p = [ports::INBOUND, ports::OUTBOUND, ports::ADMIN];
        assert!(p.iter().all(|a| p.iter().filter(|b| *b == a).count() == 1));
    }
}
