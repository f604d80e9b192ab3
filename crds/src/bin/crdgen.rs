//! `crdgen`: writes the ModelService CRD to `deploy/crds/modelservice.yaml` (or to stdout with `-`).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = infermesh_crds::crd::modelservice_crd_yaml()?;
    match std::env::args().nth(1).as_deref() {
        Some("-") => print!("{yaml}"),
        Some(other) => std::fs::write(other, yaml)?,
        None => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(infermesh_crds::crd::CRD_PATH);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
