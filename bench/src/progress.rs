//! Progress on stderr, one line per step of the run, apart from the table on stdout.

pub fn step(what: &str) {
    eprintln!("\x1b[1m[bench]\x1b[0m {what}");
}
