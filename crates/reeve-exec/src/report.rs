//! [`Report`]s: what a run tells reeve while it goes, as JSON lines on fd 3.

use reeve_core::FailureReason;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc::UnboundedSender;

/// Lines on the report channel longer than this (without the newline) are
/// discarded whole.
pub const MAX_REPORT_LINE: usize = 1024 * 1024;

/// What a run reports while it goes, through JSON lines written to the file
/// descriptor named by env `REEVE_REPORT_FD` (fd 3 in the child).
///
/// One JSON object per line, e.g.
///
/// ```text
/// {"turns": 5}
/// {"progress": "cloned the repo"}
/// {"checkpoint": "step=3"}
/// {"result": {"pr": 42}}
/// {"failure_reason": "rate_limited", "error": "429 from upstream"}
/// ```
///
/// A line may carry several keys; see [`parse_report_line`] for the order.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// `{"turns": N}`: the absolute number of turns taken so far.
    Turns(i64),
    /// `{"progress": "text"}`: a human-readable progress note.
    Progress(String),
    /// `{"result": <any JSON>}`: the run's result.
    Result(Value),
    /// `{"failure_reason": "rate_limited", "error": "..."}`: the run names why
    /// it is failing. `error` alone (no `failure_reason`) is classified with
    /// [`FailureReason::classify`].
    Failure {
        reason: FailureReason,
        error: Option<String>,
    },
    /// `{"checkpoint": "<utf-8 text>"}`: opaque state to resume from.
    Checkpoint(Vec<u8>),
}

/// Parses one report line into the reports it carries, in the order turns,
/// progress, checkpoint, result, failure.
///
/// Unknown keys are ignored (for forward compatibility); a line that is not a
/// JSON object, or whose known keys have the wrong type (e.g. `"turns": "x"`,
/// an unknown `failure_reason`), is rejected whole with a message saying why.
/// A blank line carries nothing.
pub fn parse_report_line(line: &[u8]) -> Result<Vec<Report>, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".to_owned());
    };
    let mut out = Vec::new();
    if let Some(v) = obj.get("turns") {
        let n = v
            .as_i64()
            .ok_or_else(|| format!("\"turns\" must be an integer, got {v}"))?;
        out.push(Report::Turns(n));
    }
    if let Some(v) = obj.get("progress") {
        out.push(Report::Progress(string_field("progress", v)?));
    }
    if let Some(v) = obj.get("checkpoint") {
        out.push(Report::Checkpoint(
            string_field("checkpoint", v)?.into_bytes(),
        ));
    }
    if let Some(v) = obj.get("result") {
        out.push(Report::Result(v.clone()));
    }
    let error = match obj.get("error") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_field("error", v)?),
    };
    match obj.get("failure_reason") {
        None | Some(Value::Null) => {
            if let Some(error) = error {
                out.push(Report::Failure {
                    reason: FailureReason::classify(&error),
                    error: Some(error),
                });
            }
        }
        Some(v) => {
            let name = string_field("failure_reason", v)?;
            let reason = name.parse::<FailureReason>()?;
            out.push(Report::Failure { reason, error });
        }
    }
    Ok(out)
}

fn string_field(key: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{key:?} must be a string, got {v}"))
}

fn handle_line(line: &[u8], reports: &UnboundedSender<Report>) {
    match parse_report_line(line) {
        Ok(parsed) => {
            for r in parsed {
                // The receiver going away only means nobody listens any more;
                // keep draining so the child never blocks on a full pipe.
                let _ = reports.send(r);
            }
        }
        Err(why) => {
            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
            tracing::warn!(line = %shown, "ignoring malformed report line: {why}");
        }
    }
}

