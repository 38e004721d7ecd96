//! Reading schedule files for `reeve apply` and `[server] schedules`: each
//! path is a `.toml` / `.json` file or a directory of them (sorted by name).
//! Parsing and validation are `reeve_schedule::load_all`'s.

use std::path::{Path, PathBuf};

/// The files behind `paths`, as (path, text), in a stable order.
pub fn read(paths: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    let mut files = Vec::new();
    for path in paths {
        let entries: Vec<PathBuf> = if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_schedule_file(p))
                .collect();
            found.sort();
            found
        } else {
            vec![path.clone()]
        };
        for file in entries {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            files.push((file.display().to_string(), text));
        }
    }
    Ok(files)
}

fn is_schedule_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|x| x.to_str()),
        Some("toml" | "json")
    )
}
