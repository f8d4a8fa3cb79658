//! Pieces of the error messages, and the bound on a status message's length.

/// Longest status message sent: messages quote the values they refuse, and a message of a
/// megabyte would not fit the headers a client accepts (it would see a transport error
/// instead of the status).
pub(super) const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] on a character boundary, saying how long
/// it was.
pub(crate) fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let note = format!("... (message cut: {} bytes in all)", message.len());
    let mut end = MAX_MESSAGE_BYTES - note.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &message[..end])
}

/// Why a retry left a stop's cancelled items out, when it did.
pub(super) fn canceled_note(canceled: usize) -> String {
    match canceled {
        0 => String::new(),
        1 => {
            "; its 1 item cancelled by the stop is not retried (start the job to back it up)".into()
        }
        n => format!(
            "; its {n} items cancelled by the stop are not retried (start the job to back them up)"
        ),
    }
}

pub(super) fn in_job(job: &str) -> String {
    if job.is_empty() { String::new() } else { format!(" in job {job:?}") }
}

/// A failed merge's problem as the end of a sentence, if there is one.
pub(super) fn merge_problem(problem: &str) -> String {
    if problem.is_empty() {
        String::new()
    } else {
        format!(" (its last attempt failed: {problem})")
    }
}

/// What an agent answered, without tonic's `code: '...', message: "..."` wrapping.
pub(super) fn agent_text(status: &tonic::Status) -> String {
    match status.message() {
        "" => status.code().description().to_string(),
        message => message.to_string(),
    }
}