/// Reads report lines from `reader` until EOF, sending each parsed report.
/// Malformed lines are logged and skipped; lines over [`MAX_REPORT_LINE`]
/// bytes are discarded.
pub(crate) async fn read_reports<R: AsyncRead + Unpin>(
    mut reader: R,
    reports: UnboundedSender<Report>,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    // Set while skipping the rest of an over-long line.
    let mut discarding = false;
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading the report pipe failed: {e}");
                break;
            }
        };
        let mut rest = &chunk[..n];
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if !discarding {
                line.extend_from_slice(&rest[..pos]);
                if line.len() <= MAX_REPORT_LINE {
                    handle_line(&line, &reports);
                } else {
                    warn_too_long();
                }
            }
            line.clear();
            discarding = false;
            rest = &rest[pos + 1..];
        }
        if !discarding {
            line.extend_from_slice(rest);
            if line.len() > MAX_REPORT_LINE {
                warn_too_long();
                line = Vec::new();
                discarding = true;
            }
        }
    }
    if !discarding && !line.is_empty() {
        // A last line without its newline still counts.
        handle_line(&line, &reports);
    }
}

fn warn_too_long() {
    tracing::warn!("discarding a report line longer than {MAX_REPORT_LINE} bytes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_keys() {
        assert_eq!(
            parse_report_line(br#"{"turns": 5}"#).unwrap(),
            [Report::Turns(5)]
        );
        assert_eq!(
            parse_report_line(br#"{"progress": "cloned the repo"}"#).unwrap(),
            [Report::Progress("cloned the repo".into())]
        );
        assert_eq!(
            parse_report_line(br#"{"checkpoint": "step=3"}"#).unwrap(),
            [Report::Checkpoint(b"step=3".to_vec())]
        );
        assert_eq!(
            parse_report_line(br#"{"result": {"ok": true}}"#).unwrap(),
            [Report::Result(json!({"ok": true}))]
        );
        assert_eq!(
            parse_report_line(br#"{"failure_reason":"rate_limited","error":"slow down"}"#).unwrap(),
            [Report::Failure {
                reason: FailureReason::RateLimited,
                error: Some("slow down".into())
            }]
        );
        assert_eq!(
            parse_report_line(br#"{"failure_reason":"auth_failed"}"#).unwrap(),
            [Report::Failure {
                reason: FailureReason::AuthFailed,
                error: None
            }]
        );
    }

    #[test]
    fn error_alone_is_classified() {
        assert_eq!(
            parse_report_line(br#"{"error":"HTTP 429 Too Many Requests"}"#).unwrap(),
            [Report::Failure {
                reason: FailureReason::RateLimited,
                error: Some("HTTP 429 Too Many Requests".into())
            }]
        );
    }

    #[test]
    fn several_keys_in_fixed_order() {
        let line = br#"{"failure_reason":"error","result":1,"checkpoint":"c","progress":"p","turns":2,"extra":0}"#;
        assert_eq!(
            parse_report_line(line).unwrap(),
            [
                Report::Turns(2),
                Report::Progress("p".into()),
                Report::Checkpoint(b"c".to_vec()),
                Report::Result(json!(1)),
                Report::Failure {
                    reason: FailureReason::Error,
                    error: None
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"42",
            br#"{"turns":"five"}"#,
            br#"{"turns":1.5}"#,
            br#"{"progress":3}"#,
            br#"{"failure_reason":"exploded"}"#,
            b"\xff\xfe",
        ] {
            assert!(parse_report_line(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_report_line(b"  ").unwrap(), []);
        assert_eq!(parse_report_line(br#"{"other":1}"#).unwrap(), []);
    }

    #[tokio::test]
    async fn reader_splits_lines_and_drops_long_ones() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"turns\":1}\n");
        input.extend(std::iter::repeat_n(b'a', MAX_REPORT_LINE + 10));
        input.extend_from_slice(b"\ngarbage\n\n{\"turns\":2}\n{\"progress\":\"no newline\"}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        read_reports(&input[..], tx).await;
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            got.push(r);
        }
        assert_eq!(
            got,
            [
                Report::Turns(1),
                Report::Turns(2),
                Report::Progress("no newline".into())
            ]
        );
    }
}
