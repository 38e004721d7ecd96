//! Placement by labels (SPEC §6): workers advertise `key=value` labels, a
//! job may require some, and only a claimer whose labels include all of
//! them takes it.
//!
//! This module owns the label syntax ([`label`]), the canonical form of a
//! job's requirements ([`requirements`]: validated, sorted, without
//! duplicates, so equal requirements are stored and compared as equal
//! text), the subset rule ([`satisfies`]) and how a waiting pinned job
//! names what it waits for ([`waiting_for`]).
//!
//! **Invariants.** A claimer with no labels satisfies only the empty
//! requirement; the empty requirement is satisfied by every claimer. The
//! backends apply the same rule in SQL (an empty requirement is stored as
//! NULL), and their claims are checked against [`satisfies`] by the
//! conformance suite.

use crate::validate::InputError;

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most labels one job may require.
pub const MAX_REQUIRES: usize = 32;

/// One label, `key=value`: a non-empty key and value, at most
/// [`MAX_LABEL_BYTES`] bytes, without whitespace or control characters.
/// The same rule holds for a worker's `labels` and a job's `requires`.
pub fn label(field: &str, value: &str) -> Result<(), InputError> {
    let shape = "must be key=value (e.g. device=alice-mac)";
    let Some((key, val)) = value.split_once('=') else {
        return Err(InputError::new(field, shape));
    };
    if key.is_empty() || val.is_empty() {
        return Err(InputError::new(field, shape));
    }
    if value.len() > MAX_LABEL_BYTES {
        return Err(InputError::new(
            field,
            format!("must be at most {MAX_LABEL_BYTES} bytes"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(InputError::new(
            field,
            format!("must not contain whitespace or control characters (found {bad:?})"),
        ));
    }
    Ok(())
}

/// Validates a job's requirements (each named `{field}[i]`) and returns
/// them in canonical form: sorted, duplicates removed.
pub fn requirements(field: &str, requires: &[String]) -> Result<Vec<String>, InputError> {
    if requires.len() > MAX_REQUIRES {
        return Err(InputError::new(
            field,
            format!("must name at most {MAX_REQUIRES} labels"),
        ));
    }
    for (i, l) in requires.iter().enumerate() {
        label(&format!("{field}[{i}]"), l)?;
    }
    let mut canonical = requires.to_vec();
    canonical.sort();
    canonical.dedup();
    Ok(canonical)
}

/// Whether a claimer with `labels` may take a job that `requires` these:
/// every requirement is among the labels.
pub fn satisfies(labels: &[String], requires: &[String]) -> bool {
    requires.iter().all(|r| labels.contains(r))
}

/// What a pinned job that no live worker can take waits for:
/// `a worker with device=alice-mac` (requirements joined by `, `).
pub fn waiting_for(requires: &[String]) -> String {
    format!("a worker with {}", requires.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels_are_key_value_without_spaces() {
        assert!(label("l", "device=alice-mac").is_ok());
        assert!(label("l", "url=a=b").is_ok(), "the value may hold '='");
        for bad in ["device", "=x", "x=", "", "a b=c", "a=b\n", "a=\u{7}"] {
            assert_eq!(
                label("labels[2]", bad).unwrap_err().field,
                "labels[2]",
                "{bad:?}"
            );
        }
        let long = format!("k={}", "v".repeat(MAX_LABEL_BYTES));
        assert!(label("l", &long).unwrap_err().message.contains("256"));
    }

    #[test]
    fn requirements_are_canonical_and_errors_name_the_index() {
        assert_eq!(
            requirements("requires", &strings(&["gpu=1", "device=a", "gpu=1"])).unwrap(),
            strings(&["device=a", "gpu=1"])
        );
        assert_eq!(
            requirements("requires", &strings(&["device=a", "nope"]))
                .unwrap_err()
                .field,
            "requires[1]"
        );
        assert_eq!(
            requirements("jobs[3].requires", &strings(&["x"]))
                .unwrap_err()
                .field,
            "jobs[3].requires[0]"
        );
        let many: Vec<String> = (0..=MAX_REQUIRES).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            requirements("requires", &many).unwrap_err().field,
            "requires"
        );
        assert!(requirements("requires", &[]).unwrap().is_empty());
    }

    #[test]
    fn requirements_are_a_subset_of_the_labels() {
        let both = strings(&["device=a", "gpu=1"]);
        assert!(!satisfies(&strings(&["device=a"]), &both));
        assert!(satisfies(&strings(&["os=mac", "gpu=1", "device=a"]), &both));
        assert!(!satisfies(&[], &both), "no labels: no pinned jobs");
        assert!(satisfies(&[], &[]), "no requirements: any claimer");
        assert!(satisfies(&strings(&["device=a"]), &[]));
    }

    #[test]
    fn waiting_names_every_requirement() {
        assert_eq!(
            waiting_for(&strings(&["device=alice-mac"])),
            "a worker with device=alice-mac"
        );
        assert_eq!(
            waiting_for(&strings(&["device=a", "gpu=1"])),
            "a worker with device=a, gpu=1"
        );
    }
}
