//! Errors as the user sees them: a message with its causes, and an exit code.
//!
//! Exit codes are part of the interface (scripts test `ctl has`): 0 success; 1 an operational
//! failure, or `ctl has` answering no; 2 the user's input is wrong (usage, a name, a secret, the
//! config file); 3 `ctl status` found no daemon running.

use std::fmt;

pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_NOT_RUNNING: i32 = 3;

/// Something the user asked for that cannot be done as asked: exit code 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

pub fn user_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(message.into()))
}

/// The exit code for an error: 2 when any cause is the user's doing, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let bad_input = err.chain().any(|cause| {
        cause.is::<UserError>()
            || cause
                .downcast_ref::<shoal_config::ConfigError>()
                .is_some_and(shoal_config::ConfigError::is_bad_input)
    });
    if bad_input {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILURE
    }
}

/// Prints `err` with its chain of causes, one per line, as `shoal: error: …`.
pub fn report(program: &str, err: &anyhow::Error) {
    let mut text = format!("{program}: error: {err}");
    for cause in err.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{text}");
}
